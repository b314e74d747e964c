"""Microbenchmark of the MoE feed-forward layer on a GPU.

Compares, in bf16, on the same random tokens and the same router:

  sparse_sort       moe.model.MoEFeedForward as it is: router, dispatch_plan (stable argsort +
                    bincount().tolist()), a loop over experts on contiguous chunks, combine by
                    GATHERING the expert outputs back into [token, k] order and a weighted sum
                    over k (no atomics). (In docs/gpu_moe_layer.md's run this was the variant
                    "sparse_sort_gather"; "sparse_sort" there was the index_add combine below.)
  sparse_sort_index_add   the same with the model's earlier combine: an atomic index_add.
  sparse_sort_copy  the same, but combine by un-permuting the weighted slot outputs
                    (index_copy) and summing the k slots of each token: no atomics, no zeros.
  sparse_sort_gather_bmm  the model's gather, the weighted sum over k as one bmm.
  mask_loop         the naive loop of older implementations: for e: (ids == e).nonzero(), gather,
                    expert, index_add.
  dense             a dense FFN with the same ACTIVE parameters per token (hidden width
                    d_ff * top_k, one matmul pair on all tokens): the speed-of-light reference.
  grouped_mm        torch._grouped_mm over the experts' weights stacked [E, d, f] (stacked inside
                    the timed call, as the model would have to with its per-expert modules); no
                    host sync.
  grouped_mm_prestacked   the same with the weights stacked once, outside the timed region.
  compiled_grouped_mm     torch.compile of grouped_mm_prestacked (CUDA only, time permitting).
  compiled_sparse_sort    torch.compile of MoEFeedForward (CUDA only, time permitting).

FLOPs counted per call: 2 * tokens * top_k * (2 * d_model * d_ff)  (the experts' FFNs)
                      + 2 * tokens * d_model * n_experts          (the router),
the same count for every variant (the dense FFN does the expert part and no router), so TFLOP/s
compare directly; "ratio to dense" is dense time / variant time.

Every variant's output is checked against sparse_sort's (bf16 tolerance) before it is timed, and
the dispatch variants that can run in fp32 are checked against sparse_sort in fp32 (1e-5).

Usage:
  python3 bench/moe_layer_gpu.py --out DIR                 # on a GPU: full run, JSON + Markdown
  python3 bench/moe_layer_gpu.py --smoke --out DIR         # CPU, tiny sizes, a few seconds
  python3 bench/moe_layer_gpu.py --plot-from DIR/moe_layer_gpu.json --img docs/img/gpu_moe_layer.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from moe.config import MoEConfig, preset  # noqa: E402
from moe.model import MoEFeedForward  # noqa: E402
from moe.routing import combine, dispatch_plan  # noqa: E402

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


# ----------------------------------------------------------------------------- implementations


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


# ----------------------------------------------------------------------------- timing


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


# ----------------------------------------------------------------------------- the run


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


def run(args) -> dict:
    smoke = args.smoke
    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    timer = Timer(device)
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    configs = bench_configs(smoke)
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs.split(",")}
    tokens = (
        [int(t) for t in args.tokens.split(",")]
        if args.tokens
        else ([128, 512] if smoke else [1024, 4096, 16384, 65536, 262144])
    )
    do_compile = device.type == "cuda" and not args.no_compile
    info = env_info(device)
    print(f"# env: {json.dumps(info)}", flush=True)
    data = {
        "env": info,
        "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "smoke": smoke,
        "dtype": "bfloat16",
        "configs": {
            k: {"d_model": c.d_model, "d_ff": c.d_ff, "n_experts": c.n_experts, "top_k": c.top_k}
            for k, c in configs.items()
        },
        "tokens": tokens,
        "results": [],
        "fp32_check": [],
        "breakdown": {},
        "gemm_only": {},
        "compile": {},
        "skipped": [],
    }
    warmup = 2 if smoke else 3
    max_reps = 5 if smoke else 40
    target_s = 0.05 if smoke else 0.25

    if device.type == "cuda":
        data["matmul_ceiling_tflops"] = matmul_ceiling(device, timer, 8192)
        print(f"# bf16 8192^3 matmul: {data['matmul_ceiling_tflops']:.0f} TFLOP/s", flush=True)

    for cname, cfg in configs.items():
        data["fp32_check"] += [dict(r, config=cname) for r in fp32_checks(cfg, device, 256 if smoke else 8192)]
        for r in data["fp32_check"]:
            if r["config"] == cname:
                print(f"# fp32 check {cname}: {r}", flush=True)

    models = {}
    for cname, cfg in configs.items():
        torch.manual_seed(0)
        moe = MoEFeedForward(cfg).to(device=device, dtype=torch.bfloat16).eval()
        dense = DenseFFN(cfg).to(device=device, dtype=torch.bfloat16).eval()
        models[cname] = (cfg, moe, dense, stack_weights(moe))

    def fns(cname: str) -> dict[str, Callable[[Tensor], Tensor]]:
        cfg, moe, dense, stacked = models[cname]
        return {
            "sparse_sort": lambda h: sparse_sort(moe, h),
            "sparse_sort_index_add": lambda h: sparse_sort_with(moe, h, combine_index_add),
            "sparse_sort_copy": lambda h: sparse_sort_with(moe, h, combine_copy),
            "sparse_sort_gather_bmm": lambda h: sparse_sort_with(moe, h, combine_gather_bmm),
            "mask_loop": lambda h: mask_loop(moe, h),
            "dense": lambda h: dense(h),
            "grouped_mm": lambda h: grouped_mm(moe, h),
            "grouped_mm_prestacked": lambda h: grouped_core(moe.router, moe.n_experts, h, *stacked),
        }

    def measure(cname: str, n: int, name: str, fn, h: Tensor, ref: Tensor | None):
        cfg = models[cname][0]
        row = {"config": cname, "tokens": n, "variant": name}
        try:
            with torch.no_grad():
                out = fn(h)
                if ref is not None and name != "dense":
                    row["check"] = compare(out, ref, args.rel_tol)
                del out
                t = timer.time(lambda: fn(h), warmup, max_reps, target_s)
        except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, the others run
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"  {cname:9s} {n:7d} {name:22s} ERROR {row['error']}", flush=True)
            data["results"].append(row)
            return None
        row.update(t)
        row["tokens_per_s"] = n / (t["ms"] * 1e-3)
        row["tflops"] = flops_per_call(cfg, n) / (t["ms"] * 1e-3) / 1e12
        data["results"].append(row)
        chk = row.get("check")
        print(
            f"  {cname:9s} {n:7d} {name:22s} {t['ms']:9.3f} ms  {row['tflops']:7.1f} TFLOP/s"
            f"  reps={t['reps']}" + (f"  rel_err={chk['rel_err']:.1e} ok={chk['ok']}" if chk else ""),
            flush=True,
        )
        return row

    # Eager variants: every config and token count.
    for cname in configs:
        cfg = models[cname][0]
        for n in tokens:
            if time.perf_counter() > deadline - (90 if do_compile else 0):
                data["skipped"].append(f"{cname} {n}: out of time budget")
                print(f"# skip {cname} {n}: out of time", flush=True)
                continue
            torch.manual_seed(n)
            h = torch.randn(n, cfg.d_model, device=device, dtype=torch.bfloat16)
            with torch.no_grad():
                ref = sparse_sort(models[cname][1], h)
            for name, fn in fns(cname).items():
                if args.variants and name not in args.variants.split(",") + ["sparse_sort", "dense"]:
                    continue
                if name == "grouped_mm_prestacked" and not hasattr(torch, "_grouped_mm"):
                    continue
                if name.startswith("grouped") and not hasattr(torch, "_grouped_mm"):
                    data["skipped"].append(f"{cname} {n} {name}: torch has no _grouped_mm")
                    continue
                measure(cname, n, name, fn, h, ref)
            del h, ref
        if timer.cuda and cname in models:
            n = max(tokens)
            h = torch.randn(n, cfg.d_model, device=device, dtype=torch.bfloat16)
            with torch.no_grad():
                data["breakdown"][cname] = dict(stage_breakdown(models[cname][1], h, timer), tokens=n)
            print(f"# breakdown {cname} @ {n}: {data['breakdown'][cname]}", flush=True)
            data["gemm_only"][cname] = gemm_only(models[cname][1], models[cname][3], h, timer)
            print(f"# gemm only {cname} @ {n}: {data['gemm_only'][cname]}", flush=True)
            del h
            torch.cuda.empty_cache()

    # Compiled variants, time permitting (compile time is reported separately).
    if do_compile:
        for cname in configs:
            cfg, moe, dense, stacked = models[cname]
            compiled = {
                "compiled_grouped_mm": torch.compile(
                    lambda h, _m=moe, _s=stacked: grouped_core(_m.router, _m.n_experts, h, *_s), dynamic=True
                ),
                "compiled_sparse_sort": torch.compile(moe, dynamic=True),
            }
            for name, cfn in compiled.items():
                if args.variants and name not in args.variants.split(","):
                    continue
                if name == "compiled_grouped_mm" and not hasattr(torch, "_grouped_mm"):
                    continue
                fn = (lambda h, _f=cfn: _f(h)[0]) if name == "compiled_sparse_sort" else cfn
                for n in tokens:
                    if time.perf_counter() > deadline:
                        data["skipped"].append(f"{cname} {n} {name}: out of time budget")
                        continue
                    torch.manual_seed(n)
                    h = torch.randn(n, cfg.d_model, device=device, dtype=torch.bfloat16)
                    with torch.no_grad():
                        ref = sparse_sort(moe, h)
                        t0 = time.perf_counter()
                        try:
                            fn(h)
                            timer.sync()
                        except Exception as exc:  # noqa: BLE001 - reported in the results, the run goes on
                            data["results"].append(
                                {
                                    "config": cname,
                                    "tokens": n,
                                    "variant": name,
                                    "error": f"{type(exc).__name__}: {exc}"[:300],
                                }
                            )
                            print(f"  {cname} {n} {name} compile ERROR {exc!s:.300}", flush=True)
                            break
                        data["compile"][f"{cname}/{name}/{n}"] = time.perf_counter() - t0
                    measure(cname, n, name, fn, h, ref)
                    del h, ref
        try:
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001 - resetting dynamo's caches is best effort
            pass

    # ratio to dense
    dense_ms = {(r["config"], r["tokens"]): r["ms"] for r in data["results"] if r["variant"] == "dense" and "ms" in r}
    for r in data["results"]:
        key = (r["config"], r["tokens"])
        if "ms" in r and key in dense_ms:
            r["ratio_to_dense"] = dense_ms[key] / r["ms"]
    data["wall_s"] = time.perf_counter() - t_start
    return data


# ----------------------------------------------------------------------------- reports


def render_markdown(data: dict) -> str:
    env = data["env"]
    where = env.get("gpu") or env.get("cpu", "cpu")
    lines = [
        f"Machine: **{where}**, torch {env['torch']}"
        + (f", CUDA {env.get('cuda')}, driver {env.get('driver')}, {env.get('sm_count')} SMs" if env.get("gpu") else "")
        + f"; dtype {data['dtype']}.",
        "",
    ]
    if "matmul_ceiling_tflops" in data:
        lines += [f"bf16 8192x8192x8192 matmul on this card: {data['matmul_ceiling_tflops']:.0f} TFLOP/s.", ""]
    by_cfg: dict[str, list[dict]] = {}
    for r in data["results"]:
        by_cfg.setdefault(r["config"], []).append(r)
    for cname, rows in by_cfg.items():
        c = data["configs"][cname]
        variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
        tokens = sorted({r["tokens"] for r in rows})
        lines += [
            f"### `{cname}`: d_model {c['d_model']}, d_ff {c['d_ff']}, {c['n_experts']} experts, top-{c['top_k']}",
            "",
            "Ratio to dense (dense time / variant time; >= 0.7 is the target), TFLOP/s in brackets:",
            "",
        ]
        lines.append("| tokens | " + " | ".join(variants) + " |")
        lines.append("|---:|" + "---:|" * len(variants))
        for n in tokens:
            cells = []
            for v in variants:
                r = next((r for r in rows if r["tokens"] == n and r["variant"] == v), None)
                if r is None:
                    cells.append("")
                elif "ms" not in r:
                    cells.append("error")
                else:
                    bad = "" if r.get("check", {"ok": True})["ok"] else " **WRONG**"
                    cells.append(f"{r.get('ratio_to_dense', float('nan')):.2f} ({r['tflops']:.0f}){bad}")
            lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "<details><summary>all numbers</summary>",
            "",
            "| tokens | variant | median ms | p10-p90 ms | reps | Mtokens/s | TFLOP/s "
            "| ratio to dense | rel. err vs sparse_sort |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in tokens:
            for v in variants:
                r = next((r for r in rows if r["tokens"] == n and r["variant"] == v), None)
                if r is None:
                    continue
                if "ms" not in r:
                    lines.append(f"| {n:,} | {v} | error: {r.get('error', '')[:80]} | | | | | | |")
                    continue
                chk = r.get("check")
                err = (
                    "reference"
                    if v == "sparse_sort"
                    else (
                        "n/a (other weights)"
                        if v == "dense"
                        else (f"{chk['rel_err']:.1e}" + ("" if chk["ok"] else " FAIL"))
                        if chk
                        else ""
                    )
                )
                lines.append(
                    f"| {n:,} | {v} | {r['ms']:.3f} | {r['ms_p10']:.3f}-{r['ms_p90']:.3f} "
                    f"| {r['reps']} | {r['tokens_per_s'] / 1e6:.2f} | {r['tflops']:.1f} "
                    f"| {r.get('ratio_to_dense', float('nan')):.2f} | {err} |"
                )
        lines += ["", "</details>", ""]
    if data.get("breakdown"):
        lines += ["### Where `sparse_sort` spends its time (largest token count, ms)", ""]
        keys = None
        for cname, b in data["breakdown"].items():
            if not keys:
                keys = [k for k in b if k != "tokens"]
                lines += ["| config | tokens | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
            lines.append(f"| {cname} | {b['tokens']:,} | " + " | ".join(f"{b[k]:.3f}" for k in keys) + " |")
        lines.append("")
    if data.get("gemm_only"):
        lines += ["### The expert FFNs alone, on tokens already grouped by expert (ms)", ""]
        keys = ["loop_linear", "grouped_mm_no_bias", "grouped_mm_with_bias_gather"]
        lines += ["| config | tokens | dense FFN | " + " | ".join(keys) + " |", "|---|---:|---:|" + "---:|" * len(keys)]
        for cname, g in data["gemm_only"].items():
            dn = next(
                (
                    r["ms"]
                    for r in data["results"]
                    if r["config"] == cname and r["tokens"] == g["tokens"] and r["variant"] == "dense" and "ms" in r
                ),
                math.nan,
            )
            lines.append(
                f"| {cname} | {g['tokens']:,} | {dn:.3f} | "
                + " | ".join(f"{g[k]:.3f}" if k in g else "" for k in keys)
                + " |"
            )
        lines.append("")
    if data.get("fp32_check"):
        lines += [
            "### fp32 exactness vs `sparse_sort` (tf32 off)",
            "",
            "| config | tokens | variant | max abs diff | <= 1e-5 |",
            "|---|---:|---|---:|---|",
        ]
        for r in data["fp32_check"]:
            if "error" in r:
                lines.append(f"| {r['config']} | {r['tokens']} | {r['variant']} | error: {r['error'][:80]} | |")
            else:
                lines.append(
                    f"| {r['config']} | {r['tokens']} | {r['variant']} | {r['max_abs_diff']:.2e} "
                    f"| {'yes' if r['ok_1e-5'] else 'NO'} |"
                )
        lines.append("")
    if data.get("compile"):
        lines += ["Compile (first call) seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in data["compile"].items()), ""]
    if data.get("skipped"):
        lines += ["Skipped: " + "; ".join(data["skipped"]), ""]
    lines += [f"Command: `{data['command']}` (wall {data.get('wall_s', 0):.0f} s)", ""]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = list(dict.fromkeys(r["config"] for r in data["results"]))
    fig, axes = plt.subplots(2, len(cfgs), figsize=(5.2 * len(cfgs), 8.5), squeeze=False)
    where = data["env"].get("gpu") or data["env"].get("cpu", "cpu")
    for j, cname in enumerate(cfgs):
        c = data["configs"][cname]
        rows = [r for r in data["results"] if r["config"] == cname and "ms" in r]
        for v in VARIANTS:
            rs = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["tokens"])
            if not rs:
                continue
            style = dict(marker="o", lw=1.6, ls="--" if v == "dense" else "-")
            if v == "dense":
                style.update(color="black")
            axes[0, j].plot([r["tokens"] for r in rs], [r["tflops"] for r in rs], label=v, **style)
            axes[1, j].plot(
                [r["tokens"] for r in rs], [r.get("ratio_to_dense", math.nan) for r in rs], label=v, **style
            )
        axes[0, j].set_title(
            f"{cname}: d {c['d_model']}, d_ff {c['d_ff']}, {c['n_experts']} experts, top-{c['top_k']}", fontsize=10
        )
        axes[0, j].set_ylabel("achieved TFLOP/s (expert FFNs + router)")
        axes[1, j].set_ylabel("ratio to dense FFN (same active params)")
        axes[1, j].axhline(0.7, color="red", lw=0.8, ls=":", label="target 0.7")
        for i in range(2):
            axes[i, j].set_xscale("log", base=2)
            axes[i, j].set_xlabel("tokens per call")
            axes[i, j].grid(True, which="both", alpha=0.3)
        axes[1, j].set_ylim(bottom=0)
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(f"MoE feed-forward layer, bf16, {where}, torch {data['env']['torch']}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, a few seconds")
    ap.add_argument("--out", default=os.environ.get("OUT", "build/bench"), help="output folder")
    ap.add_argument("--tokens", default="", help="comma-separated token counts")
    ap.add_argument("--configs", default="", help="comma-separated config names (default: all)")
    ap.add_argument("--variants", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop starting new work after this")
    ap.add_argument("--rel-tol", type=float, default=1e-2, help="bf16 check: relative L2 error")
    ap.add_argument("--plot-from", default="", help="only render Markdown + PNG from this JSON")
    ap.add_argument("--img", default="", help="PNG path (default: OUT/moe_layer_gpu.png)")
    args = ap.parse_args(argv)

    out = Path(args.out)
    if args.plot_from:
        data = json.loads(Path(args.plot_from).read_text())
    else:
        data = run(args)
        out.mkdir(parents=True, exist_ok=True)
        (out / "moe_layer_gpu.json").write_text(json.dumps(data, indent=1) + "\n")
    md = render_markdown(data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe_layer_gpu.md").write_text(md)
    print(md)
    img = Path(args.img) if args.img else out / "moe_layer_gpu.png"
    try:
        plot(data, img)
        print(f"# plot: {img}")
    except ImportError as exc:
        print(f"# no plot ({exc}); render it elsewhere with --plot-from {out / 'moe_layer_gpu.json'}")
    bad = [r for r in data["results"] if "check" in r and not r["check"]["ok"]]
    bad += [r for r in data["fp32_check"] if r.get("variant") != "grouped_mm" and not r.get("ok_1e-5", False)]
    if bad:
        print(f"# CHECK FAILURES: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
