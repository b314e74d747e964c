"""The MoE feed-forward variants the layer benchmark compares (bench/moe_layer_gpu.py lists
them), the configurations it runs and the FLOPs it counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe.config import MoEConfig, preset
from moe.model import MoEFeedForward
from moe.routing import combine, dispatch_plan

VARIANTS = [
    "sparse_sort",
    "sparse_sort_index_add",
    "sparse_sort_copy",
    "sparse_sort_gather_bmm",
    "mask_loop",
    "dense",
    "grouped_mm",
    "grouped_mm_prestacked",
    "compiled_grouped_mm",
    "compiled_sparse_sort",
]


def bench_configs(smoke: bool) -> dict[str, MoEConfig]:
    if smoke:
        return {
            "smoke-e8": MoEConfig(d_model=64, n_heads=2, d_ff=128, n_experts=8, top_k=2, dropout=0.0),
            "smoke-e16": MoEConfig(d_model=64, n_heads=2, d_ff=128, n_experts=16, top_k=2, dropout=0.0),
        }
    seed = preset("seed")
    return {
        "seed": seed,  # 512 / 2048, 8 experts, top-2
        "large": MoEConfig(d_model=1024, n_heads=16, d_ff=4096, n_experts=8, top_k=2),
        "seed-e64": MoEConfig(d_model=512, n_heads=8, d_ff=2048, n_experts=64, top_k=2),
    }


def flops_per_call(cfg: MoEConfig, n: int) -> float:
    return 2.0 * n * cfg.top_k * (2 * cfg.d_model * cfg.d_ff) + 2.0 * n * cfg.d_model * cfg.n_experts


def sparse_sort(moe: MoEFeedForward, h: Tensor) -> Tensor:
    return moe(h)[0]


def sparse_sort_with(moe: MoEFeedForward, h: Tensor, combine_fn) -> Tensor:
    """The model's dispatch (router, dispatch_plan, loop over experts) with another combine."""
    expert_ids, weights, _ = moe.router(h)
    token_index, slot_order, counts = dispatch_plan(expert_ids, moe.n_experts)
    chunks = h.index_select(0, token_index).split(counts)
    outputs: list[Tensor] = []
    for e, expert in enumerate(moe.experts):
        outputs.append(expert(chunks[e]) if counts[e] > 0 else chunks[e])
    return combine_fn(torch.cat(outputs), weights, token_index, slot_order)


def combine_index_add(y: Tensor, weights: Tensor, token_index: Tensor, slot_order: Tensor) -> Tensor:
    """The model's combine before it adopted the gather: an atomic scatter-add per slot."""
    w = weights.reshape(-1).index_select(0, slot_order).unsqueeze(1).to(y.dtype)
    out = torch.zeros((weights.shape[0], y.shape[1]), dtype=y.dtype, device=y.device)
    return out.index_add(0, token_index, y * w)


def combine_copy(y: Tensor, weights: Tensor, token_index: Tensor, slot_order: Tensor) -> Tensor:
    """Un-permute the weighted slot outputs (index_copy) and sum the k slots of each token."""
    n, k = weights.shape
    w = weights.reshape(-1).index_select(0, slot_order).unsqueeze(1).to(y.dtype)
    slots = torch.empty_like(y).index_copy_(0, slot_order, y * w)  # back to [token, k] order
    return slots.view(n, k, -1).sum(1)


def combine_gather_bmm(y: Tensor, weights: Tensor, token_index: Tensor, slot_order: Tensor) -> Tensor:
    """The model's gather, with the weighted sum over k as one bmm ([N,1,k] @ [N,k,D])."""
    n, k = weights.shape
    inverse = torch.empty_like(slot_order).index_copy_(
        0, slot_order, torch.arange(slot_order.numel(), device=slot_order.device)
    )
    g = y.index_select(0, inverse).view(n, k, -1)
    return torch.bmm(weights.to(g.dtype).unsqueeze(1), g).squeeze(1)


def mask_loop(moe: MoEFeedForward, h: Tensor) -> Tensor:
    expert_ids, weights, _ = moe.router(h)
    out = torch.zeros_like(h)
    for e, expert in enumerate(moe.experts):
        tok, slot = (expert_ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        y = expert(h.index_select(0, tok)) * weights[tok, slot].unsqueeze(1).to(h.dtype)
        out.index_add_(0, tok, y)
    return out


def stack_weights(moe: MoEFeedForward):
    """Experts' weights as grouped-GEMM operands: x @ W1t[e] == fc1_e(x) - b1[e]."""
    w1t = torch.stack([e.fc1.weight for e in moe.experts]).transpose(1, 2)  # [E, d, f]
    w2t = torch.stack([e.fc2.weight for e in moe.experts]).transpose(1, 2)  # [E, f, d]
    b1 = torch.stack([e.fc1.bias for e in moe.experts])  # [E, f]
    b2 = torch.stack([e.fc2.bias for e in moe.experts])  # [E, d]
    return w1t, b1, w2t, b2


def grouped_core(
    router: nn.Module, n_experts: int, h: Tensor, w1t: Tensor, b1: Tensor, w2t: Tensor, b2: Tensor
) -> Tensor:
    expert_ids, weights, _ = router(h)
    k = expert_ids.shape[1]
    flat = expert_ids.reshape(-1)
    slot_order = torch.argsort(flat, stable=True)
    token_index = torch.div(slot_order, k, rounding_mode="floor")
    counts = torch.zeros(n_experts, dtype=torch.int64, device=h.device).scatter_add_(
        0, flat, torch.ones_like(flat)
    )  # fixed shape, no sync
    offs = torch.cumsum(counts, 0).to(torch.int32)
    sorted_e = flat.index_select(0, slot_order)
    x = h.index_select(0, token_index)
    hid = torch._grouped_mm(x, w1t, offs=offs)
    hid = F.gelu(hid + b1.index_select(0, sorted_e))
    y = torch._grouped_mm(hid, w2t, offs=offs) + b2.index_select(0, sorted_e)
    return combine(y, weights, slot_order)


def grouped_mm(moe: MoEFeedForward, h: Tensor) -> Tensor:
    return grouped_core(moe.router, moe.n_experts, h, *stack_weights(moe))


class DenseFFN(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff * cfg.top_k)
        self.fc2 = nn.Linear(cfg.d_ff * cfg.top_k, cfg.d_model)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(h)))
