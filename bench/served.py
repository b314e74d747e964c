"""`moe bench`: served latency and throughput of v1 and v2 against in-process eager PyTorch.

One run measures, on one machine and against one running server:
  * the in-process baselines (bench/baseline.py): the eager model with exactly the batches the
    clients send, and the eager model on batches of `batched_baseline` texts, the most one Python
    process gets from this model here; each runs before and after the served levels and the
    faster run is the one the ratios use (the stricter comparison for the server);
  * for each batch size, concurrency level and workflow (the workflows taking turns at each
    level), a closed loop (bench/load.py), every answer compared with the eager label, from a
    lean HTTP client (bench/raw_http.py) unless asked otherwise, and the load generator's own CPU;
  * what the caller knows of the server: the time from launch to all models ready, its memory
    (sampled every second while the levels run; the peak is kept);
  * where v1's time goes: Triton's per-model statistics and the BLS's stage counters.

Results: OUT/bench.json (everything), OUT/bench.md and OUT/bench_*.png (bench/report.py).
"""

from __future__ import annotations

import asyncio
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from moe.data import load_split
from moe.errors import MoEError

from . import report, triton_stats, wrk
from .baseline import EagerModel
from .clients import check_load_client, load_client, load_client_kind
from .load import batches, closed_loop, closed_loop_level
from .options import DEFAULT_OUT, BenchOptions, Endpoint
from .raw_http import model_name

__all__ = ["DEFAULT_OUT", "BenchOptions", "Endpoint", "load_client_kind", "run_bench"]

# (key, what, limit, "min" | "max") per target set: `--targets cpu` for the 2-core CPU machine,
# `--targets gpu` for one or two GPUs.
TARGETS = {
    "cpu": (
        ("v1_vs_v2_p50_c1", "v1 p50 / v2 p50, concurrency 1, single texts", 1.5, "max"),
        ("v2_vs_batched_eager_c64", "v2 throughput at concurrency 64 / in-process batched eager", 1.0, "min"),
        ("v1_vs_v2_throughput_c16", "v1 / v2 throughput, concurrency 16", 0.8, "min"),
        ("v1_vs_v2_throughput_c64", "v1 / v2 throughput, concurrency 64", 0.8, "min"),
        ("server_rss_gb", "server tree, peak RSS (GB)", 1.5, "max"),
        ("python_stubs", "Python backend stubs", 3, "max"),
        ("cold_start_s", "cold start: launch to all models ready (s)", 10.0, "max"),
        ("errors", "errors, all levels", 0, "max"),
        ("disagreements", "answers unlike eager, all levels", 0, "max"),
    ),
    # One H200 with 16 host cores. The floor guards against a regression of the default export
    # (it served 4,704 texts/s before its host stages were sized); the others are the goals.
    "gpu": (
        ("v2_b32_texts_per_s", "floor: v2 texts/s, batches of 32 (best level)", 40_000, "min"),
        ("v2_b32_texts_per_s", "v2 texts/s, batches of 32 (best level)", 100_000, "min"),
        ("v2_b1_texts_per_s_p99_50ms", "v2 texts/s, single texts, best level with p99 <= 50 ms", 20_000, "min"),
        ("v1_b32_texts_per_s", "v1 texts/s, batches of 32 (best level)", 25_000, "min"),
        ("v1_vs_v2_p50_c1", "v1 p50 / v2 p50, concurrency 1, single texts", 2.5, "max"),
        ("v2_vs_eager_throughput_b32", "v2 throughput / in-process eager, batches of 32 (best levels)", 0.8, "min"),
        ("errors", "errors, all levels", 0, "max"),
        ("disagreements", "answers unlike eager, all levels", 0, "max"),
    ),
}


def machine_info() -> dict:
    import torch

    model = "unknown"
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    info = dict(
        cpu_model=model,
        cores=os.cpu_count(),
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
    )
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


