"""v1: the MoE forward pass orchestrated over separate Triton models (BLS).

    embedding -> for each layer: attention -> gating -> the busy experts, concurrently,
    each with only its own tokens -> weighted combine -> ... -> classifier

Grouping tokens by expert and adding the weighted outputs back use moe_routing.py, a copy of
the package's moe/routing.py made by `moe export`: the same code the eager model runs.

Experts are local Triton models, or live on other Triton servers: `moe serve --experts-at
HOST:PORT,...` sets MOE_REMOTE_EXPERTS, and each listed server's expert_N models are then called
over gRPC.
"""
import asyncio
import json
import os
import time

import torch
import triton_python_backend_utils as pb_utils

import moe_routing as routing
from triton_io import error_responses, model_parameters, to_torch, to_triton

STAGES = ("embedding", "attention", "gating", "experts", "classifier", "orchestration")


class StepFailed(Exception):
    pass


def wants_expert_tokens(request) -> bool:
    """EXPERT_TOKENS is computed only for requests with the parameter expert_tokens=true.

    An ensemble asks its steps for every output it maps, whatever the client requested, so
    the client's wish reaches this model as a request parameter (which ensembles forward).
    """
    value = json.loads(request.parameters() or "{}").get("expert_tokens", False)
    return value is True or str(value).lower() in ("true", "1")


