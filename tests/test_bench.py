"""`moe bench` keeps working: a few requests against the shared server, no timing assertions."""
import json

from moe.bench import BenchOptions, run_bench


def test_bench_smoke(server, tiny_checkpoint, data_dir, tmp_path):
    opts = BenchOptions(url=server.http_url, metrics_url=server.metrics_url, workflows=["v1", "v2"],
                        concurrency=[1, 4], requests=6, warmup=2, batch_size=2,
                        checkpoint=tiny_checkpoint, data=data_dir, out=tmp_path, progress=False)
    result = run_bench(opts, log=lambda *_: None, command="pytest")
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["levels"] == json.loads(json.dumps(result["levels"]))
    assert {"bench.md", "bench_throughput_latency.png", "bench_v1_stages.png"} <= set(saved["files"])
    assert all((tmp_path / f).stat().st_size > 0 for f in saved["files"])

    assert saved["machine"]["cores"] >= 1 and saved["machine"]["cpu_model"]
    assert saved["baseline"]["throughput"] > 0 and saved["baseline"]["texts"] == 12
    assert [(l["workflow"], l["concurrency"]) for l in saved["levels"]] == [
        ("v1", 1), ("v1", 4), ("v2", 1), ("v2", 4)]
    for level in saved["levels"]:
        assert level["errors"] == 0 and level["requests"] == 6 and level["texts"] == 12
        assert level["throughput"] > 0
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        assert level["throughput_vs_eager"] > 0 and level["p50_vs_eager"] > 0
        assert level["agreement_with_eager"] == 1.0
        models = level["breakdown"]["models"]
        assert {"tokenizer", "postprocessing"} <= set(models)
        assert ("full_model" if level["workflow"] == "v2" else "moe_bls") in models

    v1 = saved["levels"][0]
    stages = {row["stage"]: row for row in v1["stages"]}
    for piece in ("embedding", "attention", "gating", "experts", "classifier"):
        assert stages[piece]["triton_compute_ms"] > 0 and stages[piece]["bls_wall_ms"] > 0
    bls = v1["breakdown"]["bls"]
    assert bls["batches"] >= 1 and bls["stage_ms_per_batch"]["orchestration"] is not None
    assert sum(bls["expert_tokens"].values()) > 0

    ratios = saved["ratios"]
    for key in ("v1_vs_v2_p50_c1",):
        assert ratios[key] > 0
    # Not started by the bench: no cold start or memory of its own.
    assert ratios["cold_start_s"] is None and ratios["server_rss_gb"] is None
    assert {t["key"] for t in saved["targets"]} >= {"v2_vs_eager_throughput_c16", "cold_start_s"}
    assert "| v1 | 1 |" in (tmp_path / "bench.md").read_text()


def test_gpu_moe_layer_benchmark_smoke_on_cpu(tmp_path):
    """bench/moe_layer_gpu.py --smoke: every dispatch variant agrees with the model's output."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, str(root / "bench" / "moe_layer_gpu.py"), "--smoke",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [l for l in result.stdout.splitlines() if l.startswith("| smoke-")]
    assert rows and all(l.rstrip().endswith("| yes |") for l in rows), rows
