"""v1: the MoE forward pass orchestrated over separate Triton models (BLS).

This file is the Triton adapter: it reads the config, decodes the requests, hands the
orchestration (bls/orchestrator.py, plain Python) a `call` that runs a Triton model, and
encodes the answers. Where the activations live is this instance's device: on a GPU they stay
there from the first piece to the classifier and pass between this process and the server as
CUDA memory (DLPack). Experts are local Triton models, or live on other Triton servers
(MOE_REMOTE_EXPERTS, bls/remote_experts.py).
"""

import json
import os
import time

import torch
import triton_python_backend_utils as pb_utils
from bls.counters import Counters
from bls.orchestrator import CALLS, ORCHESTRATION, STAGES, Orchestrator, StepFailed
from bls.remote_experts import RemoteExperts
from triton_io import error_responses, model_parameters, to_torch, to_triton


def wants_expert_tokens(request) -> bool:
    """EXPERT_TOKENS is computed only for requests with the parameter expert_tokens=true.

    An ensemble asks its steps for every output it maps, whatever the client requested, so
    the client's wish reaches this model as a request parameter (which ensembles forward).
    """
    value = json.loads(request.parameters() or "{}").get("expert_tokens", False)
    return value is True or str(value).lower() in ("true", "1")


class TritonPythonModel:
    def initialize(self, args):
        p = model_parameters(args)
        n_layers, n_experts = int(p["n_layers"]), int(p["n_experts"])
        experts = p["expert_models"].split(",")
        self.pad_id = int(p.get("pad_id", "0"))
        torch.set_num_threads(int(p.get("INTRA_OP_THREAD_COUNT", "1")))
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device("cuda", int(args["model_instance_device_id"]))
            torch.cuda.set_device(self.device)
            memory = (pb_utils.TRITONSERVER_MEMORY_GPU, self.device.index)
        else:
            self.device = torch.device("cpu")
            memory = (pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        # Every piece answers into this instance's memory: Triton moves an expert's output from
        # another GPU (or to the host) itself, finished before the answer arrives.
        self.preferred_memory = pb_utils.PreferredMemory(*memory)
        endpoints = [u for u in os.environ.get("MOE_REMOTE_EXPERTS", "").split(",") if u]
        self.remote = None
        if endpoints:
            self.remote = RemoteExperts(endpoints, experts, float(p.get("remote_timeout_s", "30")))
        self.orchestrator = Orchestrator(
            self.call,
            n_layers,
            n_experts,
            experts,
            groups=int(p.get("groups", "1")),
            device=self.device,
            # Decided by `moe export`; the experts ensemble runs local experts only.
            expert_calls=CALLS if self.remote else p.get("expert_calls", CALLS),
            call_now=self.call_now,
        )
        self.counters = Counters(pb_utils.MetricFamily, n_layers, n_experts)

    async def call(self, model: str, inputs: list, outputs: list) -> list:
        """Run `model` on (name, tensor) inputs; its outputs as tensors on this instance's device."""
        if self.remote is not None and model in self.remote.where:
            return [self.here(t) for t in await self.remote.call(model, [t for _, t in inputs])]
        try:
            response = await self.request(model, inputs, outputs).async_exec()
        except Exception as e:  # noqa: BLE001 - e.g. the model's stub died mid-request
            raise StepFailed(f"{model}: {e}") from None
        return self.outputs(model, response, outputs)

    def call_now(self, model: str, inputs: list, outputs: list) -> list:
        """`call` to a local model, made synchronously."""
        try:
            response = self.request(model, inputs, outputs).exec()
        except Exception as e:  # noqa: BLE001 - e.g. the model's stub died mid-request
            raise StepFailed(f"{model}: {e}") from None
        return self.outputs(model, response, outputs)

    def request(self, model: str, inputs: list, outputs: list):
        return pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=outputs,
            inputs=[to_triton(name, tensor) for name, tensor in inputs],
            preferred_memory=self.preferred_memory,
        )

    def outputs(self, model: str, response, names: list) -> list:
        if response.has_error():
            raise StepFailed(f"{model}: {response.error().message()}")
        return [self.here(to_torch(pb_utils.get_output_tensor_by_name(response, name))) for name in names]

    def here(self, tensor):
        """`tensor` on this instance's device (a remote expert's answer, or a piece's where
        Triton did not honour the preferred memory). A copy between GPUs runs asynchronously and
        the source's memory goes back to Triton's pool once `tensor` is dropped, so the copy is
        waited for first."""
        if tensor.device == self.device:
            return tensor
        moved = tensor.to(self.device)
        if tensor.is_cuda and moved.is_cuda:
            torch.cuda.current_stream(moved.device).synchronize()
            torch.cuda.current_stream(tensor.device).synchronize()
        return moved

    async def execute(self, requests):
        started = time.perf_counter()
        # Requests that the dynamic batcher grouped run as one batch, padded to one length
        # (padding changes no result).
        ids_list, mask_list, sizes = [], [], []
        for request in requests:
            ids_list.append(to_torch(pb_utils.get_input_tensor_by_name(request, "INPUT_IDS")))
            mask_list.append(to_torch(pb_utils.get_input_tensor_by_name(request, "ATTENTION_MASK")).to(torch.bool))
            sizes.append(ids_list[-1].shape[0])
        T = max(i.shape[1] for i in ids_list)
        ids = torch.cat([torch.nn.functional.pad(i, (0, T - i.shape[1]), value=self.pad_id) for i in ids_list])
        mask = torch.cat([torch.nn.functional.pad(m, (0, T - m.shape[1]), value=False) for m in mask_list])
        wants_counts = [wants_expert_tokens(r) for r in requests]
        times, tokens = dict.fromkeys(STAGES, 0.0), []
        try:
            logits, counts = await self.orchestrator.forward(ids, mask, any(wants_counts), times, tokens)
        except StepFailed as e:
            return error_responses(len(requests), f"moe_bls: {e}", pb_utils.TritonError.UNAVAILABLE)
        except Exception as e:  # noqa: BLE001 - every request gets an answer, never a dropped batch
            return error_responses(len(requests), f"moe_bls: {type(e).__name__}: {e}")
        responses, start = [], 0
        for n, wants in zip(sizes, wants_counts):
            outputs = [to_triton("LOGITS", logits[start : start + n])]
            if wants:
                outputs.append(to_triton("EXPERT_TOKENS", counts[start : start + n]))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start += n
        times[ORCHESTRATION] = (time.perf_counter() - started) - sum(times.values())
        self.counters.record(tokens, times)
        return responses

    def finalize(self):
        self.counters.close()
