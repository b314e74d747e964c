"""One run of the layer benchmark: every variant on every configuration and token count, each
output checked against sparse_sort before it is timed, within a time budget."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from moe.model import MoEFeedForward

from .measure import Timer, compare, env_info, fp32_checks, gemm_only, matmul_ceiling, stage_breakdown
from .variants import (
    DenseFFN,
    bench_configs,
    combine_copy,
    combine_gather_bmm,
    combine_index_add,
    flops_per_call,
    grouped_core,
    grouped_mm,
    mask_loop,
    sparse_sort,
    sparse_sort_with,
    stack_weights,
)


def log(line: str) -> None:
    print(line, flush=True)


class LayerBench:
    def __init__(self, args):
        self.args, smoke = args, args.smoke
        self.device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
        self.timer = Timer(self.device)
        self.started = time.perf_counter()
        self.deadline = self.started + args.budget_s
        configs = bench_configs(smoke)
        if args.configs:
            configs = {k: v for k, v in configs.items() if k in args.configs.split(",")}
        self.configs = configs
        default_tokens = [128, 512] if smoke else [1024, 4096, 16384, 65536, 262144]
        self.tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else default_tokens
        self.do_compile = self.device.type == "cuda" and not args.no_compile
        self.warmup, self.max_reps, self.target_s = (2, 5, 0.05) if smoke else (3, 40, 0.25)
        self.models: dict = {}
        self.data = {
            "env": env_info(self.device),
            "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
            "smoke": smoke,
            "dtype": "bfloat16",
            "configs": {
                k: {"d_model": c.d_model, "d_ff": c.d_ff, "n_experts": c.n_experts, "top_k": c.top_k}
                for k, c in configs.items()
            },
            "tokens": self.tokens,
            "results": [],
            "fp32_check": [],
            "breakdown": {},
            "gemm_only": {},
            "compile": {},
            "skipped": [],
        }
        log(f"# env: {json.dumps(self.data['env'])}")

    def wanted(self, name: str, always=()) -> bool:
        return not self.args.variants or name in self.args.variants.split(",") + list(always)

    def check_fp32(self) -> None:
        for cname, cfg in self.configs.items():
            rows = [dict(r, config=cname) for r in fp32_checks(cfg, self.device, 256 if self.args.smoke else 8192)]
            self.data["fp32_check"] += rows
            for r in rows:
                log(f"# fp32 check {cname}: {r}")

    def build_models(self) -> None:
        for cname, cfg in self.configs.items():
            torch.manual_seed(0)
            moe = MoEFeedForward(cfg).to(device=self.device, dtype=torch.bfloat16).eval()
            dense = DenseFFN(cfg).to(device=self.device, dtype=torch.bfloat16).eval()
            self.models[cname] = (cfg, moe, dense, stack_weights(moe))

    def variant_fns(self, cname: str) -> dict[str, Callable[[Tensor], Tensor]]:
        cfg, moe, dense, stacked = self.models[cname]
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

    def inputs(self, cname: str, n: int):
        """Random tokens [n, D] (seeded by n) and sparse_sort's output on them."""
        cfg, moe = self.models[cname][:2]
        torch.manual_seed(n)
        h = torch.randn(n, cfg.d_model, device=self.device, dtype=torch.bfloat16)
        with torch.no_grad():
            return h, sparse_sort(moe, h)

    def measure(self, cname: str, n: int, name: str, fn, h: Tensor, ref: Tensor | None) -> None:
        row = {"config": cname, "tokens": n, "variant": name}
        self.data["results"].append(row)
        try:
            with torch.no_grad():
                out = fn(h)
                if ref is not None and name != "dense":
                    row["check"] = compare(out, ref, self.args.rel_tol)
                del out
                t = self.timer.time(lambda: fn(h), self.warmup, self.max_reps, self.target_s)
        except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, the others run
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            log(f"  {cname:9s} {n:7d} {name:22s} ERROR {row['error']}")
            return
        row.update(t)
        row["tokens_per_s"] = n / (t["ms"] * 1e-3)
        row["tflops"] = flops_per_call(self.models[cname][0], n) / (t["ms"] * 1e-3) / 1e12
        chk = row.get("check")
        log(
            f"  {cname:9s} {n:7d} {name:22s} {t['ms']:9.3f} ms  {row['tflops']:7.1f} TFLOP/s"
            f"  reps={t['reps']}" + (f"  rel_err={chk['rel_err']:.1e} ok={chk['ok']}" if chk else "")
        )

    def eager_variants(self, cname: str) -> None:
        """Every eager variant at every token count."""
        has_grouped_mm = hasattr(torch, "_grouped_mm")
        for n in self.tokens:
            if time.perf_counter() > self.deadline - (90 if self.do_compile else 0):
                self.data["skipped"].append(f"{cname} {n}: out of time budget")
                log(f"# skip {cname} {n}: out of time")
                continue
            h, ref = self.inputs(cname, n)
            for name, fn in self.variant_fns(cname).items():
                if not self.wanted(name, always=("sparse_sort", "dense")):
                    continue
                if name.startswith("grouped") and not has_grouped_mm:
                    if name != "grouped_mm_prestacked":
                        self.data["skipped"].append(f"{cname} {n} {name}: torch has no _grouped_mm")
                    continue
                self.measure(cname, n, name, fn, h, ref)
            del h, ref

    def side_measurements(self, cname: str) -> None:
        """On a GPU: where sparse_sort's time goes, and the expert GEMMs alone."""
        if not self.timer.cuda:
            return
        cfg, moe, _, stacked = self.models[cname]
        n = max(self.tokens)
        h = torch.randn(n, cfg.d_model, device=self.device, dtype=torch.bfloat16)
        with torch.no_grad():
            self.data["breakdown"][cname] = dict(stage_breakdown(moe, h, self.timer), tokens=n)
        log(f"# breakdown {cname} @ {n}: {self.data['breakdown'][cname]}")
        self.data["gemm_only"][cname] = gemm_only(moe, stacked, h, self.timer)
        log(f"# gemm only {cname} @ {n}: {self.data['gemm_only'][cname]}")
        del h
        torch.cuda.empty_cache()

    def compiled_variants(self, cname: str) -> None:
        """torch.compile of grouped_mm and of the model's layer, time permitting (the first
        call's compile time is reported apart)."""
        _, moe, _, stacked = self.models[cname]
        compiled = {
            "compiled_grouped_mm": torch.compile(
                lambda h, _m=moe, _s=stacked: grouped_core(_m.router, _m.n_experts, h, *_s), dynamic=True
            ),
            "compiled_sparse_sort": torch.compile(moe, dynamic=True),
        }
        for name, cfn in compiled.items():
            if not self.wanted(name) or (name == "compiled_grouped_mm" and not hasattr(torch, "_grouped_mm")):
                continue
            fn = (lambda h, _f=cfn: _f(h)[0]) if name == "compiled_sparse_sort" else cfn
            for n in self.tokens:
                if time.perf_counter() > self.deadline:
                    self.data["skipped"].append(f"{cname} {n} {name}: out of time budget")
                    continue
                h, ref = self.inputs(cname, n)
                if not self.first_call(cname, n, name, fn, h):
                    break
                self.measure(cname, n, name, fn, h, ref)
                del h, ref

    def first_call(self, cname: str, n: int, name: str, fn, h: Tensor) -> bool:
        """Compiles `fn` on h; False (the failure recorded) if it does not compile."""
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                fn(h)
            self.timer.sync()
        except Exception as exc:  # noqa: BLE001 - reported in the results, the run goes on
            error = f"{type(exc).__name__}: {exc}"[:300]
            self.data["results"].append({"config": cname, "tokens": n, "variant": name, "error": error})
            log(f"  {cname} {n} {name} compile ERROR {exc!s:.300}")
            return False
        self.data["compile"][f"{cname}/{name}/{n}"] = time.perf_counter() - t0
        return True

    def ratios_to_dense(self) -> None:
        results = self.data["results"]
        dense_ms = {(r["config"], r["tokens"]): r["ms"] for r in results if r["variant"] == "dense" and "ms" in r}
        for r in results:
            key = (r["config"], r["tokens"])
            if "ms" in r and key in dense_ms:
                r["ratio_to_dense"] = dense_ms[key] / r["ms"]

    def run(self) -> dict:
        if self.device.type == "cuda":
            self.data["matmul_ceiling_tflops"] = matmul_ceiling(self.device, self.timer, 8192)
            log(f"# bf16 8192^3 matmul: {self.data['matmul_ceiling_tflops']:.0f} TFLOP/s")
        self.check_fp32()
        self.build_models()
        for cname in self.configs:
            self.eager_variants(cname)
            self.side_measurements(cname)
        if self.do_compile:
            for cname in self.configs:
                self.compiled_variants(cname)
            try:
                torch._dynamo.reset()
            except Exception:  # noqa: BLE001 - resetting dynamo's caches is best effort
                pass
        self.ratios_to_dense()
        self.data["wall_s"] = time.perf_counter() - self.started
        return self.data