class MemorySampler:
    """Samples the server's memory every `interval` seconds in a thread; keeps the peak RSS.

    Given `rss_mb` too, each tick reads only the RSS, and the whole picture (with PSS, whose
    page-map reads cost the bench 30-41 ms a sample and the server measurable throughput) only
    when the RSS passes its peak."""

    def __init__(self, memory: Callable[[], dict], interval: float = 1.0, rss_mb: Callable[[], float] | None = None):
        self.memory, self.rss_mb, self.interval, self.peak = memory, rss_mb, interval, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def sample(self) -> None:
        try:
            if self.peak is not None and self.rss_mb is not None and self.rss_mb() <= self.peak["rss_mb"]:
                return
            now = self.memory()
        except OSError:
            return
        if self.peak is None or now["rss_mb"] > self.peak["rss_mb"]:
            self.peak = now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def _try(fn, *args):
    try:
        return fn(*args)
    except (OSError, ValueError):
        return None


def run_baselines(eager: EagerModel, requests: list[list[str]], batched: list[list[str]] | None, bar) -> dict:
    out = {"per_request": eager.run(requests, progress=bar.update)}
    if batched:
        out["batched"] = eager.run(batched, progress=bar.update)
    return out


def better(a: dict, b: dict) -> dict:
    return b if b["throughput"] > a["throughput"] else a


# v1's pieces in the order a request meets them (the order of the breakdown's rows).
PIPELINE = ("tokenizer", "embedding", "attention", "gating", "experts", "classifier", "orchestration", "postprocessing")


def stage_models(stages: list[str], models: list[str]) -> dict[str, list[str]]:
    """v1's stages (the BLS's counter labels; "a+b" calls the models a and b) -> the Triton
    models behind each, in pipeline order, tokenizer first and post-processing last."""
    experts = sorted((m for m in models if m.startswith("expert_")), key=lambda m: int(m.split("_")[1]))

    def position(stage):
        return min((PIPELINE.index(p) for p in stage.split("+") if p in PIPELINE), default=len(PIPELINE))

    table = {}
    for s in sorted(["tokenizer", *stages, "postprocessing"], key=position):
        table[s] = experts if s == "experts" else [] if s == "orchestration" else s.split("+")
    return table


def level_requests(opts: BenchOptions, concurrency: int) -> int:
    """Timed requests of a level: as asked, or 300 and at least 20 per worker, so that each level
    runs long enough for a rate that repeats (on this 2-core machine, 300 requests at concurrency
    64 took under a second of v2). wrk runs for a time instead, cycling through this many
    different requests: 300 unless asked."""
    if opts.requests is not None:
        return opts.requests
    return 300 if load_client_kind(opts) == "wrk" else max(300, 20 * concurrency)


