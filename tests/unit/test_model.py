"""The model math: sparse dispatch, balance loss, padding, decomposition, save/load."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moe.checkpoint import load_checkpoint, save_checkpoint
from moe.config import MoEConfig, preset
from moe.model import MoEClassifier, MoEFeedForward, auxiliary_losses
from moe.routing import add_to_real_tokens, balance_loss, blocked_dispatch_plan, real_token_index

CFG = dataclasses.replace(preset("tiny"), vocab_size=500)
# BERT-style blocks, as upcycled from a pretrained encoder (moe/upcycle.py).
POST_NORM = dataclasses.replace(CFG, norm_position="post", layer_norm_eps=1e-12)
both_blocks = pytest.mark.parametrize("cfg", [CFG, POST_NORM], ids=["pre_norm", "post_norm"])


def make_model(seed=0, cfg=CFG) -> MoEClassifier:
    torch.manual_seed(seed)
    model = MoEClassifier(cfg).eval()
    # Random (not zero) biases and router weights so every piece matters in the comparisons.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def random_batch(B=4, T=12, seed=1, cfg=CFG):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, cfg.vocab_size, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    ids[~mask] = cfg.pad_id
    return ids, mask


def test_sparse_dispatch_equals_dense_reference():
    torch.manual_seed(0)
    moe = MoEFeedForward(CFG).eval()
    h = torch.randn(37, CFG.d_model)
    update, expert_ids, logits = moe(h)
    # Dense reference: every expert on every token, then keep the top-k with softmaxed weights.
    all_out = torch.stack([e(h) for e in moe.experts], dim=1)  # [N, E, D]
    top_logits, top_ids = logits.topk(CFG.top_k, dim=-1)
    gate = torch.zeros_like(logits).scatter(1, top_ids, F.softmax(top_logits, -1))
    dense = (gate.unsqueeze(-1) * all_out).sum(1)
    assert torch.equal(expert_ids, top_ids)
    torch.testing.assert_close(update, dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_tokens", [1, 5, 37, 300])
def test_blocked_dispatch_gives_the_sparse_update(n_tokens):
    """forward_blocked (static shapes, for CUDA graphs) computes forward's update, for batches
    small enough to use the smallest blocks and large enough to use the largest, and when the
    router sends every token to the same experts (each expert's run padded to whole blocks)."""
    torch.manual_seed(n_tokens)
    moe = MoEFeedForward(CFG).eval()
    h = torch.randn(n_tokens, CFG.d_model)
    with torch.no_grad():
        torch.testing.assert_close(moe.forward_blocked(h), moe(h)[0], atol=1e-5, rtol=0)
        moe.router.proj.weight.zero_()
        moe.router.proj.weight[3] = 1.0  # positive tokens: expert 3 first, expert 5 second, for every one
        moe.router.proj.weight[5] = 0.5
        h = h.abs() + 0.1
        assert set(moe(h)[1].unique().tolist()) == {3, 5}
        torch.testing.assert_close(moe.forward_blocked(h), moe(h)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("block", [8, 32])
def test_the_blocked_plan_puts_each_slot_in_a_block_of_its_own_expert(block):
    torch.manual_seed(block)
    n_experts = CFG.n_experts
    for expert_ids in (torch.randint(0, n_experts, (45, 2)), torch.zeros(45, 2, dtype=torch.long)):
        token_index, slot_order, row, block_expert = blocked_dispatch_plan(expert_ids, n_experts, block)
        assert block_expert.shape[0] == -(-expert_ids.numel() // block) + n_experts
        assert row.unique().numel() == row.numel() and int(row.max()) < block_expert.shape[0] * block
        sorted_experts = expert_ids.reshape(-1)[slot_order]
        assert torch.equal(block_expert[torch.div(row, block, rounding_mode="floor")], sorted_experts)
        assert torch.equal(token_index, torch.div(slot_order, 2, rounding_mode="floor"))


def test_dispatch_skips_padding_tokens():
    model = make_model()
    ids, mask = random_batch()
    _, expert_ids, _ = model.forward_routed(ids, mask)
    for layer_ids in expert_ids:
        assert layer_ids.shape == (int(mask.sum()), CFG.top_k)


@both_blocks
def test_only_attention_lays_out_padding(cfg):
    """Every step but attention's mixing computes on the real tokens alone: each embedding,
    Linear and LayerNorm outside the experts (which see their own tokens) and the head (which
    sees texts) gets N rows, N the batch's real tokens, not B * T."""
    model = make_model(cfg=cfg)
    ids, mask = random_batch(cfg=cfg)
    assert int(mask.sum()) < mask.numel()
    rows = {}

    def record(name):
        def hook(module, inputs, output):
            rows[name] = inputs[0].shape[0]

        return hook

    hooks = [
        m.register_forward_hook(record(name))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.LayerNorm, nn.Embedding))
        and ".experts." not in name
        and name != "classifier.head"
    ]
    model(ids, mask)
    for hook in hooks:
        hook.remove()
    assert rows and set(rows.values()) == {int(mask.sum())}, rows


def test_balance_loss_formula_on_hand_made_routing():
    E = 4
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.5]])
    expert_ids = torch.tensor([[0, 1], [1, 0], [2, 3]])
    probs = F.softmax(logits, -1)
    f = torch.tensor([2, 2, 1, 1], dtype=torch.float) / 6  # slots per expert / all slots
    expected = E * (f * probs.mean(0)).sum()
    assert balance_loss(logits, expert_ids, E).item() == pytest.approx(expected.item(), abs=1e-6)


