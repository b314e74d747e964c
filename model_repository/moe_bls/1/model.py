"""v1: the MoE forward pass orchestrated over separate Triton models (BLS).

    layer 0:  embedding_attention_gating   (embedding -> attention -> gating, one ensemble)
    layer l:  attention_gating             (attention -> gating, one ensemble)
              then the experts, concurrently, each with only its own tokens
              (through the experts ensemble), and the weighted combine
    then:     classifier

The pieces that follow each other without Python in between run as ensembles inside the server,
so each layer costs this model two round trips: one for attention and routing, one for the
`experts` ensemble, which runs every expert concurrently inside the server, an idle one on its
empty chunk (`moe export --expert-fanout`, the default). On a GPU a layer with an idle expert,
and remote experts always, call each busy expert with a request of its own, all in flight at
once, and idle experts are not called.
Grouping tokens by expert and adding the weighted outputs back use moe_routing.py, a copy of the
package's moe/routing.py made by `moe export`: the same code the eager model runs.

A batch runs as `groups` groups of texts sorted by length, each trimmed to its own longest
text and sent through the attention pieces concurrently (`moe export --v1-groups`; 2 on the
CPU, where each group gets an instance and a core, 1 on a GPU); every layer's experts still see
the tokens of the whole batch, one call each.

Where the activations live is this instance's device: on a GPU (`moe export --device cuda`) they
stay there from the first piece to the classifier, pass between this process and the server as
CUDA memory (DLPack), and the routing math runs there too; the host waits only for each layer's
per-expert token counts and, once, for the logits. On the CPU the same code runs on the CPU.

Experts are local Triton models, or live on other Triton servers: `moe serve --experts-at
HOST:PORT,...` sets MOE_REMOTE_EXPERTS, and each listed server's expert_N models are then called
over gRPC.
"""

import asyncio
import json
import os
import threading
import time

import moe_routing as routing
import torch
import triton_python_backend_utils as pb_utils
from triton_io import error_responses, model_parameters, to_torch, to_triton

# BLS stages as the Prometheus counter labels them; a stage calls the models its name joins.
FIRST_LAYER, LAYER, EXPERTS, CLASSIFIER, ORCHESTRATION = (
    "embedding+attention+gating",
    "attention+gating",
    "experts",
    "classifier",
    "orchestration",
)
STAGES = (FIRST_LAYER, LAYER, EXPERTS, CLASSIFIER, ORCHESTRATION)
FRONT_OUTPUTS = ["X_OUT", "H", "EXPERT_IDS", "EXPERT_WEIGHTS"]


class StepFailed(Exception):
    pass


class Group:
    """Some rows of the batch, trimmed to their longest text: `rows` [n] (where they sit in the
    batch), ids and mask [n, T'] on the CPU, `real` the flat positions of their real tokens on
    the instance's device (and `cpu_real` on the CPU)."""

    def __init__(self, rows, ids, mask, device):
        self.T = max(1, int(mask.sum(1).max()))
        self.rows = rows
        self.ids, self.mask = ids[rows, : self.T], mask[rows, : self.T]
        self.cpu_real = routing.real_token_index(self.mask)
        self.real = self.cpu_real.to(device)

    def text_of_token(self, device):
        """The batch row of each real token (for the per-text expert counts)."""
        return self.rows.index_select(0, torch.div(self.cpu_real, self.T, rounding_mode="floor")).to(device)


