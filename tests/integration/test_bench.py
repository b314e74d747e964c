"""`moe bench` keeps working: a few requests against the shared server, no timing assertions."""

import asyncio
import json
import os

import pytest

from bench.served import BenchOptions, Endpoint, run_bench
from moe.errors import MoEError


def test_bench_smoke(server, tiny_checkpoint, data_dir, tmp_path):
    opts = BenchOptions(
        workflows=["v1", "v2"],
        concurrency=[1, 4],
        batch_sizes=[1, 3],
        requests=6,
        warmup=2,
        batched_baseline=4,
        load_client="raw",
        checkpoint=tiny_checkpoint,
        data=data_dir,
        out=tmp_path,
        progress=False,
    )
    endpoint = Endpoint(
        url=server.http_url,
        http_url=server.http_url,
        metrics_url=server.metrics_url,
        memory=server.memory,
        rss_mb=server.rss_mb,
    )
    result = run_bench(opts, endpoint, log=lambda *_: None, command="pytest")
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["levels"] == json.loads(json.dumps(result["levels"]))
    assert {"bench.md", "bench_throughput_latency.png", "bench_v1_stages.png"} <= set(saved["files"])
    assert all((tmp_path / f).stat().st_size > 0 for f in saved["files"])

    assert saved["machine"]["cores"] >= 1 and saved["machine"]["cpu_model"]
    peak = saved["server"]["memory_peak"]
    assert peak["python_stubs"] == 2 and peak["rss_mb"] >= peak["tritonserver_rss_mb"] > 0
    one, three = saved["baselines"]["1"], saved["baselines"]["3"]
    assert one["per_request"]["throughput"] > 0 and one["per_request"]["texts"] == 6
    assert three["per_request"]["texts"] == 18 and "batched" not in three
    assert one["batched"]["throughput"] > 0 and len(one["batched"]["runs"]) == 2
    # The workflows take turns at each concurrency.
    assert [(lv["workflow"], lv["batch_size"], lv["concurrency"]) for lv in saved["levels"]] == [
        ("v1", 1, 1),
        ("v2", 1, 1),
        ("v1", 1, 4),
        ("v2", 1, 4),
        ("v1", 3, 1),
        ("v2", 3, 1),
        ("v1", 3, 4),
        ("v2", 3, 4),
    ]
    assert saved["load_client"] == "raw" and "load client raw," in (tmp_path / "bench.md").read_text()
    for level in saved["levels"]:
        assert level["errors"] == 0 and level["requests"] == 6
        assert level["load_cpu_ms_per_request"] > 0 and level["load_cpu_share"] > 0
        if level["concurrency"] == 1:
            assert level["untimed"] == 0, "a lone worker never waits for another's answer"
        assert level["texts"] == 6 * level["batch_size"]
        assert level["throughput"] > 0
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        assert level["agreement_with_eager"] == 1.0 and level["disagreements"] == 0
        models = level["breakdown"]["models"]
        # v2's model answers as post-processing does: its ensemble has no third step.
        assert {"tokenizer", "postprocessing"} & set(models) == (
            {"tokenizer", "postprocessing"} if level["workflow"] == "v1" else {"tokenizer"}
        )
        # From the batch statistics, as the compute time is.
        assert models["tokenizer"]["compute_io_ms_per_request"] > 0
        assert ("full_model" if level["workflow"] == "v2" else "moe_bls") in models

    v1 = saved["levels"][0]
    stages = {row["stage"]: row for row in v1["stages"]}
    pieces = [
        s for s in stages if s not in ("tokenizer", "postprocessing", "orchestration") and not s.startswith("moe_bls")
    ]
    assert "experts" in pieces and "embedding" in "+".join(pieces) and "classifier" in "+".join(pieces)
    for piece in pieces:
        assert stages[piece]["triton_compute_ms"] > 0 and stages[piece]["bls_wall_ms"] > 0, piece
    bls = v1["breakdown"]["bls"]
    assert bls["batches"] >= 1 and bls["stage_ms_per_batch"]["orchestration"] is not None
    assert sum(bls["expert_tokens"].values()) > 0

    memory = saved["server"]["memory_peak"]
    assert memory["python_stubs"] == 2 and memory["rss_mb"] > memory["tritonserver_rss_mb"] > 0
    ratios = saved["ratios"]
    assert ratios["v1_vs_v2_p50_c1"] > 0 and ratios["errors"] == 0 and ratios["python_stubs"] == 2
    assert ratios["cold_start_s"] is None  # the bench did not start this server
    assert {t["key"] for t in saved["targets"]} >= {"v1_vs_v2_p50_c1", "server_rss_gb", "cold_start_s"}
    assert "| v1 | 1 | 1 |" in (tmp_path / "bench.md").read_text()


