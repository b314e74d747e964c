"""The repository the containers serve: NVIDIA's libtorch backend for every TorchScript piece,
experts spread over GPUs."""

from export.repository import ExportOptions, export_repository

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
    # The BLS keeps v1's activations on the first GPU; the tokenizer and post-processing stay on the CPU.
    assert "KIND_GPU gpus: [ 0 ]" in (out / "model_repository" / "moe_bls" / "config.pbtxt").read_text()
    for name in ("tokenizer", "postprocessing"):
        assert "KIND_CPU" in (out / "model_repository" / name / "config.pbtxt").read_text()
    on_cpu = export_repository(
        tiny_checkpoint,
        tmp_path / "gpu-bls-cpu",
        ExportOptions(device="cuda", bls_device="cpu"),
        progress=False,
        log=lambda *_: None,
    )
    bls_on_cpu = (on_cpu / "model_repository" / "moe_bls" / "config.pbtxt").read_text()
    assert "KIND_CPU" in bls_on_cpu and 'key: "expert_calls" value: { string_value: "ensemble" }' in bls_on_cpu
