"""Timing (CUDA events on a GPU, wall time on the CPU), output checks, and the layer
benchmark's side measurements: the machine, the matmul ceiling, fp32 exactness, where
sparse_sort's time goes, the expert GEMMs alone."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from moe.config import MoEConfig
from moe.model import MoEFeedForward
from moe.routing import combine, dispatch_plan

from .variants import (
    combine_copy,
    combine_gather_bmm,
    combine_index_add,
    grouped_mm,
    mask_loop,
    sparse_sort,
    sparse_sort_with,
)


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], object], warmup: int, max_reps: int, target_s: float) -> dict:
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        self.sync()
        est = max((time.perf_counter() - t0) / max(warmup, 1), 1e-6)
        reps = int(min(max_reps, max(5, target_s / est)))
        ms: list[float] = []
        for _ in range(reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                ms.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
        return {
            "ms": statistics.median(ms),
            "ms_min": ms[0],
            "ms_max": ms[-1],
            "ms_p10": ms[int(0.1 * (len(ms) - 1))],
            "ms_p90": ms[int(0.9 * (len(ms) - 1))],
            "reps": reps,
        }


def compare(out: Tensor, ref: Tensor, rel_tol: float) -> dict:
    o, r = out.float(), ref.float()
    finite = bool(torch.isfinite(o).all())
    rel = float((o - r).norm() / r.norm().clamp_min(1e-30))
    max_abs = float((o - r).abs().max())
    scale = float(r.abs().max())
    ok = finite and rel <= rel_tol and bool(torch.allclose(o, r, rtol=2e-2, atol=2e-2 * scale))
    return {"rel_err": rel, "max_abs_err": max_abs, "ref_max_abs": scale, "ok": ok}


def env_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device_type": device.type,
        "has_grouped_mm": hasattr(torch, "_grouped_mm"),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            {
                "gpu": torch.cuda.get_device_name(device),
                "cuda": torch.version.cuda,
                "sm_count": p.multi_processor_count,
                "gpu_mem_gib": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}",
            }
        )
        try:
            import subprocess

            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        except Exception as exc:  # noqa: BLE001 - best effort: the driver version is only reported
            info["driver"] = f"unknown ({exc})"
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def matmul_ceiling(device: torch.device, timer: Timer, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = timer.time(lambda: a @ b, warmup=3, max_reps=20, target_s=0.3)
    return 2.0 * n**3 / (t["ms"] * 1e-3) / 1e12


def fp32_checks(cfg: MoEConfig, device: torch.device, n: int) -> list[dict]:
    """Dispatch variants vs sparse_sort, all in fp32 (tf32 off): the exactness the tests need."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(1)
        moe = MoEFeedForward(cfg).to(device).eval()
        h = torch.randn(n, cfg.d_model, device=device)
        rows = []
        with torch.no_grad():
            ref = sparse_sort(moe, h)
            for name, fn in [
                ("sparse_sort_index_add", lambda m, x: sparse_sort_with(m, x, combine_index_add)),
                ("sparse_sort_copy", lambda m, x: sparse_sort_with(m, x, combine_copy)),
                ("sparse_sort_gather_bmm", lambda m, x: sparse_sort_with(m, x, combine_gather_bmm)),
                ("mask_loop", mask_loop),
                ("grouped_mm", grouped_mm),
            ]:
                try:
                    diff = float((fn(moe, h) - ref).abs().max())
                    rows.append({"variant": name, "tokens": n, "max_abs_diff": diff, "ok_1e-5": diff <= 1e-5})
                except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, the others run
                    rows.append({"variant": name, "tokens": n, "error": f"{type(exc).__name__}: {exc}"[:300]})
        return rows
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def stage_breakdown(moe: MoEFeedForward, h: Tensor, timer: Timer, reps: int = 7) -> dict[str, float]:
    """Where sparse_sort's time goes (CUDA events between the stages of MoEFeedForward.forward)."""
    if not timer.cuda:
        return {}
    names = ["router", "dispatch_plan (incl. host sync)", "gather", "experts", "cat", "combine"]
    per: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(reps + 2):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(len(names) + 1)]
        ev[0].record()
        expert_ids, weights, _ = moe.router(h)
        ev[1].record()
        token_index, slot_order, counts = dispatch_plan(expert_ids, moe.n_experts)
        ev[2].record()
        chunks = h.index_select(0, token_index).split(counts)
        ev[3].record()
        outputs = [ex(chunks[e]) if counts[e] > 0 else chunks[e] for e, ex in enumerate(moe.experts)]
        ev[4].record()
        y = torch.cat(outputs)
        ev[5].record()
        combine(y, weights, slot_order)
        ev[6].record()
        ev[6].synchronize()
        for i, k in enumerate(names):
            per[k].append(ev[i].elapsed_time(ev[i + 1]))
    return {k: statistics.median(v[2:]) for k, v in per.items()}


def gemm_only(moe: MoEFeedForward, stacked, h: Tensor, timer: Timer) -> dict[str, float]:
    """The expert FFNs alone on already-grouped tokens (ms): per-expert nn.Linear loop vs
    torch._grouped_mm (without and with the per-row bias gather it needs)."""
    w1t, b1, w2t, b2 = stacked
    with torch.no_grad():
        expert_ids, _, _ = moe.router(h)
        token_index, slot_order, counts = dispatch_plan(expert_ids, moe.n_experts)
        x = h.index_select(0, token_index)
        chunks = x.split(counts)
        offs = torch.tensor(counts, device=h.device).cumsum(0).to(torch.int32)
        sorted_e = expert_ids.reshape(-1).index_select(0, slot_order)

        def loop():
            return [ex(chunks[e]) for e, ex in enumerate(moe.experts) if counts[e] > 0]

        def grouped_nobias():
            return torch._grouped_mm(F.gelu(torch._grouped_mm(x, w1t, offs=offs)), w2t, offs=offs)

        def grouped_bias():
            hid = F.gelu(torch._grouped_mm(x, w1t, offs=offs) + b1.index_select(0, sorted_e))
            return torch._grouped_mm(hid, w2t, offs=offs) + b2.index_select(0, sorted_e)

        res = {"tokens": h.shape[0], "loop_linear": timer.time(loop, 2, 10, 0.1)["ms"]}
        if hasattr(torch, "_grouped_mm"):
            res["grouped_mm_no_bias"] = timer.time(grouped_nobias, 2, 10, 0.1)["ms"]
            res["grouped_mm_with_bias_gather"] = timer.time(grouped_bias, 2, 10, 0.1)["ms"]
    return res