def run_bench(opts: BenchOptions, endpoint: Endpoint, log=print, command: str | None = None) -> dict:
    from tqdm.auto import tqdm

    if not set(opts.workflows) <= {"v1", "v2"}:
        raise MoEError(f"workflows are v1 and v2, not {', '.join(opts.workflows)}")
    if opts.targets not in TARGETS:
        raise MoEError(f"--targets must be one of {', '.join(TARGETS)}")
    check_load_client(opts)
    if (
        (opts.requests is not None and opts.requests < 1)
        or min(opts.batch_sizes, default=0) < 1
        or min(opts.concurrency, default=0) < 1
    ):
        raise MoEError("--requests, every --batch-size and every --concurrency must be >= 1")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = dict(
        command=command,
        machine=machine_info(),
        load_average_start=load_average(),
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        server=dict(url=endpoint.url, cold_start_s=endpoint.cold_start_s, **endpoint.facts),
        load_client=load_client_kind(opts),
    )
    result["server"]["triton_version"] = (_try(triton_stats.http_json, f"http://{endpoint.http_url}/v2") or {}).get(
        "version"
    )
    if endpoint.memory is not None:
        result["server"]["memory_ready"] = endpoint.memory()

    texts = load_split(str(opts.data), "test").texts
    if not texts:
        raise MoEError(f"no test texts in {opts.data}")
    eager = EagerModel(opts.checkpoint, opts.device)
    most = max(level_requests(opts, c) for c in opts.concurrency)
    batched = (
        batches(
            texts,
            opts.batched_baseline,
            # As many texts as the largest level sends, and at least a thousand: enough seconds
            # of work for a stable rate.
            max(most * max(opts.batch_sizes), 1024) // max(opts.batched_baseline, 1),
        )
        if opts.batched_baseline
        else None
    )
    plans = {b: batches(texts, b, most) for b in opts.batch_sizes}
    served = len(opts.batch_sizes) * len(opts.workflows) * sum(level_requests(opts, c) for c in opts.concurrency)
    total = 2 * sum(len(p) for p in plans.values()) + 2 * len(batched or []) + served
    bar = tqdm(total=total, desc="bench", unit="req", disable=not opts.progress)

    baselines = {}
    for b, plan in plans.items():
        bar.set_postfix_str(f"in-process eager, batch {b}")
        baselines[b] = run_baselines(eager, plan, batched if b == opts.batch_sizes[0] else None, bar)

    levels = []
    sampler = (
        MemorySampler(endpoint.memory, rss_mb=endpoint.rss_mb).__enter__() if endpoint.memory is not None else None
    )

    by_wrk, ceilings = load_client_kind(opts) == "wrk", {}

    def drain() -> float | None:
        """wrk leaves its last requests in the server: wait them out, so that a level neither
        starts behind them nor counts them in the next level's statistics."""
        return _try(triton_stats.wait_until_drained, endpoint.metrics_url) if endpoint.metrics_url else None

    async def serve_levels():
        async with load_client(opts, endpoint) as client:
            for b, plan in plans.items():
                want = baselines[b]["per_request"].answers
                # Workflows take turns at each concurrency, so that the two levels a ratio compares
                # run minutes apart at most, not a whole workflow's levels apart: this machine's
                # speed drifts.
                for c in opts.concurrency:
                    for workflow in opts.workflows:
                        bar.set_postfix_str(f"{workflow}, batch {b}, C={c}")
                        n = level_requests(opts, c)
                        if by_wrk:
                            args = (endpoint.url, model_name(workflow), plan[:n], want[:n], eager.labels, c)
                            await asyncio.to_thread(wrk.warm_up, *args)
                            await asyncio.to_thread(drain)
                        else:
                            n_warm = opts.warmup if opts.warmup is not None else max(16, 2 * c)
                            untimed = [(workflow, t) for t in batches(texts, b, max(n_warm, c), start=most)]
                            await closed_loop(client, untimed[:n_warm], c)
                        s0, m0 = (
                            _try(triton_stats.model_stats, endpoint.http_url),
                            _try(triton_stats.prometheus, endpoint.metrics_url) if endpoint.metrics_url else None,
                        )
                        load0 = load_average()
                        if by_wrk:
                            run = await asyncio.to_thread(wrk.bench_level, *args, opts.level_seconds, ceilings)
                            bar.update(n)
                        else:
                            run = await closed_loop_level(client, workflow, plan[:n], want, untimed, c, bar.update)
                        drained_s = drain() if by_wrk else None
                        s1 = _try(triton_stats.model_stats, endpoint.http_url)
                        m1 = None
                        if workflow == "v1" and endpoint.metrics_url and m0 is not None and s0 and s1:
                            bls_batches = s1["moe_bls"]["execution_count"] - s0["moe_bls"]["execution_count"]
                            m1 = _try(triton_stats.bls_counters_settled, endpoint.metrics_url, m0, bls_batches)
                        level = dict(workflow=workflow, batch_size=b, concurrency=c, **run, load_average=load0)
                        if drained_s is not None:
                            level["drained_after_s"] = round(drained_s, 3)
                        if s0 is not None and s1 is not None:
                            md = triton_stats.delta(m1, m0) if m1 is not None else None
                            level["breakdown"] = triton_stats.breakdown(
                                # The server's counts include the requests that kept the workers busy.
                                triton_stats.delta(s1, s0),
                                md,
                                run["requests"] + run["untimed"],
                            )
                            if workflow == "v1" and level["breakdown"].get("bls"):
                                stages = list(level["breakdown"]["bls"]["stage_ms_per_request"])
                                level["stages"] = triton_stats.stage_table(
                                    level["breakdown"], stage_models(stages, list(s1))
                                )
                        levels.append(level)

    try:
        asyncio.run(serve_levels())
    finally:
        if sampler is not None:
            sampler.__exit__(None, None, None)
            result["server"]["memory_peak"] = sampler.peak
    for b, plan in plans.items():
        bar.set_postfix_str(f"in-process eager again, batch {b}")
        again = run_baselines(eager, plan, batched if b == opts.batch_sizes[0] else None, bar)
        for kind in again:
            first, second = baselines[b][kind].summary(), again[kind].summary()
            baselines[b][kind] = dict(better(first, second), runs=[first, second])
    bar.close()
    result["baselines"] = {str(b): v for b, v in baselines.items()}
    result["baselines"]["batch_sizes"] = {"per_request": opts.batch_sizes, "batched": opts.batched_baseline}
    result["levels"] = levels
    result["load_average_end"] = load_average()
    result["ratios"] = ratios(result, opts)
    result["targets"] = targets(result["ratios"], opts.targets)
    report.write(result, out, opts.plots)
    return result


