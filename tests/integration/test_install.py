"""The project installs like a library: its wheel, installed (not editable) into a fresh
virtual environment, exports the bundled checkpoint and serves it from a folder that is not the
checkout, with everything it reads (templates, Python models, the backend sources, the bundled
checkpoint, the client) inside the installed packages."""

import subprocess
import sys
from pathlib import Path

from serving.server import free_ports

from ..conftest import ROOT


def run(*args, cwd, timeout=600):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_wheel_installs_exports_and_serves_from_anywhere(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", ROOT, "-w", tmp_path / "dist", cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("moe_triton-*.whl")
    # A fresh environment from the interpreter this one was made from, nothing else in it.
    base = Path(getattr(sys, "_base_executable", sys.executable))
    run(base, "-m", "venv", tmp_path / "venv", cwd=tmp_path)
    bin_ = tmp_path / "venv" / "bin"
    run(bin_ / "pip", "install", "-q", wheel, cwd=tmp_path, timeout=1200)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        bin_ / "python",
        "-c",
        "import moe, export, serving, moe_client; print(moe.__file__, serving.__file__)",
        cwd=elsewhere,
    )
    assert str(ROOT) not in where and str(tmp_path / "venv") in where

    out = run(bin_ / "moe", "export", "--out", "build", cwd=elsewhere)
    assert "wrote" in out and (elsewhere / "build" / "model_repository" / "moe_bls" / "1" / "model.py").is_file()
    http_port, grpc_port, metrics_port = free_ports(3)
    out = run(
        bin_ / "moe",
        "serve",
        "--repository",
        "build",
        "--classify",
        "NASA launches a new rover to Mars",
        "--http-port",
        http_port,
        "--grpc-port",
        grpc_port,
        "--metrics-port",
        metrics_port,
        cwd=elsewhere,
    )
    answers = [line for line in out.splitlines() if line.startswith(("moe_v1:", "moe_v2:"))]
    assert len(answers) == 2 and all("Sci/Tech" in a for a in answers), out
