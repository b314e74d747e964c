"""The MoE forward pass over separately served pieces.

    layer 0:  embedding_attention_gating   (embedding -> attention -> gating, one ensemble)
    layer l:  attention_gating             (attention -> gating, one ensemble)
              then the experts, concurrently, each with only its own tokens, and the
              weighted combine
    then:     classifier

Each layer costs two round trips: one for attention and routing, one for the experts (how they
are reached, `expert_calls`, is decided by `moe export` and read from the model's config).
Grouping tokens by expert and adding the weighted outputs back use moe_routing, a copy of the
package's moe/routing.py made by `moe export`: the same code the eager model runs.

A batch runs as `groups` groups of texts sorted by length, each trimmed to its own longest text
and sent through the attention pieces concurrently; every layer's experts see the tokens of the
whole batch. Activations stay on `device` from the first piece to the classifier; the host waits
only for each layer's per-expert token counts and, once, for the logits.

What a model answers lives in Triton's memory, which goes back to Triton's pool as soon as its
last reference drops, however far the device still is from reading it: the host only queues
kernels. Every answer is therefore held until a later answer is back (a model answers only
after the work queued before its inputs were handed over), or until the logits are on the host.
The experts' outputs are the answers this concerns: the combine that reads them is queued just
before they would go out of scope. On the GPU, dropping them early let other executions' answers
overwrite them, and a few texts of a loaded server came back with another class.
"""

import asyncio
import time

import moe_routing as routing
import torch

# Stages as the Prometheus counters label them; a stage calls the models its name joins.
FIRST_LAYER, LAYER, EXPERTS, CLASSIFIER, ORCHESTRATION = (
    "embedding+attention+gating",
    "attention+gating",
    "experts",
    "classifier",
    "orchestration",
)
STAGES = (FIRST_LAYER, LAYER, EXPERTS, CLASSIFIER, ORCHESTRATION)
FRONT_OUTPUTS = ["X_OUT", "H", "EXPERT_IDS", "EXPERT_WEIGHTS"]
# How a layer's experts are reached: the config's expert_calls (export/options.py says why each).
ENSEMBLE, ENSEMBLE_IF_ALL_BUSY, CALLS = "ensemble", "ensemble_if_all_busy", "calls"
EXPERT_CALLS = (ENSEMBLE, ENSEMBLE_IF_ALL_BUSY, CALLS)
CPU = torch.device("cpu")


class StepFailed(Exception):
    """A model the orchestration called failed: the batch's requests are answered UNAVAILABLE."""


class Group:
    """Some rows of the batch, trimmed to their longest text: `rows` [n] (where they sit in the
    batch), ids and mask [n, T'] on the CPU, `real` the flat positions of their real tokens on
    the device (and `cpu_real` on the CPU)."""

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


