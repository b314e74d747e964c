"""docker-compose.yml is valid (Debian's docker-compose validates it; there is no Docker
engine here) and the repository it serves exports for NVIDIA's libtorch backend."""
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from export.repository import ExportOptions, export_repository

ROOT = Path(__file__).resolve().parent.parent


def compose(*args):
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed (make setup installs Debian's package)"
    return subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_compose_file_is_valid():
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    result = compose("--profile", "distributed", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"triton", "experts-a", "experts-b", "front"} <= set(services)
    assert services["experts-a"]["command"] == ["--only-experts", "0-3"]
    assert services["experts-b"]["command"] == ["--only-experts", "4-7"]
    assert "--experts-at" in services["front"]["command"]
    for name in ("triton", "front"):
        ports = services[name]["ports"]
        assert ports and all(str(p.get("host_ip", p) if isinstance(p, dict) else p).startswith("127.0.0.1")
                             for p in ports), ports


def test_container_is_the_bundled_servers_release():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:24\.10-py3$", dockerfile, re.M)
    assert "--backend pytorch" in dockerfile


def test_export_for_nvidias_libtorch_backend(tiny_checkpoint, tmp_path):
    out = export_repository(tiny_checkpoint, tmp_path / "container", ExportOptions(backend="pytorch"),
                            progress=False, log=lambda *_: None)
    torchscript = ["embedding", "attention", "gating", "classifier", "full_model"] + [f"expert_{e}" for e in range(8)]
    for name in torchscript:
        config = (out / "model_repository" / name / "config.pbtxt").read_text()
        assert 'backend: "pytorch"' in config, name
        assert (out / "model_repository" / name / "1" / "model.pt").is_file()
    for name in ("tokenizer", "moe_bls", "postprocessing"):
        assert 'backend: "python"' in (out / "model_repository" / name / "config.pbtxt").read_text()


def test_export_for_gpus_spreads_experts(tiny_checkpoint, tmp_path):
    out = export_repository(tiny_checkpoint, tmp_path / "gpu", ExportOptions(device="cuda", gpus=3),
                            progress=False, log=lambda *_: None)
    for e in range(8):
        config = (out / "model_repository" / f"expert_{e}" / "config.pbtxt").read_text()
        assert f"kind: KIND_GPU gpus: [ {e % 3} ]" in config, config
    assert "KIND_GPU gpus: [ 0 ]" in (out / "model_repository" / "attention" / "config.pbtxt").read_text()
    assert "KIND_CPU" in (out / "model_repository" / "moe_bls" / "config.pbtxt").read_text()