class RemoteExperts:
    """expert_N models on other Triton servers, reached with tritonclient's asyncio gRPC client."""

    def __init__(self, endpoints, expert_names, timeout_s):
        import tritonclient.grpc as grpc_sync
        self.timeout_s = timeout_s
        self.where = {}
        for url in endpoints:
            client = grpc_sync.InferenceServerClient(url)
            try:
                for name in expert_names:
                    if name not in self.where and client.is_model_ready(name):
                        self.where[name] = url
            except Exception as e:  # noqa: BLE001 - any failure means the server is unusable
                raise pb_utils.TritonModelException(f"expert server {url} is unreachable: {e}")
            finally:
                client.close()
        missing = [n for n in expert_names if n not in self.where]
        if missing:
            raise pb_utils.TritonModelException(
                f"{', '.join(missing)} not served by any of {', '.join(endpoints)}")
        self.clients = {}

    def client(self, url):
        if url not in self.clients:
            import tritonclient.grpc.aio as grpc_aio
            self.clients[url] = grpc_aio.InferenceServerClient(url)
        return self.clients[url]

    async def call(self, name, inputs):
        import tritonclient.grpc as grpc_sync
        from tritonclient.utils import np_to_triton_dtype
        url = self.where[name]
        tensors = []
        for i, t in enumerate(inputs):
            array = t.contiguous().numpy()
            tensors.append(grpc_sync.InferInput(f"INPUT__{i}", list(array.shape), np_to_triton_dtype(array.dtype)))
            tensors[-1].set_data_from_numpy(array)
        try:
            result = await self.client(url).infer(
                name, tensors, outputs=[grpc_sync.InferRequestedOutput("OUTPUT__0")],
                client_timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001
            # A fresh channel next time: gRPC's reconnect back-off would delay recovery.
            client = self.clients.pop(url, None)
            if client is not None:
                await client.close()
            raise StepFailed(f"{name} at {url}: {str(e).splitlines()[0]}") from None
        return [torch.from_numpy(result.as_numpy("OUTPUT__0").copy())]


class TritonPythonModel:
    def initialize(self, args):
        p = model_parameters(args)
        self.n_layers = int(p["n_layers"])
        self.n_experts = int(p["n_experts"])
        self.experts = p["expert_models"].split(",")
        assert len(self.experts) == self.n_experts, "one expert model per expert"
        self.pad_id = int(p.get("pad_id", "0"))
        torch.set_num_threads(int(p.get("INTRA_OP_THREAD_COUNT", "1")))
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device("cuda", int(args["model_instance_device_id"]))
        else:
            self.device = torch.device("cpu")
        self.layer_tensors = [torch.tensor([l], dtype=torch.int64) for l in range(self.n_layers)]
        endpoints = [u for u in os.environ.get("MOE_REMOTE_EXPERTS", "").split(",") if u]
        self.remote = RemoteExperts(endpoints, self.experts, float(p.get("remote_timeout_s", "30"))) if endpoints else None
        self._init_metrics()

    def _init_metrics(self):
        tokens = pb_utils.MetricFamily(
            name="moe_expert_tokens_total", kind=pb_utils.MetricFamily.COUNTER,
            description="Tokens routed to each expert of each layer by moe_bls (v1)")
        self.token_metrics = [[tokens.Metric(labels={"layer": str(l), "expert": str(e)})
                               for e in range(self.n_experts)] for l in range(self.n_layers)]
        stage = pb_utils.MetricFamily(
            name="moe_bls_stage_duration_us", kind=pb_utils.MetricFamily.COUNTER,
            description="Cumulative wall time of moe_bls (v1) batches per stage, microseconds")
        self.stage_metrics = {s: stage.Metric(labels={"stage": s}) for s in STAGES}
        batches = pb_utils.MetricFamily(
            name="moe_bls_batches_total", kind=pb_utils.MetricFamily.COUNTER,
            description="Batches run by moe_bls (v1)")
        self.batch_metric = batches.Metric(labels={})
        self._metric_refs = (tokens, stage, batches)   # families must outlive their metrics

    async def call(self, model: str, inputs, outputs):
        request = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=outputs,
            inputs=[to_triton(f"INPUT__{i}", t) for i, t in enumerate(inputs)])
        try:
            response = await request.async_exec()
        except Exception as e:  # noqa: BLE001 - e.g. the model's stub died mid-request
            raise StepFailed(f"{model}: {e}") from None
        if response.has_error():
            raise StepFailed(f"{model}: {response.error().message()}")
        # Pieces on other devices (experts spread over GPUs) answer there: orchestration runs
        # where this instance lives.
        return [to_torch(pb_utils.get_output_tensor_by_name(response, name)).to(self.device)
                for name in outputs]

    async def call_expert(self, e: int, inputs):
        if self.remote is not None:
            return await self.remote.call(self.experts[e], inputs)
        return await self.call(self.experts[e], inputs, ["OUTPUT__0"])

    async def timed(self, stage: str, times: dict, awaitable):
        start = time.perf_counter()
        try:
            return await awaitable
        finally:
            times[stage] += time.perf_counter() - start

    async def run_experts(self, busy, chunks, layer):
        results = await asyncio.gather(*[self.call_expert(e, [chunks[e], layer]) for e in busy],
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise StepFailed("; ".join(str(f) for f in failed))
        return results

    async def forward(self, ids: torch.Tensor, mask: torch.Tensor, count_tokens: bool, times: dict):
        """logits [B, C] and, if asked, tokens per text, layer and expert [B, L, E]."""
        B, T = ids.shape
        real = routing.real_token_index(mask)
        counts = torch.zeros(B, self.n_layers, self.n_experts, dtype=torch.int64) if count_tokens else None
        (x,) = await self.timed("embedding", times, self.call("embedding", [ids], ["OUTPUT__0"]))
        for l in range(self.n_layers):
            layer = self.layer_tensors[l]
            x, h = await self.timed("attention", times, self.call(
                "attention", [x, mask, layer], ["OUTPUT__0", "OUTPUT__1"]))
            h_real = h.reshape(-1, h.shape[-1]).index_select(0, real)
            expert_ids, weights = await self.timed("gating", times, self.call(
                "gating", [h_real, layer], ["OUTPUT__0", "OUTPUT__1"]))
            token_index, slot_order, per_expert = routing.dispatch_plan(expert_ids, self.n_experts)
            chunks = h_real.index_select(0, token_index).split(per_expert)
            busy = [e for e in range(self.n_experts) if per_expert[e] > 0]
            results = await self.timed("experts", times, self.run_experts(busy, chunks, layer))
            outputs = list(chunks)             # idle experts contribute their empty chunk
            for e, (out,) in zip(busy, results):
                outputs[e] = out
            update = routing.combine(torch.cat(outputs), weights, slot_order)
            x = routing.add_to_real_tokens(x, real, update)
            for e in busy:
                self.token_metrics[l][e].increment(per_expert[e])
            if counts is not None:
                text_of_token = torch.div(real, T, rounding_mode="floor")
                flat = (text_of_token.unsqueeze(1) * self.n_experts + expert_ids).reshape(-1)
                counts[:, l, :] = torch.bincount(flat, minlength=B * self.n_experts).view(B, self.n_experts)
        (logits,) = await self.timed("classifier", times, self.call("classifier", [x, mask], ["OUTPUT__0"]))
        return logits, counts

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
        times = dict.fromkeys(STAGES, 0.0)
        try:
            logits, counts = await self.forward(ids, mask, any(wants_counts), times)
        except StepFailed as e:
            return error_responses(len(requests), f"moe_bls: {e}", pb_utils.TritonError.UNAVAILABLE)
        except Exception as e:  # noqa: BLE001 - every request gets an answer, never a dropped batch
            return error_responses(len(requests), f"moe_bls: {type(e).__name__}: {e}")
        responses, start = [], 0
        for n, wants in zip(sizes, wants_counts):
            outputs = [to_triton("LOGITS", logits[start:start + n])]
            if wants:
                outputs.append(to_triton("EXPERT_TOKENS", counts[start:start + n]))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start += n
        times["orchestration"] = (time.perf_counter() - started) - sum(times.values())
        for stage, seconds in times.items():
            self.stage_metrics[stage].increment(seconds * 1e6)
        self.batch_metric.increment(1)
        return responses

    def finalize(self):
        self.token_metrics = self.stage_metrics = self.batch_metric = None