def test_balance_loss_is_one_for_uniform_routing_and_larger_otherwise():
    E, N = 8, 64
    uniform_ids = torch.arange(N * 2).reshape(N, 2) % E
    assert balance_loss(torch.zeros(N, E), uniform_ids, E).item() == pytest.approx(1.0, abs=1e-6)
    skewed_logits = torch.zeros(N, E)
    skewed_logits[:, :2] = 5.0
    skewed_ids = torch.tensor([[0, 1]] * N)
    assert balance_loss(skewed_logits, skewed_ids, E).item() > 3.0


@both_blocks
def test_logits_do_not_change_when_padding_is_added(cfg):
    model = make_model(cfg=cfg)
    ids, mask = random_batch(B=3, T=10, cfg=cfg)
    base = model(ids, mask)
    for extra in (1, 7, 30):
        padded_ids = F.pad(ids, (0, extra), value=CFG.pad_id)
        padded_mask = F.pad(mask, (0, extra), value=False)
        torch.testing.assert_close(model(padded_ids, padded_mask), base, atol=1e-5, rtol=0)
    # A text alone gives the same logits as inside a batch padded to a longer text.
    short = int(mask[1].sum())
    alone = model(ids[1:2, :short], mask[1:2, :short])
    torch.testing.assert_close(alone, base[1:2], atol=1e-5, rtol=0)


@both_blocks
def test_forward_equals_composition_of_pieces(cfg):
    model = make_model(cfg=cfg)
    ids, mask = random_batch(cfg=cfg)
    real = real_token_index(mask)
    T = ids.shape[1]
    x = model.embedding(ids, torch.arange(T).expand_as(ids))
    for block in model.blocks:
        # Every step on the padded batch, attention alone seeing its real tokens.
        x_real, h = block.attention(x.reshape(-1, cfg.d_model)[real], mask, real)
        x = torch.zeros_like(x).reshape(-1, cfg.d_model).index_copy(0, real, x_real).view_as(x)
        h_real = h
        expert_ids, weights, _ = block.moe.router(h_real)
        update = torch.zeros_like(h_real)
        for e, expert in enumerate(block.moe.experts):
            for slot in range(cfg.top_k):
                chosen = expert_ids[:, slot] == e
                if chosen.any():
                    update[chosen] += weights[chosen, slot, None] * expert(h_real[chosen])
        x = add_to_real_tokens(x, real, update)
    m = mask.unsqueeze(-1).float()
    logits = model.classifier.head((model.classifier.norm(x) * m).sum(1) / m.sum(1))
    torch.testing.assert_close(model(ids, mask), logits, atol=1e-5, rtol=0)


