"""The repository the containers serve: NVIDIA's libtorch backend for every TorchScript piece,
experts spread over GPUs."""

import json

import torch

from export.repository import ExportOptions, export_repository

from ..conftest import run_cli

TORCHSCRIPT = ["embedding", "attention", "gating", "classifier", "full_model", "postprocessing"] + [
    f"expert_{e}" for e in range(8)
]


def test_export_for_nvidias_libtorch_backend(tiny_checkpoint, tmp_path):
    out = export_repository(
        tiny_checkpoint, tmp_path / "container", ExportOptions(), progress=False, log=lambda *_: None
    )
    for name in TORCHSCRIPT:
        config = (out / "model_repository" / name / "config.pbtxt").read_text()
        assert 'backend: "pytorch"' in config, name
        assert (out / "model_repository" / name / "1" / "model.pt").is_file()
    for name in ("tokenizer", "moe_bls"):
        assert 'backend: "python"' in (out / "model_repository" / name / "config.pbtxt").read_text()
    # The BLS's orchestration library travels with its adapter.
    assert (out / "model_repository" / "moe_bls" / "1" / "bls" / "orchestrator.py").is_file()
    # On the CPU v1 sends two length-sorted groups through the attention pieces at once, each
    # with an instance of its own; the other pieces keep one instance.
    assert (
        'key: "groups" value: { string_value: "2" }'
        in (out / "model_repository" / "moe_bls" / "config.pbtxt").read_text()
    )
    for name in ("attention", "gating"):
        assert "count: 2 kind: KIND_CPU" in (out / "model_repository" / name / "config.pbtxt").read_text(), name
    for name in ("embedding", "classifier", "expert_0"):
        assert "count: 1 kind: KIND_CPU" in (out / "model_repository" / name / "config.pbtxt").read_text(), name
    # On the CPU every layer reaches its experts through one ensemble of every expert.
    bls = (out / "model_repository" / "moe_bls" / "config.pbtxt").read_text()
    assert 'key: "expert_calls" value: { string_value: "ensemble" }' in bls
    experts = (out / "model_repository" / "experts" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in experts
    assert [f'model_name: "expert_{e}"' in experts for e in range(8)] == [True] * 8


def test_export_for_gpus_spreads_experts(tiny_checkpoint, tmp_path):
    out = export_repository(
        tiny_checkpoint, tmp_path / "gpu", ExportOptions(device="cuda", gpus=3), progress=False, log=lambda *_: None
    )
    for e in range(8):
        config = (out / "model_repository" / f"expert_{e}" / "config.pbtxt").read_text()
        assert f"kind: KIND_GPU gpus: [ {e % 3} ]" in config, config
    assert (
        "count: 1 kind: KIND_GPU gpus: [ 0 ]" in (out / "model_repository" / "attention" / "config.pbtxt").read_text()
    )
    assert (
        'key: "groups" value: { string_value: "1" }'
        in (out / "model_repository" / "moe_bls" / "config.pbtxt").read_text()
    )
    assert (
        'key: "expert_calls" value: { string_value: "ensemble_if_all_busy" }'
        in (out / "model_repository" / "moe_bls" / "config.pbtxt").read_text()
    )
    assert (out / "model_repository" / "experts" / "config.pbtxt").exists()
    # "auto" precision asks for float16 only where a GPU here can check it.
    if not torch.cuda.is_available():
        assert json.loads((out / "manifest.json").read_text())["options"]["full_model_dtype"] == "float32"
    # The BLS keeps v1's activations on the first GPU; the tokenizer and post-processing stay on the CPU.
    assert "KIND_GPU gpus: [ 0 ]" in (out / "model_repository" / "moe_bls" / "config.pbtxt").read_text()
    for name in ("tokenizer", "postprocessing"):
        assert "KIND_CPU" in (out / "model_repository" / name / "config.pbtxt").read_text()
    on_cpu = export_repository(
        tiny_checkpoint,
        tmp_path / "gpu-bls-cpu",
        ExportOptions(device="cuda", bls_device="cpu", full_model_answer="host"),
        progress=False,
        log=lambda *_: None,
    )
    bls_on_cpu = (on_cpu / "model_repository" / "moe_bls" / "config.pbtxt").read_text()
    assert "KIND_CPU" in bls_on_cpu and 'key: "expert_calls" value: { string_value: "ensemble" }' in bls_on_cpu
    # Where v2's model leaves its answer is written into the TorchScript file and the manifest.
    for repository, where in ((out, "device"), (on_cpu, "host")):
        assert json.loads((repository / "manifest.json").read_text())["options"]["full_model_answer"] == where
        full_model = torch.jit.load(repository / "model_repository" / "full_model" / "1" / "model.pt")
        assert full_model.answer_on_host is (where == "host")


def test_gpu_export_sizes_host_stages_for_the_machines_cores(tiny_checkpoint, tmp_path):
    """On a GPU host the Python stages share the cores out (single-threaded tokenizer instances,
    BLS instances) and v2's model three eighths of them on every GPU, with large batches; an
    option given overrides its share."""
    out = export_repository(
        tiny_checkpoint,
        tmp_path / "gpu16",
        ExportOptions(device="cuda", gpus=2, host_cores=16, bls_instances=3),
        progress=False,
        log=lambda *_: None,
    )
    config = {name: (out / "model_repository" / name / "config.pbtxt").read_text() for name in MODELS_SIZED}
    assert "count: 12 kind: KIND_CPU" in config["tokenizer"]
    assert 'key: "threads" value: { string_value: "1" }' in config["tokenizer"]
    assert "count: 2 kind: KIND_CPU" in config["postprocessing"]
    assert "count: 3 kind: KIND_GPU gpus: [ 0 ]" in config["moe_bls"]
    assert "count: 6 kind: KIND_GPU gpus: [ 0, 1 ]" in config["full_model"]
    assert "max_batch_size: 256" in config["full_model"] and "max_batch_size: 512" in config["moe_bls"]
    assert "max_batch_size: 64" in config["tokenizer"]
    # On the CPU: the layout measured best on two cores, the library's own tokenizer pool.
    cpu = export_repository(
        tiny_checkpoint, tmp_path / "cpu16", ExportOptions(host_cores=16), progress=False, log=lambda *_: None
    )
    tokenizer = (cpu / "model_repository" / "tokenizer" / "config.pbtxt").read_text()
    assert "count: 1 kind: KIND_CPU" in tokenizer
    assert 'key: "threads" value: { string_value: "0" }' in tokenizer
    assert "count: 2 kind: KIND_CPU" in (cpu / "model_repository" / "full_model" / "config.pbtxt").read_text()


MODELS_SIZED = ("tokenizer", "postprocessing", "moe_bls", "full_model")


def test_the_export_command_writes_how_the_server_waits_for_the_gpu(tiny_checkpoint, tmp_path):
    r = run_cli("export", tiny_checkpoint, "--out", tmp_path / "block", "--gpu-wait", "block")
    assert r.returncode == 0, r.stderr
    config = (tmp_path / "block" / "model_repository" / "full_model" / "config.pbtxt").read_text()
    assert 'key: "GPU_WAIT" value: { string_value: "block" }' in config
    r = run_cli("export", tiny_checkpoint, "--out", tmp_path / "auto")
    assert r.returncode == 0, r.stderr
    assert "GPU_WAIT" not in (tmp_path / "auto" / "model_repository" / "full_model" / "config.pbtxt").read_text()


def test_the_export_command_writes_cuda_graphs_for_a_gpu_only(tiny_checkpoint, tmp_path):
    """A GPU export captures CUDA graphs in a warm-up at load, up to 128 texts unless asked
    otherwise (never above full_model's largest batch); a CPU export refuses to be asked for them
    and has none."""
    r = run_cli(
        "export", tiny_checkpoint, "--out", tmp_path / "gpu", "--device", "cuda", "--full-model-cuda-graphs", "64"
    )
    assert r.returncode == 0, r.stderr
    config = (tmp_path / "gpu" / "model_repository" / "full_model" / "config.pbtxt").read_text()
    assert 'key: "CUDA_GRAPH_MAX_BATCH" value: { string_value: "64" }' in config and "model_warmup" in config
    # The exported file holds what the backend captures and what it calls before and after, and
    # how the graphed form reaches its experts (dense unless asked).
    full_model = torch.jit.load(tmp_path / "gpu" / "model_repository" / "full_model" / "1" / "model.pt")
    assert all(hasattr(full_model, m) for m in ("graph_rows", "device_answer", "host_answer"))
    assert full_model.blocked_experts is False
    r = run_cli(
        "export",
        tiny_checkpoint,
        "--out",
        tmp_path / "blocked",
        "--device",
        "cuda",
        "--full-model-graph-experts",
        "blocked",
    )
    assert r.returncode == 0, r.stderr
    assert (
        json.loads((tmp_path / "blocked" / "manifest.json").read_text())["options"]["full_model_graph_experts"]
        == "blocked"
    )
    assert torch.jit.load(tmp_path / "blocked" / "model_repository" / "full_model" / "1" / "model.pt").blocked_experts
    r = run_cli("export", tiny_checkpoint, "--out", tmp_path / "cpu", "--full-model-cuda-graphs", "64")
    assert r.returncode != 0 and "--full-model-cuda-graphs needs --device cuda" in r.stderr
    expected = {
        ("--device", "cuda"): "128",
        ("--device", "cuda", "--full-model-max-batch", "32"): "32",
        ("--device", "cuda", "--full-model-cuda-graphs", "0"): None,
        (): None,
    }
    for flags, graphs in expected.items():
        r = run_cli("export", tiny_checkpoint, "--out", tmp_path / "default", *flags)
        assert r.returncode == 0, r.stderr
        config = (tmp_path / "default" / "model_repository" / "full_model" / "config.pbtxt").read_text()
        if graphs is None:
            assert "CUDA_GRAPH" not in config and "model_warmup" not in config, flags
        else:
            assert f'key: "CUDA_GRAPH_MAX_BATCH" value: {{ string_value: "{graphs}" }}' in config, flags
            # Batches above the graphs' limit run the eager forward: it is warmed up at load too.
            assert ("eager_forward_full" in config) is (graphs == "128"), flags


def test_the_export_command_sets_every_dynamic_batchers_delay(tiny_checkpoint, tmp_path):
    r = run_cli("export", tiny_checkpoint, "--out", tmp_path / "out", "--queue-delay-us", 750)
    assert r.returncode == 0, r.stderr
    for name in ("tokenizer", "full_model", "moe_bls", "postprocessing"):
        config = (tmp_path / "out" / "model_repository" / name / "config.pbtxt").read_text()
        assert "max_queue_delay_microseconds: 750" in config, name
