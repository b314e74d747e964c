"""Where the time goes inside the server: Triton's per-model statistics (/v2/models/stats) and
the BLS's Prometheus counters, as deltas over one load level."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import Counter

STAT_KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def http_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def model_stats(http_url: str) -> dict:
    """Model name -> cumulative ns and counts of Triton's inference statistics.

    A request's compute times in Triton's inference statistics are its whole batch's, so for a
    model that batches requests they add up to more than the model ran. The model's own busy
    time (`busy_ns`, running the model) and `io_ns` (gathering its inputs and scattering its
    outputs) are sums over its executions, from the batch statistics."""
    out: dict = {}
    for m in http_json(f"http://{http_url}/v2/models/stats").get("model_stats", []):
        s = m.get("inference_stats", {})
        row = {f"{k}_ns": int(s.get(k, {}).get("ns", 0)) for k in STAT_KINDS}
        batches = m.get("batch_stats") or []
        if batches:
            row["busy_ns"] = sum(int(b.get("compute_infer", {}).get("ns", 0)) for b in batches)
            row["io_ns"] = sum(
                int(b.get(k, {}).get("ns", 0)) for b in batches for k in ("compute_input", "compute_output")
            )
        else:
            row["busy_ns"] = row["compute_infer_ns"]
            row["io_ns"] = row["compute_input_ns"] + row["compute_output_ns"]
        row.update(
            success_count=int(s.get("success", {}).get("count", 0)),
            execution_count=int(m.get("execution_count", 0)),
            inference_count=int(m.get("inference_count", 0)),
        )
        previous = out.get(m["name"])  # several versions of one model: add them up
        out[m["name"]] = {k: v + previous[k] for k, v in row.items()} if previous else row
    return out


def prometheus(metrics_url: str, prefix: str = "moe_") -> dict:
    """(name, frozenset of label pairs) -> value, for the metric families named `prefix`*."""
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix) and (m := _METRIC.match(line)):
            out[(m.group(1), frozenset(_LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return out


def bls_counters_settled(metrics_url: str, before: dict, batches: int, timeout_s: float = 3.0) -> dict:
    """prometheus() once the BLS's counters count `batches` more batches than `before` (or after
    `timeout_s`): the BLS sends them from a thread of its own after its responses, so a read right
    after the last answer can miss the last batches' stage times."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = prometheus(metrics_url)
        counted = sum(v for k, v in delta(now, before).items() if k[0] == "moe_bls_batches_total")
        if counted >= batches or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def wait_until_drained(metrics_url: str, timeout_s: float = 60.0) -> float:
    """Seconds until no model has a request waiting (Triton's pending-request gauges read 0 twice
    in a row), or `timeout_s`. A load generator that stops at its level's end leaves up to a
    connection's worth of requests in the server: the next level's would queue behind them and,
    with as many connections as the entry model's queue has places, be rejected."""
    started = time.monotonic()
    idle = 0
    while idle < 2 and time.monotonic() - started < timeout_s:
        pending = prometheus(metrics_url, prefix="nv_inference_pending_request_count")
        idle = idle + 1 if not any(pending.values()) else 0
        if idle < 2:
            time.sleep(0.02)
    return time.monotonic() - started


def delta(after: dict, before: dict) -> dict:
    """after - before, for model_stats() rows or prometheus() samples."""
    if all(isinstance(v, dict) for v in after.values()):
        return {name: {k: v - before.get(name, {}).get(k, 0) for k, v in row.items()} for name, row in after.items()}
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def breakdown(stats: dict, metrics: dict | None, n_requests: int) -> dict:
    """Per request of the level: each model's compute and queue milliseconds (Triton's own
    statistics) and, from the BLS's counters, its wall time per stage."""
    per_request = max(n_requests, 1)
    models = {}
    for name, row in sorted(stats.items()):
        if row["execution_count"] <= 0 and row["success_count"] <= 0:
            continue
        executions = max(row["execution_count"], 1)
        models[name] = dict(
            executions=row["execution_count"],
            inferences=row["inference_count"],
            # Shared out over the level's requests: what the model cost each of them.
            compute_infer_ms_per_request=round(row["busy_ns"] / 1e6 / per_request, 4),
            compute_io_ms_per_request=round(row["io_ns"] / 1e6 / per_request, 4),
            queue_ms_per_request=round(row["queue_ns"] / 1e6 / per_request, 4),
            compute_infer_ms_per_execution=round(row["busy_ns"] / 1e6 / executions, 4),
            mean_batch=round(row["inference_count"] / executions, 2),
        )
    result: dict = dict(models=models)
    if metrics:
        stage = {dict(k[1])["stage"]: v for k, v in metrics.items() if k[0] == "moe_bls_stage_duration_us"}
        batches = sum(v for k, v in metrics.items() if k[0] == "moe_bls_batches_total")
        tokens = {
            f"layer{dict(k[1])['layer']}/expert{dict(k[1])['expert']}": int(v)
            for k, v in metrics.items()
            if k[0] == "moe_expert_tokens_total"
        }
        result["bls"] = dict(
            batches=int(batches),
            requests_per_batch=round(n_requests / batches, 2) if batches else None,
            stage_ms_per_batch={s: round(us / 1e3 / batches, 4) if batches else None for s, us in stage.items()},
            stage_ms_per_request={s: round(us / 1e3 / per_request, 4) for s, us in stage.items()},
            expert_tokens=tokens,
        )
    return result


def stage_table(bd: dict, stage_models: dict[str, list[str]]) -> list[dict]:
    """v1's stages side by side: the BLS's wall time for each (the call, IPC and waiting) and
    the Triton compute and queue time of the models behind it, per request. `stage_models`:
    stage -> the models it calls, in pipeline order (tokenizer first, post-processing last)."""
    models, bls = bd["models"], bd.get("bls") or {}
    walls = bls.get("stage_ms_per_request", {})
    stages_of = Counter(n for names in stage_models.values() for n in names)

    def share(stage: str, name: str) -> float:
        """attention and gating serve two stages: the first layer's call, which also runs the
        embedding once, and every later layer's. Their time is split by executions."""
        if stages_of[name] <= 1:
            return 1.0
        executions = models.get(name, {}).get("executions", 0)
        first = min(models.get("embedding", {}).get("executions", 0) / executions, 1.0) if executions else 0.0
        return first if "embedding" in stage_models[stage] else 1.0 - first

    def total(stage, names, key):
        if not names:
            return None
        return round(sum(models.get(n, {}).get(key, 0.0) * share(stage, n) for n in names), 4)

    rows = [
        dict(
            stage=stage,
            bls_wall_ms=walls.get(stage),
            triton_compute_ms=total(stage, names, "compute_infer_ms_per_request"),
            triton_queue_ms=total(stage, names, "queue_ms_per_request"),
        )
        for stage, names in stage_models.items()
    ]
    if "moe_bls" in models:
        rows.append(
            dict(
                stage="moe_bls (whole execute)",
                bls_wall_ms=None,
                triton_compute_ms=models["moe_bls"]["compute_infer_ms_per_request"],
                triton_queue_ms=models["moe_bls"]["queue_ms_per_request"],
            )
        )
    return rows