def test_gpu_moe_layer_benchmark_smoke_on_cpu(tmp_path):
    """bench/moe_layer_gpu.py --smoke: every dispatch variant agrees with the model's output."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(root / "bench" / "moe_layer_gpu.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [l for l in result.stdout.splitlines() if l.startswith("| smoke-")]
    assert rows and all(l.rstrip().endswith("| yes |") for l in rows), rows


def test_raw_http_client_answers_as_moe_client_does(server, data_dir):
    """The bench's lean client sends moe_client's request and reads the same labels back, over
    a kept-alive connection; the server's own message reaches the caller on an error."""
    from bench.raw_http import RawHttpClient, RequestFailed
    from moe.data import load_split
    from moe_client import AsyncMoEClient

    texts = load_split(str(data_dir), "test").texts[:20] + ["Ünïcødé — “quoted” text"]

    async def both():
        async with RawHttpClient(server.http_url, timeout=30) as raw, AsyncMoEClient(server.http_url) as product:
            out = {}
            for workflow in ("v1", "v2"):
                singles = [await raw.classify([t], workflow) for t in texts]
                batch = await raw.classify(texts, workflow)
                want = await product.classify(texts, workflow=workflow)
                out[workflow] = (singles, batch, want)
            with pytest.raises(RequestFailed, match="moe_v9"):
                await raw.classify(texts[:1], "v9")
            bad = await asyncio.gather(raw.classify(["ok", " "], "v2"), return_exceptions=True)
            after = await raw.classify(texts[:2], "v2")
            return out, bad[0], after, len(raw._idle)

    out, bad, after, idle = asyncio.run(both())
    for workflow, (singles, batch, want) in out.items():
        labels = [p.label for p in want]
        assert [a.label for a in batch] == labels, workflow
        assert [s[0].label for s in singles] == labels and all(len(s) == 1 for s in singles), workflow
    assert isinstance(bad, RequestFailed) and "HTTP 400" in str(bad) and "TEXT[1] is empty" in str(bad)
    assert [a.label for a in after] == [p.label for p in out["v2"][2][:2]]
    assert idle == 1, "one request at a time reuses one connection"


def test_bench_with_the_product_client(server, tiny_checkpoint, data_dir, tmp_path):
    opts = BenchOptions(
        workflows=["v2"],
        concurrency=[2],
        requests=4,
        warmup=1,
        batched_baseline=0,
        load_client="moe_client",
        checkpoint=tiny_checkpoint,
        data=data_dir,
        out=tmp_path,
        plots=False,
        progress=False,
    )
    endpoint = Endpoint(url=server.http_url, http_url=server.http_url)
    (level,) = run_bench(opts, endpoint, log=lambda *_: None)["levels"]
    assert level["errors"] == 0 and level["agreement_with_eager"] == 1.0
    assert level["load_cpu_ms_per_request"] > 0 and 0 < level["load_cpu_share"] < 1.5
    # Four requests can be too short for /proc/stat's ticks: then the level has no host number.
    host = level["host_cpu_ms_per_request"]
    assert host is None or host >= level["load_cpu_ms_per_request"]
    assert "load client moe_client" in (tmp_path / "bench.md").read_text()
    with pytest.raises(MoEError, match="HTTP only"):
        run_bench(BenchOptions(protocol="grpc", load_client="raw", out=tmp_path), endpoint)


def test_bench_with_wrk_checks_every_answer(server, tiny_checkpoint, data_dir, tmp_path):
    """`auto` picks wrk where it is installed: time-based levels, every answer's labels checked
    against eager, the load generator's own ceiling measured on the same connections."""
    from bench import wrk

    if not wrk.available():
        pytest.fail("wrk is not installed: `make setup` installs it")
    opts = BenchOptions(
        workflows=["v1", "v2"],
        concurrency=[2],
        batch_sizes=[1, 3],
        level_seconds=1,
        batched_baseline=0,
        checkpoint=tiny_checkpoint,
        data=data_dir,
        out=tmp_path,
        plots=False,
        progress=False,
    )
    endpoint = Endpoint(url=server.http_url, http_url=server.http_url)
    result = run_bench(opts, endpoint, log=lambda *_: None)
    assert result["load_client"] == "wrk"
    for level in result["levels"]:
        assert level["errors"] == 0 and level["disagreements"] == 0, level
        assert level["checked"] > 0 and level["agreement_with_eager"] == 1.0
        assert level["throughput"] == pytest.approx(level["requests_per_s"] * level["batch_size"], rel=1e-3)
        assert level["load_ceiling_requests_per_s"] > level["requests_per_s"] > 0
        assert level["load_cpu_ms_per_request"] > 0
        # The host's CPU over the level holds the load generator's own.
        assert level["host_cpu_ms_per_request"] >= level["load_cpu_ms_per_request"]
        assert 0 < level["host_busy_cores"] <= 1.05 * os.cpu_count()  # /proc/stat counts in ticks
        assert 0 < level["p50_ms"] <= level["p99_ms"]
        assert "tokenizer" in level["breakdown"]["models"]
    assert "load client auto: wrk" in (tmp_path / "bench.md").read_text()


