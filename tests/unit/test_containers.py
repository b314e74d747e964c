"""docker-compose.yml is valid (Debian's docker-compose validates it; there is no Docker
engine here) and the image is the bundled server's release."""

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose(*args):
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed (make setup installs Debian's package)"
    return subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


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
        assert ports and all(
            str(p.get("host_ip", p) if isinstance(p, dict) else p).startswith("127.0.0.1") for p in ports
        ), ports


def test_container_is_the_bundled_servers_release():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:24\.10-py3$", dockerfile, re.M)
    # The project installs like a library (not editable) and exports inside the image.
    assert re.search(r"^RUN pip install .*/opt/moe$", dockerfile, re.M)
    assert "moe export" in dockerfile
