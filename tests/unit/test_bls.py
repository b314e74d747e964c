"""v1's orchestration (model_repository/moe_bls/1: the Triton adapter and its bls/ library) run
in this process over the eager pieces, through a stand-in for triton_python_backend_utils:
v1 must answer what the eager model answers, reach the experts as its config says, and answer
every request of a batch whose piece failed."""

import dataclasses

import pytest
import torch

from export.pieces import build_pieces
from moe.config import preset
from moe.model import MoEClassifier

from .bls_harness import eager_server, execute, start_bls

CFG = dataclasses.replace(preset("tiny"), dropout=0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MoEClassifier(CFG).eval()


def texts(lengths: list, width: int, seed: int):
    """Random token ids [B, width] with texts of the given lengths (padding after them)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, CFG.vocab_size, (len(lengths), width), generator=g)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return ids.masked_fill(~mask, CFG.pad_id), mask


def eager_answer(model, ids, mask):
    """logits [B, C] and tokens per text, layer and expert [B, L, E] of the eager model."""
    rows = []
    with torch.no_grad():
        logits, expert_ids, _ = model.forward_routed(ids, mask)
        for b in range(ids.shape[0]):
            _, per_layer, _ = model.forward_routed(ids[b : b + 1], mask[b : b + 1])
            rows.append(torch.stack([torch.bincount(e.reshape(-1), minlength=CFG.n_experts) for e in per_layer]))
    return logits, torch.stack(rows)


def serve(model, **parameters):
    server = eager_server(build_pieces(model), CFG.n_experts)
    return server, start_bls(server, CFG.n_layers, CFG.n_experts, **parameters)


@pytest.mark.parametrize("expert_calls", ["ensemble", "ensemble_if_all_busy", "calls"])
@pytest.mark.parametrize("groups", [1, 2])
def test_v1_answers_what_the_eager_model_answers(model, expert_calls, groups):
    server, bls = serve(model, expert_calls=expert_calls, groups=groups)
    # Two requests of different widths, batched together; texts of many lengths in each.
    batches = [texts([3, 17, 9, 1], 17, seed=1), texts([30, 2, 12], 32, seed=2)]
    try:
        responses = execute(bls, batches)
    finally:
        bls.finalize()
    for (ids, mask), response in zip(batches, responses):
        assert not response.has_error(), response.error().message()
        logits, counts = (t.value for t in response.output_tensors)
        expected_logits, expected_counts = eager_answer(model, ids, mask)
        torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)
        assert torch.equal(counts, expected_counts)
    front = {1: 1, 2: 2}[groups] * CFG.n_layers  # one call per group and layer
    assert server.calls.count("embedding_attention_gating") + server.calls.count("attention_gating") == front


def test_expert_calls_decide_how_experts_are_reached(model):
    """One short text leaves experts idle in every layer (top-2 of 8 over 2 tokens)."""
    batch = texts([2], 2, seed=3)
    busy = int((eager_answer(model, *batch)[1] > 0).sum())
    assert busy < CFG.n_layers * CFG.n_experts
    expected = {
        # every layer through the ensemble, idle experts on empty chunks: every expert runs
        "ensemble": (CFG.n_layers, CFG.n_layers * CFG.n_experts),
        # a layer with an idle expert calls its busy experts one by one
        "ensemble_if_all_busy": (0, busy),
        "calls": (0, busy),
    }
    for expert_calls, (ensembles, expert_runs) in expected.items():
        server, bls = serve(model, expert_calls=expert_calls)
        try:
            (response,) = execute(bls, [batch], expert_tokens=False)
        finally:
            bls.finalize()
        assert not response.has_error() and len(response.output_tensors) == 1
        assert server.calls.count("experts") == ensembles, expert_calls
        assert sum(c.startswith("expert_") for c in server.calls) == expert_runs, expert_calls


def test_a_failed_piece_fails_every_request_of_the_batch_and_says_which(model):
    server, bls = serve(model, expert_calls="calls")

    def broken(h, layer):
        raise RuntimeError("expert 3 is down")

    server.pieces["expert_3"] = broken
    try:
        responses = execute(bls, [texts([20, 20], 20, seed=4), texts([20], 20, seed=5)])
        assert [r.has_error() for r in responses] == [True, True, True][: len(responses)]
        for r in responses:
            assert r.error().code == "UNAVAILABLE" and "expert_3" in r.error().message()
        # The instance keeps serving once the piece is back.
        server.pieces["expert_3"] = build_pieces(model)["expert_3"]
        (ok,) = execute(bls, [texts([5], 5, seed=6)])
        assert not ok.has_error()
    finally:
        bls.finalize()


def test_counters_add_up_the_routed_tokens_and_batches(model):
    _, bls = serve(model)
    batch = texts([4, 7], 7, seed=7)
    try:
        execute(bls, [batch])
        execute(bls, [batch])
    finally:
        bls.finalize()  # flushes what is pending
    counters = bls.counters
    assert counters.batches.value == 2
    routed = sum(m.value for layer in counters.tokens for m in layer)
    assert routed == 2 * 11 * CFG.top_k * CFG.n_layers
    assert all(counters.stages[s].value > 0 for s in ("experts", "classifier", "orchestration"))


@pytest.mark.parametrize("expert_calls", ["ensemble", "calls"])
def test_every_answer_is_held_until_a_later_answer_is_back(model, monkeypatch, expert_calls):
    """Triton takes an answer's memory back once its last reference drops, while kernels that
    read it may still be queued on the GPU: the orchestration holds each answer until the next
    model has answered. On the CPU nothing is queued, so this checks the holding itself: when
    the models after the experts are called, every tensor answered since the layer's front
    is still referenced."""
    import weakref

    server, bls = serve(model, expert_calls=expert_calls)
    namespace = type(bls).outputs.__globals__  # the BLS model module's globals
    answered = []  # (call number, weak reference) of every tensor the BLS took from an answer
    real_to_torch = namespace["to_torch"]

    def to_torch(tensor):
        value = real_to_torch(tensor)
        answered.append((len(server.calls), weakref.ref(value)))
        return value

    monkeypatch.setitem(namespace, "to_torch", to_torch)
    real_run = server.run
    released_early = []

    def run(model_name, inputs):
        if model_name in ("attention_gating", "classifier"):  # the calls after a layer's experts
            released_early.extend(n for n, ref in answered if ref() is None)
            answered.clear()
        return real_run(model_name, inputs)

    monkeypatch.setattr(server, "run", run)
    try:
        (response,) = execute(bls, [texts([12, 30, 7], 30, seed=8)], expert_tokens=False)
    finally:
        bls.finalize()
    assert not response.has_error()
    assert "classifier" in server.calls and any(name.startswith("expert") for name in server.calls)
    assert released_early == [], f"answers of calls {released_early} were released before the next answer"