def test_wrk_counts_wrong_answers_and_server_errors(server, data_dir):
    """The Lua script's checks can fail: answers unlike the expected labels are counted as
    disagreements, and the server's error message comes back with the count of failed requests."""
    from bench import wrk
    from moe.data import load_split

    texts = load_split(str(data_dir), "test").texts[:1]
    labels = [["World"], ["Sports"], ["Business"], ["Sci/Tech"]]
    wrong = wrk.run_level(server.http_url, "moe_v2", [[texts[0]]] * 4, [([i], labels[i]) for i in range(4)], 2, 1)
    assert wrong["checked"] > 0
    # Each text has one answer: of four expectations for the same text, at most one is right.
    assert wrong["disagreements"] >= wrong["checked"] * 3 // 4 - 2
    first = wrong["first_disagreement"]
    (differing,) = first["differing"]
    assert differing["text"] == texts[0][:200]
    assert differing["answered"] != differing["expected"][0] == int(first["request"])
    failed = wrk.run_level(server.http_url, "moe_v2", [[" "]], [([0], ["World"])], 2, 1)
    assert failed["checked"] == 0 and failed["errors"] > 0
    assert any("empty or whitespace" in m for m in failed["error_messages"]), failed["error_messages"]


def test_wrk_levels_start_on_a_drained_server(tiny_checkpoint, data_dir, tmp_path):
    """wrk stops at a level's end with its connections' requests still in the server; the next
    level's requests must not queue behind them. With an entry queue of as many places as there
    are connections, a level started before the server drains is partly rejected as over the
    queue's size; one started after it is not. Every stage takes one request per execution, so
    requests wait in queues as they do on a busy GPU server."""
    from bench import wrk
    from export.options import ExportOptions
    from export.repository import export_repository
    from tests.conftest import start_server

    if not wrk.available():
        pytest.fail("wrk is not installed: `make setup` installs it")
    connections, texts_per_request = 4, 8
    repo = export_repository(
        tiny_checkpoint,
        tmp_path / "queue_as_deep_as_the_connections",
        progress=False,
        log=lambda *_: None,
        opts=ExportOptions(max_queue_size=connections, max_batch_size=texts_per_request),
    )
    server = start_server(repo)
    try:
        opts = BenchOptions(
            workflows=["v1", "v2"],
            concurrency=[connections, connections],
            batch_sizes=[texts_per_request],
            level_seconds=1,
            batched_baseline=0,
            load_client="wrk",
            checkpoint=tiny_checkpoint,
            data=data_dir,
            out=tmp_path / "bench",
            plots=False,
            progress=False,
        )
        endpoint = Endpoint(url=server.http_url, http_url=server.http_url, metrics_url=server.metrics_url)
        result = run_bench(opts, endpoint, log=lambda *_: None)
        for level in result["levels"]:
            assert level["errors"] == 0, (level["workflow"], level["error_messages"])
            assert level["checked"] > 0 and level["disagreements"] == 0
            assert level["drained_after_s"] >= 0
    finally:
        server.stop()
        server.cleanup()


def test_bench_traces_requests_and_their_steps_add_up_to_the_ensemble(
    tiny_repository, tiny_checkpoint, data_dir, tmp_path
):
    """`moe bench --trace-rate 1` traces every request through a real tritonserver; for v2 the
    summary's steps (hand-overs, queues, compute) account for the ensemble's time."""
    from tests.conftest import run_cli

    out = tmp_path / "traced"
    r = run_cli(
        "bench", "--repository", tiny_repository, "--checkpoint", tiny_checkpoint, "--data", data_dir,
        "--workflows", "v2", "--concurrency", "2", "--requests", "40", "--load-client", "raw",
        "--batched-baseline", "0", "--no-plots", "--trace-rate", "1", "--out", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((out / "trace-summary.json").read_text())["moe_v2"]
    assert rows["tokenizer: queue"]["n"] >= 40 and rows["full_model: queue"]["n"] >= 40
    on_path = [
        f"{model}: {part}"
        for model in ("tokenizer", "full_model")
        for part in ("hand-over before it", "queue", "compute: inputs", "compute: infer")
    ] + ["ensemble: after its last step"]
    steps = sum(rows[name]["mean_ms"] for name in on_path)
    whole = rows["ensemble (or model): request to response"]["mean_ms"]
    assert abs(steps - whole) <= 0.05 * whole + 0.05, (steps, whole)
    assert rows["server: first byte read to last byte written"]["mean_ms"] >= whole
    assert "moe_v2" in (out / "trace.md").read_text()