def level_of(result: dict, workflow: str, c: int, b: int = 1) -> dict | None:
    return next(
        (
            lv
            for lv in result.get("levels", [])
            if (lv["workflow"], lv["concurrency"], lv["batch_size"]) == (workflow, c, b)
        ),
        None,
    )


def best_level(result: dict, workflow: str, b: int) -> dict | None:
    candidates = [lv for lv in result.get("levels", []) if lv["workflow"] == workflow and lv["batch_size"] == b]
    return max(candidates, key=lambda lv: lv["throughput"], default=None)


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def ratios(result: dict, opts: BenchOptions) -> dict:
    def throughput(level):
        return level["throughput"] if level else None

    def p50(level):
        return level["p50_ms"] if level else None

    base = result["baselines"]
    first = str(opts.batch_sizes[0])
    batched = base[first].get("batched")
    out = dict(
        v1_vs_v2_p50_c1=ratio(p50(level_of(result, "v1", 1)), p50(level_of(result, "v2", 1))),
        v2_vs_batched_eager_c64=ratio(
            throughput(level_of(result, "v2", 64)), batched["throughput"] if batched else None
        ),
        v1_vs_v2_throughput_c16=ratio(throughput(level_of(result, "v1", 16)), throughput(level_of(result, "v2", 16))),
        v1_vs_v2_throughput_c64=ratio(throughput(level_of(result, "v1", 64)), throughput(level_of(result, "v2", 64))),
        errors=sum(lv["errors"] for lv in result["levels"]),
        disagreements=sum(lv["disagreements"] for lv in result["levels"]),
    )
    for workflow in ("v1", "v2"):
        out[f"{workflow}_b32_texts_per_s"] = throughput(best_level(result, workflow, 32))
    out["v2_b1_texts_per_s_p99_50ms"] = max(
        (
            lv["throughput"]
            for lv in result["levels"]
            if lv["workflow"] == "v2" and lv["batch_size"] == 1 and lv["p99_ms"] is not None and lv["p99_ms"] <= 50
        ),
        default=None,
    )
    if "32" in base:
        out["v2_vs_eager_throughput_b32"] = ratio(
            throughput(best_level(result, "v2", 32)), base["32"]["per_request"]["throughput"]
        )
        out["v1_vs_v2_throughput_b32"] = ratio(
            throughput(best_level(result, "v1", 32)), throughput(best_level(result, "v2", 32))
        )
    server = result["server"]
    mem = server.get("memory_peak") or server.get("memory_ready")
    out["cold_start_s"] = server.get("cold_start_s")
    out["server_rss_gb"] = round(mem["rss_mb"] / 1024, 3) if mem else None
    out["server_pss_gb"] = round(mem["pss_mb"] / 1024, 3) if mem else None
    out["python_stubs"] = mem["python_stubs"] if mem else None
    return out


def targets(values: dict, profile: str) -> list[dict]:
    rows = []
    for key, what, limit, kind in TARGETS[profile]:
        value = values.get(key)
        met = None if value is None else (value >= limit if kind == "min" else value <= limit)
        rows.append(
            dict(key=key, what=what, target=f"{'>=' if kind == 'min' else '<='} {limit}", measured=value, met=met)
        )
    return rows