@both_blocks
@pytest.mark.parametrize("blocked", [False, True], ids=["dense", "blocked"])
def test_the_padded_forward_gives_the_packed_forwards_logits(cfg, blocked):
    """forward_padded runs padding positions as tokens, through every expert or, blocked, each
    through its own (what a CUDA graph captures); real texts get forward's logits, in eager and
    in TorchScript."""
    model = make_model(cfg=cfg)
    ids, mask = random_batch(B=5, T=11, seed=4, cfg=cfg)
    expected = model(ids, mask)
    torch.testing.assert_close(model.forward_padded(ids, mask, blocked), expected, atol=1e-5, rtol=0)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted.forward_padded(ids, mask, blocked), expected, atol=1e-5, rtol=0)
    # Padding positions hold values of their own, unlike the packed forward's zeros: the mean
    # must leave them out (the rows with padding are the ones that would move).
    assert not bool(mask.all())


def test_dense_experts_give_the_sparse_update():
    torch.manual_seed(0)
    moe = MoEFeedForward(CFG).eval()
    h = torch.randn(29, CFG.d_model)
    torch.testing.assert_close(moe.forward_dense(h), moe(h)[0], atol=1e-5, rtol=0)


@both_blocks
def test_torchscript_model_matches_eager(cfg):
    model = make_model(cfg=cfg)
    scripted = torch.jit.script(model)
    ids, mask = random_batch(cfg=cfg)
    torch.testing.assert_close(scripted(ids, mask), model(ids, mask), atol=1e-6, rtol=0)


@both_blocks
def test_save_load_gives_identical_logits(tmp_path, cfg):
    model = make_model(cfg=cfg)
    save_checkpoint(tmp_path / "ck", model, tokenizer_json="{}", metrics={"epochs": []})
    loaded, _ = load_checkpoint(tmp_path / "ck")
    ids, mask = random_batch(cfg=cfg)
    assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_save_replaces_checkpoint_atomically(tmp_path):
    out = tmp_path / "ck"
    save_checkpoint(out, make_model(0), "{}", {"n": 1})
    save_checkpoint(out, make_model(1), "{}", {"n": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    loaded, _ = load_checkpoint(out)
    ids, mask = random_batch()
    assert torch.equal(loaded(ids, mask), make_model(1)(ids, mask))


def test_auxiliary_losses_are_averaged_over_layers():
    model = make_model()
    ids, mask = random_batch()
    _, expert_ids, logits = model.forward_routed(ids, mask)
    bal, z = auxiliary_losses(CFG, expert_ids, logits)
    per_layer = [balance_loss(l, e, CFG.n_experts) for e, l in zip(expert_ids, logits)]
    assert bal.item() == pytest.approx(sum(p.item() for p in per_layer) / len(per_layer), rel=1e-6)
    assert bal.item() >= 0.99 and z.item() > 0


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        MoEConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="top_k"):
        MoEConfig(top_k=9, n_experts=8)


def test_weight_average_follows_the_model_at_its_ramped_rate():
    from moe.train import WeightAverage

    torch.manual_seed(0)
    model = MoEClassifier(CFG)
    start = [p.detach().clone() for p in model.parameters()]
    average = WeightAverage(model, decay=0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update()  # first step: decay (1 + 1) / (10 + 1), far below 0.999
    kept = 2 / 11
    for a, s in zip(average.model.parameters(), start):
        torch.testing.assert_close(a, s + (1 - kept), rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in average.model.parameters())
    # The copy is its own model: changing it leaves the trained one alone.
    with torch.no_grad():
        next(average.model.parameters()).zero_()
    assert next(model.parameters()).abs().sum() > 0