class Orchestrator:
    """v1's forward pass over models reached through `call`.

    call(model, inputs, outputs) -> awaitable list of tensors: runs `model` on (name, tensor)
    inputs and returns the named outputs on `device`, raising StepFailed if the model fails.
    call_now: the same made synchronously, for a lone call to a local model (the instance runs
    one batch at a time, so waiting in place skips the hand-offs to asyncio's executor thread
    and back: a round trip measured 0.2-0.25 ms shorter at concurrency 1, docs/benchmarks.md);
    by default `call`. Expert calls always go through `call`, which may reach remote experts.
    """

    def __init__(
        self,
        call,
        n_layers: int,
        n_experts: int,
        expert_models: list,
        groups: int = 1,
        device=CPU,
        expert_calls: str = CALLS,
        call_now=None,
    ):
        if len(expert_models) != n_experts:
            raise ValueError(f"{len(expert_models)} expert models for {n_experts} experts")
        if expert_calls not in EXPERT_CALLS:
            raise ValueError(f"expert_calls must be one of {', '.join(EXPERT_CALLS)}, got {expert_calls!r}")
        self.call, self.call_now = call, call_now
        self.n_layers, self.n_experts, self.experts = n_layers, n_experts, list(expert_models)
        self.groups, self.device, self.expert_calls = groups, device, expert_calls
        self.layer_tensors = [torch.tensor([l], dtype=torch.int64) for l in range(n_layers)]
        self.ensemble_inputs = [f"H_{e}" for e in range(n_experts)]
        self.ensemble_outputs = [f"OUT_{e}" for e in range(n_experts)]

    async def call_each(self, calls: list) -> list:
        """The outputs of every (model, inputs, outputs) call, all in flight at once."""
        if len(calls) == 1 and self.call_now is not None:
            return [self.call_now(*calls[0])]
        return await gather_all(self.call(*c) for c in calls)

    async def run_experts(self, chunks, layer) -> list:
        """Every expert's output for its chunk of tokens; an idle expert's is its empty chunk."""
        if self.expert_calls == ENSEMBLE or (
            self.expert_calls == ENSEMBLE_IF_ALL_BUSY and all(c.shape[0] > 0 for c in chunks)
        ):
            inputs = [*zip(self.ensemble_inputs, chunks), ("LAYER", layer)]
            (outputs,) = await self.call_each([("experts", inputs, self.ensemble_outputs)])
            return outputs
        outputs = list(chunks)
        busy = [e for e, chunk in enumerate(chunks) if chunk.shape[0] > 0]
        calls = [(self.experts[e], [("INPUT__0", chunks[e]), ("INPUT__1", layer)], ["OUTPUT__0"]) for e in busy]
        for e, (out,) in zip(busy, await gather_all(self.call(*c) for c in calls)):
            outputs[e] = out
        return outputs

    async def moe_update(self, h_real, expert_ids, weights, layer, times: dict):
        """The MoE sublayer's update [N, D] of the N real tokens, the tokens per expert, and the
        experts' answers, which the caller holds until a later answer is back: the dispatch ->
        experts -> combine of moe.model.MoEFeedForward, the experts served."""
        # The per-expert counts are the one value the host waits for in a layer: they say which
        # experts to call and how to split the tokens.
        token_index, slot_order, per_expert = routing.dispatch_plan(expert_ids, self.n_experts)
        chunks = h_real.index_select(0, token_index).split(per_expert)
        outputs = await timed(EXPERTS, times, self.run_experts(chunks, layer))
        return routing.combine(torch.cat(outputs), weights, slot_order), per_expert, outputs

    async def forward(self, ids, mask, count_tokens: bool, times: dict, tokens: list):
        """logits [B, C] and, if asked, tokens per text, layer and expert [B, L, E], copied to
        the host; `times` gathers seconds per stage, `tokens` each layer's tokens per expert. ids
        and mask stay on the CPU: the pieces take them from there, and the real positions are
        found without waiting for a device."""
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
            calls = [
                (model, [*group_inputs, ("MASK", g.mask), ("LAYER", layer)], FRONT_OUTPUTS)
                for group_inputs, g in zip(inputs, groups)
            ]
            fronts = await timed(stage, times, self.call_each(calls))
            # The experts see the real tokens of every group, in group order.
            h_real = torch.cat([routing.real_tokens(h, g.real) for (_, h, _, _), g in zip(fronts, groups)])
            expert_ids = torch.cat([f[2] for f in fronts])
            weights = torch.cat([f[3] for f in fronts])
            # The previous layer's expert answers are released here, after this layer's front
            # answered; this layer's stay until the next answer (module docstring).
            update, per_expert, _expert_answers = await self.moe_update(h_real, expert_ids, weights, layer, times)
            start = 0
            for i, ((x, _, _, _), g) in enumerate(zip(fronts, groups)):
                n = g.real.shape[0]
                xs[i] = routing.add_to_real_tokens(x, g.real, update[start : start + n])
                start += n
            tokens.append(per_expert)
            if counts is not None:
                flat = (text_of_token.unsqueeze(1) * self.n_experts + expert_ids).reshape(-1)
                counts[:, l, :] = torch.bincount(flat, minlength=B * self.n_experts).view(B, self.n_experts)
        calls = [("classifier", [("INPUT__0", x), ("INPUT__1", g.mask)], ["OUTPUT__0"]) for x, g in zip(xs, groups)]
        per_group = await timed(CLASSIFIER, times, self.call_each(calls))
        if len(groups) == 1:
            logits = per_group[0][0]
        else:
            rows = torch.cat([g.rows for g in groups]).to(self.device)
            group_logits = torch.cat([logits for (logits,) in per_group])
            logits = torch.empty_like(group_logits).index_copy_(0, rows, group_logits)
        # The one copy to the host, made while every answer the logits come from is held.
        return logits.cpu(), counts.cpu() if counts is not None else None


async def timed(stage: str, times: dict, awaitable):
    start = time.perf_counter()
    try:
        return await awaitable
    finally:
        times[stage] += time.perf_counter() - start