def length_groups(ids, mask, groups: int, device) -> list:
    """The batch as at most `groups` Groups of texts sorted by length, cut where each holds about
    the same number of real tokens (a group's attention costs about its rows times its longest
    text). One group keeps the batch's order."""
    B = ids.shape[0]
    if groups <= 1 or B == 1:
        return [Group(torch.arange(B), ids, mask, device)]
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    tokens_before = lengths.index_select(0, order).cumsum(0)
    total = int(tokens_before[-1])
    cuts = sorted({int(torch.searchsorted(tokens_before, total * g // groups, right=True)) for g in range(1, groups)})
    return [Group(rows, ids, mask, device) for rows in order.tensor_split(cuts) if rows.numel()]


async def gather_all(awaitables) -> list:
    """Every result, once all have finished; a failure of any is the step's failure."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise StepFailed("; ".join(str(f) for f in failed))
    return results


def wants_expert_tokens(request) -> bool:
    """EXPERT_TOKENS is computed only for requests with the parameter expert_tokens=true.

    An ensemble asks its steps for every output it maps, whatever the client requested, so
    the client's wish reaches this model as a request parameter (which ensembles forward).
    """
    value = json.loads(request.parameters() or "{}").get("expert_tokens", False)
    return value is True or str(value).lower() in ("true", "1")


class Counters:
    """The Prometheus counters of this model, updated by a thread of their own: each increment
    is a round trip to the server process, and a batch touches up to layers x experts + 6
    counters, so they are summed here and sent after the responses, not before."""

    def __init__(self, n_layers: int, n_experts: int, interval_s: float = 0.05):
        tokens = pb_utils.MetricFamily(
            name="moe_expert_tokens_total",
            kind=pb_utils.MetricFamily.COUNTER,
            description="Tokens routed to each expert of each layer by moe_bls (v1)",
        )
        stage = pb_utils.MetricFamily(
            name="moe_bls_stage_duration_us",
            kind=pb_utils.MetricFamily.COUNTER,
            description="Cumulative wall time of moe_bls (v1) batches per stage, microseconds",
        )
        batches = pb_utils.MetricFamily(
            name="moe_bls_batches_total", kind=pb_utils.MetricFamily.COUNTER, description="Batches run by moe_bls (v1)"
        )
        self._families = (tokens, stage, batches)  # families must outlive their metrics
        self.tokens = [
            [tokens.Metric(labels={"layer": str(l), "expert": str(e)}) for e in range(n_experts)]
            for l in range(n_layers)
        ]
        self.stages = {s: stage.Metric(labels={"stage": s}) for s in STAGES}
        self.batches = batches.Metric(labels={})
        self._pending_tokens = [[0] * n_experts for _ in range(n_layers)]
        self._pending_us = dict.fromkeys(STAGES, 0.0)
        self._pending_batches = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, name="moe-bls-counters", daemon=True)
        self._thread.start()

    def record(self, tokens: list, seconds: dict) -> None:
        """tokens[l][e]: routed to expert e of layer l in one batch; seconds per stage."""
        with self._lock:
            for pending, layer in zip(self._pending_tokens, tokens):
                for e, n in enumerate(layer):
                    pending[e] += n
            for stage, s in seconds.items():
                self._pending_us[stage] += s * 1e6
            self._pending_batches += 1
        self._wake.set()

    def flush(self) -> None:
        with self._lock:
            tokens, self._pending_tokens = self._pending_tokens, [[0] * len(r) for r in self._pending_tokens]
            stage_us, self._pending_us = self._pending_us, dict.fromkeys(STAGES, 0.0)
            batches, self._pending_batches = self._pending_batches, 0
        for metrics, counts in zip(self.tokens, tokens):
            for metric, n in zip(metrics, counts):
                if n:
                    metric.increment(n)
        for stage, us in stage_us.items():
            if us:
                self.stages[stage].increment(us)
        if batches:
            self.batches.increment(batches)

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self._interval_s)  # let a burst of batches add up first
            self.flush()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()


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
                raise pb_utils.TritonModelException(f"expert server {url} is unreachable: {e}") from None
            finally:
                client.close()
        missing = [n for n in expert_names if n not in self.where]
        if missing:
            raise pb_utils.TritonModelException(f"{', '.join(missing)} not served by any of {', '.join(endpoints)}")
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
            array = t.contiguous().cpu().numpy()
            tensors.append(grpc_sync.InferInput(f"INPUT__{i}", list(array.shape), np_to_triton_dtype(array.dtype)))
            tensors[-1].set_data_from_numpy(array)
        try:
            result = await self.client(url).infer(
                name, tensors, outputs=[grpc_sync.InferRequestedOutput("OUTPUT__0")], client_timeout=self.timeout_s
            )
        except Exception as e:  # noqa: BLE001 - whatever broke, the step failed and says where
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
        self.groups = int(p.get("groups", "1"))
        self.ensemble_inputs = [f"H_{e}" for e in range(self.n_experts)]
        self.ensemble_outputs = [f"OUT_{e}" for e in range(self.n_experts)]
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
        self.layer_tensors = [torch.tensor([l], dtype=torch.int64) for l in range(self.n_layers)]
        endpoints = [u for u in os.environ.get("MOE_REMOTE_EXPERTS", "").split(",") if u]
        self.remote = (
            RemoteExperts(endpoints, self.experts, float(p.get("remote_timeout_s", "30"))) if endpoints else None
        )
        self.counters = Counters(self.n_layers, self.n_experts)
        # Remote experts are called one by one: the experts ensemble runs local ones.
        self.experts_ensemble = p.get("expert_fanout", "calls") == "ensemble" and self.remote is None
        # An idle expert's chunk is empty. On a GPU, an empty GPU tensor in the ensemble's answer
        # crashes tritonserver 2.51 (in its Python backend, receiving the answer; seen on an
        # H200, docs/gpu_serving.md), so there the ensemble serves only layers whose experts all
        # have tokens.
        self.empty_chunks_ok = self.device.type == "cpu"

    async def call(self, model: str, inputs: list, outputs: list) -> list:
        """Run `model` on (name, tensor) inputs; its outputs as tensors on this instance's device."""
        try:
            response = await self.request(model, inputs, outputs).async_exec()
        except Exception as e:  # noqa: BLE001 - e.g. the model's stub died mid-request
            raise StepFailed(f"{model}: {e}") from None
        return self.outputs(model, response, outputs)

    def call_now(self, model: str, inputs: list, outputs: list) -> list:
        """`call`, made synchronously."""
        try:
            response = self.request(model, inputs, outputs).exec()
        except Exception as e:  # noqa: BLE001 - e.g. the model's stub died mid-request
            raise StepFailed(f"{model}: {e}") from None
        return self.outputs(model, response, outputs)

    async def call_each(self, calls: list) -> list:
        """The outputs of every (model, inputs, outputs) call, all in flight at once. A lone call
        is made synchronously: this model is not decoupled, so nothing else runs on the instance
        meanwhile, and it skips the hand-offs to asyncio's executor thread and back (a round
        trip measured 0.2-0.25 ms shorter at concurrency 1, docs/benchmarks.md)."""
        if len(calls) == 1:
            return [self.call_now(*calls[0])]
        return await gather_all(self.call(*c) for c in calls)

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

    async def run_experts(self, chunks, layer) -> list:
        """Every expert's output for its chunk of tokens; an idle expert's is its empty chunk."""
        if self.experts_ensemble and (self.empty_chunks_ok or all(c.shape[0] > 0 for c in chunks)):
            inputs = [*zip(self.ensemble_inputs, chunks), ("LAYER", layer)]
            return self.call_now("experts", inputs, self.ensemble_outputs)
        outputs = list(chunks)
        busy = [e for e, chunk in enumerate(chunks) if chunk.shape[0] > 0]
        for e, (out,) in zip(busy, await gather_all(self.call_expert(e, chunks[e], layer) for e in busy)):
            outputs[e] = out
        return outputs

    async def call_expert(self, e: int, h, layer):
        if self.remote is not None:
            return [self.here(t) for t in await self.remote.call(self.experts[e], [h, layer])]
        return await self.call(self.experts[e], [("INPUT__0", h), ("INPUT__1", layer)], ["OUTPUT__0"])

    async def timed(self, stage: str, times: dict, awaitable):
        start = time.perf_counter()
        try:
            return await awaitable
        finally:
            times[stage] += time.perf_counter() - start

    async def forward(self, ids, mask, count_tokens: bool, times: dict, tokens: list):
        """logits [B, C] and, if asked, tokens per text, layer and expert [B, L, E], on this
        instance's device. ids and mask stay on the CPU: the pieces take them from there, and the
        real positions are found without waiting for a device."""
        B = ids.shape[0]
        groups = length_groups(ids, mask, self.groups, self.device)
        counts = text_of_token = None
        if count_tokens:
            counts = torch.zeros(B, self.n_layers, self.n_experts, dtype=torch.int64, device=self.device)
            text_of_token = torch.cat([g.text_of_token(self.device) for g in groups])
        xs = [None] * len(groups)
        for l in range(self.n_layers):
            layer = self.layer_tensors[l]
            if l == 0:
                stage, model, inputs = FIRST_LAYER, "embedding_attention_gating", [[("IDS", g.ids)] for g in groups]
            else:
                stage, model, inputs = LAYER, "attention_gating", [[("X", x)] for x in xs]
            fronts = await self.timed(
                stage,
                times,
                self.call_each(
                    [
                        (model, [*group_inputs, ("MASK", g.mask), ("LAYER", layer)], FRONT_OUTPUTS)
                        for group_inputs, g in zip(inputs, groups)
                    ]
                ),
            )
            # The experts see the real tokens of every group, in group order.
            h_real = torch.cat([routing.real_tokens(h, g.real) for (_, h, _, _), g in zip(fronts, groups)])
            expert_ids = torch.cat([f[2] for f in fronts])
            weights = torch.cat([f[3] for f in fronts])
            # The per-expert counts are the one value the host waits for in a layer: they say
            # which experts to call and how to split the tokens.
            token_index, slot_order, per_expert = routing.dispatch_plan(expert_ids, self.n_experts)
            chunks = h_real.index_select(0, token_index).split(per_expert)
            outputs = await self.timed(EXPERTS, times, self.run_experts(chunks, layer))
            update = routing.combine(torch.cat(outputs), weights, slot_order)
            start = 0
            for i, ((x, _, _, _), g) in enumerate(zip(fronts, groups)):
                n = g.real.shape[0]
                xs[i] = routing.add_to_real_tokens(x, g.real, update[start : start + n])
                start += n
            tokens.append(per_expert)
            if counts is not None:
                flat = (text_of_token.unsqueeze(1) * self.n_experts + expert_ids).reshape(-1)
                counts[:, l, :] = torch.bincount(flat, minlength=B * self.n_experts).view(B, self.n_experts)
        per_group = await self.timed(
            CLASSIFIER,
            times,
            self.call_each(
                [("classifier", [("INPUT__0", x), ("INPUT__1", g.mask)], ["OUTPUT__0"]) for x, g in zip(xs, groups)]
            ),
        )
        if len(groups) == 1:
            return per_group[0][0], counts
        rows = torch.cat([g.rows for g in groups]).to(self.device)
        group_logits = torch.cat([logits for (logits,) in per_group])
        return torch.empty_like(group_logits).index_copy_(0, rows, group_logits), counts

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
            logits, counts = await self.forward(ids, mask, any(wants_counts), times, tokens)
            logits = logits.cpu()  # the one copy to the host
            counts = counts.cpu() if counts is not None else None
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
