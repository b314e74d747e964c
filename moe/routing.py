"""Token routing math shared by the eager model, TorchScript export and the v1 BLS.

Every function here is TorchScript-compatible and free of Python loops over tokens, so the
monolithic model (v2) and the distributed pipeline (v1) run literally the same code to pick
experts, group tokens by expert, and add the weighted expert outputs back.
"""

from typing import List, Tuple

import torch
from torch import Tensor


def top_k_gating(router_logits: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Top-k experts per token and their weights (softmax over the k chosen logits)."""
    top_logits, expert_ids = torch.topk(router_logits.float(), k, dim=-1)
    return expert_ids, torch.softmax(top_logits, dim=-1)


def sorted_slots(expert_ids: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The flattened [N*k] slots' experts, the order that sorts them by expert (stable, so tokens
    keep their order inside an expert), and the token of each sorted slot."""
    flat = expert_ids.reshape(-1)
    slot_order = torch.argsort(flat, stable=True)
    return flat, slot_order, torch.div(slot_order, expert_ids.shape[1], rounding_mode="floor")


def dispatch_plan(expert_ids: Tensor, n_experts: int) -> Tuple[Tensor, Tensor, List[int]]:
    """Group the N*k routed slots by expert.

    Returns (token_index, slot_order, counts): slot_order sorts the flattened [N*k] slots by
    expert (stable, so tokens keep their order inside an expert), token_index[i] is the token
    that sorted slot i belongs to, and counts[e] is how many slots expert e receives. Expert e's
    tokens are therefore token_index[sum(counts[:e]) : sum(counts[:e+1])].
    """
    flat, slot_order, token_index = sorted_slots(expert_ids)
    counts: List[int] = torch.bincount(flat, minlength=n_experts).tolist()
    return token_index, slot_order, counts


def blocked_dispatch_plan(expert_ids: Tensor, n_experts: int, block: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """dispatch_plan's grouping with shapes that depend only on expert_ids' shape, and no read
    of the per-expert counts on the host (what a CUDA graph can capture): the sorted slots laid
    out in blocks of `block` rows, each expert's run padded to whole blocks, so that each block
    holds one expert's slots.

    Returns (token_index, slot_order, row, block_expert): token_index and slot_order as
    dispatch_plan's; row[i] is sorted slot i's row in the blocked layout of
    len(block_expert) * block rows (rows no slot lands on are padding), and block_expert[b] the
    expert of block b. The blocks always number ceil(N*k / block) + n_experts, enough for any
    routing.
    """
    flat, slot_order, token_index = sorted_slots(expert_ids)
    sorted_experts = flat.index_select(0, slot_order)
    # Not bincount: on a GPU it reads the largest id on the host to size its answer.
    counts = torch.zeros(n_experts, dtype=flat.dtype, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    run_start = torch.cumsum(counts, 0) - counts
    padded_counts = torch.div(counts + block - 1, block, rounding_mode="floor") * block
    padded_end = torch.cumsum(padded_counts, 0)
    padded_start = padded_end - padded_counts
    rank = torch.arange(flat.numel(), device=flat.device) - run_start.index_select(0, sorted_experts)
    row = padded_start.index_select(0, sorted_experts) + rank
    n_blocks = (flat.numel() + block - 1) // block + n_experts
    block_start = torch.arange(n_blocks, device=flat.device) * block
    # Blocks past the last expert's run hold only padding rows: any expert computes them.
    block_expert = torch.searchsorted(padded_end, block_start, right=True).clamp(max=n_experts - 1)
    return token_index, slot_order, row, block_expert


def combine(expert_outputs: Tensor, expert_weights: Tensor, slot_order: Tensor) -> Tensor:
    """sum_k w_k * expert_{e_k}(h) per token, from expert outputs in dispatch order.

    Un-sorts the outputs back to [N, k, D] with one gather and reduces over k: no atomic
    scatter-add, which cost a third of the layer on an H200 (docs/gpu_moe_layer.md).
    """
    n_tokens, k = expert_weights.shape
    inverse = torch.empty_like(slot_order).index_copy_(
        0, slot_order, torch.arange(slot_order.numel(), device=slot_order.device)
    )
    y = expert_outputs.index_select(0, inverse).view(n_tokens, k, expert_outputs.shape[1])
    return (y * expert_weights.to(y.dtype).unsqueeze(2)).sum(1)


def add_to_real_tokens(x: Tensor, real_index: Tensor, update: Tensor) -> Tensor:
    """Residual add of the MoE output at the real (non-padding) positions of x [B, T, D]."""
    B, T, D = x.shape
    return x.reshape(B * T, D).index_add(0, real_index, update.to(x.dtype)).reshape(B, T, D)


def real_token_index(mask: Tensor) -> Tensor:
    """Flat [B*T] positions of the real tokens: the only tokens that are routed."""
    return torch.nonzero(mask.reshape(-1)).squeeze(1)


def real_tokens(h: Tensor, real_index: Tensor) -> Tensor:
    """The rows of h [B, T, D] at the real positions, [N, D] in row-major order."""
    return h.reshape(-1, h.shape[-1]).index_select(0, real_index)


def pad_real_tokens(x: Tensor, real_index: Tensor, B: int, T: int) -> Tensor:
    """The real tokens x [N, D] laid out as a [B, T, D] batch, zeros at padding: the inverse of
    real_tokens."""
    padded = torch.zeros(B * T, x.shape[1], dtype=x.dtype, device=x.device)
    return padded.index_copy(0, real_index, x).view(B, T, x.shape[1])


def balance_loss(router_logits: Tensor, expert_ids: Tensor, n_experts: int) -> Tensor:
    """Switch-Transformer load-balancing loss E * sum_i f_i * P_i over real tokens.

    f_i: share of the routed slots that go to expert i; P_i: mean router probability of
    expert i. Equals 1.0 when routing is uniform, grows as it concentrates.
    """
    probs = torch.softmax(router_logits.float(), dim=-1)
    f = torch.bincount(expert_ids.reshape(-1), minlength=n_experts).float() / expert_ids.numel()
    return n_experts * torch.sum(f * probs.mean(0))


def router_z_loss(router_logits: Tensor) -> Tensor:
    """ST-MoE z-loss: keeps router logits small so the softmax stays well conditioned."""
    return torch.logsumexp(router_logits.float(), dim=-1).square().mean()
