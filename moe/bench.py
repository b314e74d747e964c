"""`moe bench`: served latency and throughput of v1 and v2 against the in-process eager model.

One run measures, on one machine:
  * the in-process baseline: the eager PyTorch model of the checkpoint (tokenization included,
    torch.no_grad, the same texts in the same batches), one batch after the other;
  * for each workflow and concurrency level, a closed loop through moe_client.AsyncMoEClient:
    C workers, each sending its next request when its previous answer arrived;
  * when the bench starts the server itself: the time from launch to all models ready (cold
    start) and the resident memory of tritonserver and all its stub processes;
  * where the time of v1 goes: Triton's own per-model statistics (/v2/models/stats: compute and
    queue time deltas over each level) and the BLS's Prometheus counters
    (moe_bls_stage_duration_us, moe_bls_batches_total, moe_expert_tokens_total).

Results go to OUT/bench.json, OUT/bench.md and OUT/bench_*.png.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import MoEError

SOURCE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = SOURCE_ROOT / "build" / "bench"
DEFAULT_DATA = SOURCE_ROOT.parent / "shared" / "data" / "ag_news"

# Models of the repository whose Triton statistics make up v1's (and v2's) breakdown.
V1_PIECES = ("embedding", "attention", "gating", "classifier")
STAGES = ("embedding", "attention", "gating", "experts", "classifier", "orchestration")

# The targets of issue 5: (key, description, limit, "min" | "max").
TARGETS = (
    ("v2_vs_eager_throughput_c16", "v2 throughput / in-process eager, concurrency 16", 0.9, "min"),
    ("v1_vs_v2_p50_c1", "v1 p50 latency / v2 p50 latency, concurrency 1", 1.5, "max"),
    ("v1_vs_v2_throughput_c16", "v1 throughput / v2 throughput, concurrency 16", 0.7, "min"),
    ("cold_start_s", "cold start: server launch to all models ready (s)", 20.0, "max"),
    ("server_rss_gb", "server memory: RSS of tritonserver + all stubs (GB)", 4.0, "max"),
)


@dataclass
class BenchOptions:
    url: str | None = None              # a running server (host:port); None: start one
    protocol: str = "http"
    workflows: list[str] = field(default_factory=lambda: ["v1", "v2"])
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    requests: int = 300                 # timed requests per workflow and concurrency level
    warmup: int | None = None           # untimed requests before each level (None: max(16, 2C))
    batch_size: int = 1                 # texts per request (and per baseline batch)
    checkpoint: Path | None = None      # default: the bundled checkpoint
    data: Path = DEFAULT_DATA           # AG News folder (test.csv) or "hub"
    out: Path = DEFAULT_OUT
    repository: Path | None = None      # serve this exported repository instead of exporting
    metrics_url: str | None = None      # with --url: default http://HOST:8002/metrics
    stats_url: str | None = None        # with --url --protocol grpc: HTTP host:port for stats
    timeout_s: float = 60.0
    plots: bool = True
    progress: bool = True
    # Export options (only when the bench exports and starts its own server).
    threads: int = 1
    full_model_threads: int = 1
    queue_delay_us: int = 0
    max_batch_size: int = 64


# --------------------------------------------------------------------------------------------
# Machine, processes, memory


def machine_info() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    info = dict(cpu_model=model, cores=os.cpu_count(), platform=platform.platform(),
                python=platform.python_version(), torch=torch.__version__,
                torch_threads=torch.get_num_threads())
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0]
        info["memory_gb"] = round(int(mem.split()[1]) / 2 ** 20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(proc.name))
    return tree


def process_tree(root: int, extra: list[int] = ()) -> list[int]:
    tree, seen, todo = _children(), [], [root, *extra]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(tree.get(pid, []))
    return seen


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def server_memory(server) -> dict:
    """RSS (and PSS: shared pages split between their users) of tritonserver and every process
    below it, the Python backend stubs included, in MB."""
    stubs = server.stubs()
    pids = process_tree(server.process.pid, list(stubs.values()))
    by_model = {name: round(_status_kb(pid, "VmRSS") / 1024, 1) for name, pid in sorted(stubs.items())}
    return dict(processes=len(pids),
                rss_mb=round(sum(_status_kb(p, "VmRSS") for p in pids) / 1024, 1),
                pss_mb=round(sum(_pss_kb(p) for p in pids) / 1024, 1),
                tritonserver_rss_mb=round(_status_kb(server.process.pid, "VmRSS") / 1024, 1),
                stub_rss_mb=by_model)


# --------------------------------------------------------------------------------------------
# Texts and the in-process baseline


def load_texts(data, n: int) -> list[str]:
    from .data import load_split
    texts = load_split(str(data), "test").texts
    if not texts:
        raise MoEError(f"no test texts in {data}")
    return [texts[i % len(texts)] for i in range(n)]


def batches(texts: list[str], batch_size: int, n: int, start: int = 0) -> list[list[str]]:
    """n requests of batch_size consecutive texts, cycling through `texts`."""
    out = []
    for r in range(n):
        s = (start + r) * batch_size
        out.append([texts[(s + i) % len(texts)] for i in range(batch_size)])
    return out


def summarize(latencies_s: list[float], texts: int, seconds: float, errors: dict,
              requests: int) -> dict:
    lat = np.array(latencies_s) * 1e3 if latencies_s else np.full(1, np.nan)
    return dict(requests=requests, texts=texts, seconds=round(seconds, 3),
                throughput=round(texts / max(seconds, 1e-9), 2),
                p50_ms=round(float(np.percentile(lat, 50)), 3),
                p95_ms=round(float(np.percentile(lat, 95)), 3),
                p99_ms=round(float(np.percentile(lat, 99)), 3),
                mean_ms=round(float(lat.mean()), 3),
                errors=sum(errors.values()), error_messages=errors)


def run_baseline(checkpoint, requests: list[list[str]], warmup: int, progress: bool) -> tuple[dict, list]:
    """The eager model in this process, one batch after the other, tokenization included."""
    import torch
    from tqdm.auto import tqdm
    from .checkpoint import load_checkpoint
    from .tokenizer import encode, load_fast_tokenizer
    model, path = load_checkpoint(checkpoint)
    tokenizer = load_fast_tokenizer(path / "tokenizer.json")
    max_len = model.cfg.max_len
    labels = []

    def once(texts):
        ids, mask = encode(tokenizer, texts, max_len)
        return model(ids, mask).argmax(-1)

    latencies = []
    with torch.no_grad():
        for texts in requests[:warmup]:
            once(texts)
        started = time.perf_counter()
        for texts in tqdm(requests, desc="in-process eager", unit="req", disable=not progress, leave=False):
            t0 = time.perf_counter()
            pred = once(texts)
            latencies.append(time.perf_counter() - t0)
            labels.extend(model.cfg.labels[i] for i in pred.tolist())
        seconds = time.perf_counter() - started
    result = summarize(latencies, sum(map(len, requests)), seconds, {}, len(requests))
    result["torch_threads"] = torch.get_num_threads()
    return result, labels


# --------------------------------------------------------------------------------------------
# The closed loop


async def closed_loop(url: str, protocol: str, workflow: str, requests: list[list[str]],
                      concurrency: int, warmup: list[list[str]], timeout_s: float, bar=None,
                      after_warmup=None):
    """(latencies s, seconds, errors {message: count}, labels per request or None).
    `after_warmup()` runs between the untimed warm-up requests and the timed ones."""
    from moe_client import AsyncMoEClient
    latencies: list[float] = []
    errors: dict[str, int] = {}
    answers: list = [None] * len(requests)
    async with AsyncMoEClient(url, protocol=protocol, workflow=workflow, timeout=timeout_s,
                              retries=0) as client:
        async def drive(items, record):
            next_item = 0

            async def worker():
                nonlocal next_item
                while next_item < len(items):
                    i, next_item = next_item, next_item + 1
                    t0 = time.perf_counter()
                    try:
                        predictions = await client.classify(items[i], workflow=workflow)
                    except Exception as e:  # noqa: BLE001 - counted and reported
                        if record:
                            key = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                            errors[key] = errors.get(key, 0) + 1
                    else:
                        if record:
                            latencies.append(time.perf_counter() - t0)
                            answers[i] = [p.label for p in predictions]
                    if record and bar is not None:
                        bar.update(1)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await drive(warmup, record=False)
        if after_warmup is not None:
            await asyncio.get_running_loop().run_in_executor(None, after_warmup)
        started = time.perf_counter()
        await drive(requests, record=True)
        seconds = time.perf_counter() - started
    return latencies, seconds, errors, answers


# --------------------------------------------------------------------------------------------
# Triton statistics and Prometheus metrics


def _http_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def triton_stats(http_url: str) -> dict:
    """Model name -> cumulative ns and counts of Triton's inference statistics."""
    data = _http_json(f"http://{http_url}/v2/models/stats")
    out = {}
    for m in data.get("model_stats", []):
        s = m.get("inference_stats", {})
        row = {f"{k}_ns": int(s.get(k, {}).get("ns", 0)) for k in
               ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")}
        row.update(success_count=int(s.get("success", {}).get("count", 0)),
                   execution_count=int(m.get("execution_count", 0)),
                   inference_count=int(m.get("inference_count", 0)))
        name = m["name"]
        if name in out:      # several versions: add them up
            out[name] = {k: out[name][k] + v for k, v in row.items()}
        else:
            out[name] = row
    return out


_METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prometheus(metrics_url: str) -> dict:
    """(name, frozenset of labels) -> value, for the moe_* families."""
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line.startswith("moe_"):
            continue
        m = _METRIC.match(line)
        if m:
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def delta(after: dict, before: dict) -> dict:
    return {name: {k: v - before.get(name, {}).get(k, 0) for k, v in row.items()}
            for name, row in after.items()}


def breakdown(stats_delta: dict, metrics_delta: dict | None, n_requests: int) -> dict:
    """Per request (of the level) mean milliseconds of each model's compute and queue time, and
    the BLS's own stage wall times per batch."""
    models = {}
    for name, row in sorted(stats_delta.items()):
        if row["execution_count"] <= 0 and row["success_count"] <= 0:
            continue
        models[name] = dict(
            executions=row["execution_count"], inferences=row["inference_count"],
            compute_infer_ms_per_request=round(row["compute_infer_ns"] / 1e6 / max(n_requests, 1), 4),
            compute_io_ms_per_request=round((row["compute_input_ns"] + row["compute_output_ns"]) / 1e6
                                            / max(n_requests, 1), 4),
            queue_ms_per_request=round(row["queue_ns"] / 1e6 / max(n_requests, 1), 4),
            compute_infer_ms_per_execution=round(row["compute_infer_ns"] / 1e6 / max(row["execution_count"], 1), 4),
            mean_batch=round(row["inference_count"] / max(row["execution_count"], 1), 2))
    result = dict(models=models)
    if metrics_delta is not None:
        stage = {dict(k[1]).get("stage"): v for k, v in metrics_delta.items()
                 if k[0] == "moe_bls_stage_duration_us"}
        batches = sum(v for k, v in metrics_delta.items() if k[0] == "moe_bls_batches_total")
        tokens = {}
        for k, v in metrics_delta.items():
            if k[0] == "moe_expert_tokens_total":
                labels = dict(k[1])
                tokens[f"layer{labels.get('layer')}/expert{labels.get('expert')}"] = int(v)
        result["bls"] = dict(
            batches=int(batches),
            requests_per_batch=round(n_requests / batches, 2) if batches else None,
            stage_ms_per_batch={s: round(stage.get(s, 0.0) / 1e3 / batches, 4) if batches else None
                                for s in STAGES},
            stage_ms_per_request={s: round(stage.get(s, 0.0) / 1e3 / max(n_requests, 1), 4)
                                  for s in STAGES},
            expert_tokens=tokens)
    return result


def stage_table(bd: dict, n_experts_models: list[str]) -> list[dict]:
    """v1 stages side by side: the BLS's wall time (IPC, queueing, the call itself) and the
    pieces' own Triton compute time, per request."""
    models, bls = bd["models"], bd.get("bls")
    rows = []

    def compute(names):
        return sum(models.get(n, {}).get("compute_infer_ms_per_request", 0.0) for n in names)

    def queue(names):
        return sum(models.get(n, {}).get("queue_ms_per_request", 0.0) for n in names)

    groups = [("tokenizer", ["tokenizer"]), ("embedding", ["embedding"]),
              ("attention", ["attention"]), ("gating", ["gating"]),
              ("experts", n_experts_models), ("classifier", ["classifier"]),
              ("orchestration", []), ("postprocessing", ["postprocessing"])]
    for stage, names in groups:
        wall = bls["stage_ms_per_request"].get(stage) if bls and stage in STAGES else None
        rows.append(dict(stage=stage, bls_wall_ms=wall,
                         triton_compute_ms=round(compute(names), 4) if names else None,
                         triton_queue_ms=round(queue(names), 4) if names else None))
    if "moe_bls" in models:
        rows.append(dict(stage="moe_bls (whole execute)", bls_wall_ms=None,
                         triton_compute_ms=models["moe_bls"]["compute_infer_ms_per_request"],
                         triton_queue_ms=models["moe_bls"]["queue_ms_per_request"]))
    return rows


# --------------------------------------------------------------------------------------------
# The run


def start_local_server(opts: BenchOptions, log):
    """Export (unless a repository is given), start tritonserver on free ports; returns
    (server, cold start seconds, repository)."""
    from export.repository import ExportOptions, export_repository
    from .serve import ServerOptions, TritonServer, free_ports
    repository = opts.repository
    if repository is None:
        repository = Path(opts.out) / "repository"
        eo = ExportOptions(max_batch_size=opts.max_batch_size, queue_delay_us=opts.queue_delay_us,
                           threads=opts.threads, full_model_threads=opts.full_model_threads)
        log(f"exporting {opts.checkpoint or 'the bundled checkpoint'} to {repository} ({eo})")
        export_repository(opts.checkpoint, repository, eo, progress=False, log=lambda *_: None)
    ports = free_ports(3)
    server = TritonServer(ServerOptions(repository=Path(repository), http_port=ports[0],
                                        grpc_port=ports[1], metrics_port=ports[2]))
    log(f"starting tritonserver on {repository}")
    started = time.monotonic()
    server.start(timeout=300)
    return server, time.monotonic() - started, Path(repository)


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


class MemorySampler:
    """Samples the server's memory every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, server, interval: float = 1.0):
        import threading
        self.server, self.interval, self.peak = server, interval, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def sample(self) -> None:
        mem = server_memory(self.server)
        if self.peak is None or mem["rss_mb"] > self.peak["rss_mb"]:
            self.peak = mem

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.server.process.poll() is not None:
                return
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def run_bench(opts: BenchOptions, log=print, command: str | None = None) -> dict:
    from tqdm.auto import tqdm
    for w in opts.workflows:
        if w not in ("v1", "v2"):
            raise MoEError(f"unknown workflow {w!r}: v1 or v2")
    if opts.protocol not in ("http", "grpc"):
        raise MoEError(f"--protocol must be http or grpc, not {opts.protocol!r}")
    if opts.requests < 1 or opts.batch_size < 1 or not opts.concurrency or min(opts.concurrency) < 1:
        raise MoEError("--requests, --batch-size and every --concurrency must be >= 1")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = dict(command=command, machine=machine_info(), load_average_start=load_average(),
                        options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
                        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    server = None
    try:
        if opts.url is None:
            server, cold, repository = start_local_server(opts, log)
            log(f"all models ready {cold:.1f}s after launch")
            url = server.http_url if opts.protocol == "http" else server.grpc_url
            http_url, metrics_url = server.http_url, server.metrics_url
            result["server"] = dict(started_by_bench=True, repository=str(repository),
                                    cold_start_s=round(cold, 2), memory_ready=server_memory(server))
            manifest = repository / "manifest.json"
            if manifest.is_file():
                result["server"]["export_options"] = json.loads(manifest.read_text()).get("options")
        else:
            url = opts.url
            host = url.rsplit(":", 1)[0]
            http_url = opts.stats_url or (url if opts.protocol == "http" else f"{host}:8000")
            metrics_url = opts.metrics_url or f"http://{host}:8002/metrics"
            result["server"] = dict(started_by_bench=False, url=url, cold_start_s=None)
        try:
            result["server"]["triton_version"] = _http_json(f"http://{http_url}/v2").get("version")
        except OSError:
            result["server"]["triton_version"] = None

        n_texts = max(opts.requests, max(opts.concurrency) * 2, 64) * opts.batch_size
        texts = load_texts(opts.data, n_texts)
        timed = batches(texts, opts.batch_size, opts.requests)

        base, eager_labels = run_baseline(opts.checkpoint, timed, min(16, len(timed)), opts.progress)
        result["baseline"] = base
        result["baseline_runs"] = [dict(base)]
        log(f"in-process eager: {base['throughput']:.1f} texts/s, p50 {base['p50_ms']:.2f} ms "
            f"(batch {opts.batch_size}, {base['torch_threads']} torch threads)")

        expert_models = []
        levels = []
        sampler = MemorySampler(server).__enter__() if server is not None else None
        total = len(opts.workflows) * len(opts.concurrency) * opts.requests
        bar = tqdm(total=total, desc="bench", unit="req", disable=not opts.progress)
        for workflow in opts.workflows:
            for c in opts.concurrency:
                bar.set_postfix_str(f"{workflow} c={c}")
                n_warm = opts.warmup if opts.warmup is not None else max(16, 2 * c)
                warm = batches(texts, opts.batch_size, n_warm, start=opts.requests)
                snap = {}

                def snapshot():
                    snap.update(s0=_try(triton_stats, http_url), m0=_try(prometheus, metrics_url),
                                load=load_average())

                lat, seconds, errors, answers = asyncio.run(closed_loop(
                    url, opts.protocol, workflow, timed, c, warm, opts.timeout_s, bar, snapshot))
                s0, m0, load0 = snap["s0"], snap["m0"], snap["load"]
                s1 = _try(triton_stats, http_url)
                m1 = _try(prometheus, metrics_url)
                ok = [i for i, a in enumerate(answers) if a is not None]
                level = dict(workflow=workflow, concurrency=c,
                             **summarize(lat, sum(len(timed[i]) for i in ok), seconds, errors, len(timed)),
                             load_average=load0)
                got = [x for i in ok for x in answers[i]]
                want = [x for i in ok for x in eager_labels[i * opts.batch_size:(i + 1) * opts.batch_size]]
                level["agreement_with_eager"] = round(
                    sum(g == w for g, w in zip(got, want)) / len(want), 4) if want else None
                level["throughput_vs_eager"] = ratio(level["throughput"], base["throughput"])
                level["p50_vs_eager"] = ratio(level["p50_ms"], base["p50_ms"])
                if s0 is not None and s1 is not None:
                    md = {k: v - m0.get(k, 0.0) for k, v in m1.items()} if m0 is not None and m1 is not None else None
                    sd = delta(s1, s0)
                    level["breakdown"] = breakdown(sd, md if workflow == "v1" else None, len(timed))
                    expert_models = sorted((n for n in s1 if n.startswith("expert_")),
                                           key=lambda n: int(n.split("_")[1]))
                    if workflow == "v1":
                        level["stages"] = stage_table(level["breakdown"], expert_models)
                levels.append(level)
        bar.close()
        if sampler is not None:
            sampler.__exit__(None, None, None)
            result["server"]["memory_peak"] = sampler.peak
        # The baseline once more, after the served levels: the better of the two runs is the
        # one the ratios use (the stricter comparison for the server), both are kept.
        again, _ = run_baseline(opts.checkpoint, timed, min(16, len(timed)), opts.progress)
        result["baseline_runs"].append(dict(again))
        if again["throughput"] > base["throughput"]:
            result["baseline"] = base = again
        for level in levels:
            level["throughput_vs_eager"] = ratio(level["throughput"], base["throughput"])
            level["p50_vs_eager"] = ratio(level["p50_ms"], base["p50_ms"])
        result["levels"] = levels
        result["load_average_end"] = load_average()
        result["ratios"] = ratios(result)
        result["targets"] = targets(result)
    finally:
        if server is not None:
            server.stop()
            if "server" in result:
                result["server"]["restarts"] = list(server.restarts)
            server.cleanup()
    write_outputs(result, out, opts.plots)
    return result


def _try(fn, *args):
    try:
        return fn(*args)
    except (OSError, ValueError):
        return None


def level_of(result: dict, workflow: str, c: int) -> dict | None:
    for level in result.get("levels", []):
        if level["workflow"] == workflow and level["concurrency"] == c:
            return level
    return None


def ratios(result: dict) -> dict:
    v1c1, v2c1 = level_of(result, "v1", 1), level_of(result, "v2", 1)
    v1c16, v2c16 = level_of(result, "v1", 16), level_of(result, "v2", 16)
    base = result["baseline"]
    out = dict(
        v2_vs_eager_throughput_c16=ratio(v2c16["throughput"], base["throughput"]) if v2c16 else None,
        v1_vs_v2_p50_c1=ratio(v1c1["p50_ms"], v2c1["p50_ms"]) if v1c1 and v2c1 else None,
        v1_vs_v2_throughput_c16=ratio(v1c16["throughput"], v2c16["throughput"]) if v1c16 and v2c16 else None)
    server = result.get("server", {})
    out["cold_start_s"] = server.get("cold_start_s")
    mem = server.get("memory_peak") or server.get("memory_ready")
    out["server_rss_gb"] = round(mem["rss_mb"] / 1024, 3) if mem else None
    out["server_pss_gb"] = round(mem["pss_mb"] / 1024, 3) if mem else None
    return out


def targets(result: dict) -> list[dict]:
    rows = []
    for key, what, limit, kind in TARGETS:
        value = result["ratios"].get(key)
        met = None if value is None else (value >= limit if kind == "min" else value <= limit)
        rows.append(dict(key=key, what=what, target=f"{'>=' if kind == 'min' else '<='} {limit}",
                         measured=value, met=met))
    return rows


# --------------------------------------------------------------------------------------------
# Outputs


def _fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(result: dict) -> str:
    m, base = result["machine"], result["baseline"]
    opts = result["options"]
    lines = [f"Machine: {m['cpu_model']}, {m['cores']} cores, torch {m['torch']}; "
             f"Triton {result['server'].get('triton_version')}; protocol {opts['protocol']}, "
             f"batch size {opts['batch_size']}, {opts['requests']} timed requests per level; "
             f"load average at start {result['load_average_start']}, at end {result.get('load_average_end')}.",
             ""]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    lines += ["| workflow | concurrency | texts/s | p50 ms | p95 ms | p99 ms | errors | "
              "throughput / eager | p50 / eager | agrees with eager |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| in-process eager | 1 | {base['throughput']:.1f} | {base['p50_ms']:.2f} | "
              f"{base['p95_ms']:.2f} | {base['p99_ms']:.2f} | 0 | 1.00 | 1.00 | 1.0000 |"]
    for lv in result["levels"]:
        lines.append(f"| {lv['workflow']} | {lv['concurrency']} | {lv['throughput']:.1f} | "
                     f"{lv['p50_ms']:.2f} | {lv['p95_ms']:.2f} | {lv['p99_ms']:.2f} | {lv['errors']} | "
                     f"{_fmt(lv['throughput_vs_eager'])} | {_fmt(lv['p50_vs_eager'])} | "
                     f"{_fmt(lv['agreement_with_eager'], 4)} |")
    lines += ["", "| target | required | measured | met |", "|---|---|---:|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['what']} | {t['target']} | {_fmt(t['measured'], 3)} | "
                     f"{'yes' if t['met'] else ('–' if t['met'] is None else '**no**')} |")
    server = result["server"]
    mem = server.get("memory_peak") or server.get("memory_ready")
    if mem:
        lines += ["", f"Server memory (peak over the run): RSS {mem['rss_mb']:.0f} MB summed over "
                      f"{mem['processes']} processes (tritonserver {mem['tritonserver_rss_mb']:.0f} MB); "
                      f"PSS (shared pages counted once) {mem['pss_mb']:.0f} MB."]
    for lv in result["levels"]:
        if lv["workflow"] != "v1" or "stages" not in lv:
            continue
        bls = lv["breakdown"].get("bls") or {}
        lines += ["", f"v1 breakdown at concurrency {lv['concurrency']} "
                      f"(ms per request; {bls.get('batches', '–')} BLS batches, "
                      f"{_fmt(bls.get('requests_per_batch'))} requests per batch; "
                      f"client p50 {lv['p50_ms']:.2f} ms, mean {lv['mean_ms']:.2f} ms):", "",
                  "| stage | BLS wall time | Triton compute_infer | Triton queue |",
                  "|---|---:|---:|---:|"]
        for row in lv["stages"]:
            lines.append(f"| {row['stage']} | {_fmt(row['bls_wall_ms'], 3)} | "
                         f"{_fmt(row['triton_compute_ms'], 3)} | {_fmt(row['triton_queue_ms'], 3)} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = result["baseline"]
    m = result["machine"]
    opts = result["options"]
    title = f"{m['cpu_model']}, {m['cores']} cores; batch {opts['batch_size']}, {opts['protocol']}"
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for workflow, style, color in (("v1", "o-", "C0"), ("v2", "s-", "C1")):
        lv = [l for l in result["levels"] if l["workflow"] == workflow]
        if not lv:
            continue
        cs = [l["concurrency"] for l in lv]
        axes[0].plot(cs, [l["throughput"] for l in lv], style, color=color, label=f"{workflow} (Triton)")
        axes[1].plot(cs, [l["p99_ms"] for l in lv], style, color=color, label=f"{workflow} p99")
        axes[1].plot(cs, [l["p50_ms"] for l in lv], style, color=color, alpha=0.35, label=f"{workflow} p50")
    axes[0].axhline(base["throughput"], color="k", ls="--", label="in-process eager")
    axes[1].axhline(base["p99_ms"], color="k", ls="--", label="in-process eager p99")
    for ax, ylabel in zip(axes, ("texts / s", "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[0].set_title("throughput")
    axes[1].set_title("latency")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = out / "bench_throughput_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)

    v1 = [l for l in result["levels"] if l["workflow"] == "v1" and "stages" in l]
    if v1:
        fig, ax = plt.subplots(figsize=(11, 0.9 + 0.7 * len(v1)))
        names = ["tokenizer", "embedding", "attention", "gating", "experts", "classifier",
                 "orchestration", "postprocessing"]
        colors = plt.get_cmap("tab10").colors
        for row, lv in enumerate(v1):
            stages = {r["stage"]: r for r in lv["stages"]}
            left = 0.0
            for i, name in enumerate(names):
                r = stages.get(name, {})
                # Triton's compute time of the pieces; the BLS's extra wall time (requests,
                # IPC, waiting) on top of it is drawn hatched in the same colour.
                compute = r.get("triton_compute_ms") or 0.0
                if name == "orchestration":
                    compute = r.get("bls_wall_ms") or 0.0
                elif name == "experts" and r.get("bls_wall_ms"):
                    # The expert models run concurrently: their summed compute exceeds the
                    # wall time the BLS waits for them (the table has both).
                    compute = min(compute, r["bls_wall_ms"])
                ax.barh(row, compute, left=left, color=colors[i % 10],
                        label=name if row == 0 else None)
                left += compute
                extra = max(0.0, (r.get("bls_wall_ms") or 0.0) - compute) if name != "orchestration" else 0.0
                if extra:
                    ax.barh(row, extra, left=left, color=colors[i % 10], alpha=0.35, hatch="//",
                            label=f"{name}: BLS wait/IPC" if row == 0 else None)
                    left += extra
        ax.set_yticks(range(len(v1)), [f"v1, C={l['concurrency']}\n(latency mean {l['mean_ms']:.0f} ms)"
                                       for l in v1])
        ax.set_xlabel("ms of service time per request (Triton statistics; the rest of the client "
                      "latency is queueing, the ensemble and HTTP)")
        ax.set_xscale("linear")
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(v1) < 3 else -0.2))
        ax.set_title(f"v1 stage breakdown; {title}", fontsize=9)
        fig.tight_layout()
        path = out / "bench_v1_stages.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(path.name)
    return files


def write_outputs(result: dict, out: Path, plots: bool = True) -> None:
    if "levels" not in result:
        (out / "bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        return
    result["files"] = ["bench.json", "bench.md"]
    if plots:
        result["files"] += plot(result, out)
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(markdown(result))
