"""Run the `tritonserver` shipped in the nvidia-pytriton wheel on our model repository."""
from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MoEError

SOURCE_ROOT = Path(__file__).resolve().parent.parent
TORCHSCRIPT_BACKEND = SOURCE_ROOT / "backends" / "torchscript" / "model.py"
DEFAULT_BUILD = SOURCE_ROOT / "build"


def triton_dist() -> tuple[Path, Path]:
    """(tritonserver distribution folder, folder of its shared libraries)."""
    try:
        import pytriton
    except ImportError as e:
        raise MoEError("nvidia-pytriton is not installed: it ships the tritonserver binary") from e
    dist = Path(pytriton.__file__).resolve().parent / "tritonserver"
    libs = dist.parent.parent / "nvidia_pytriton.libs"
    if not (dist / "bin" / "tritonserver").is_file():
        raise MoEError(f"no tritonserver binary in {dist}")
    return dist, libs


def prepare_backends(folder: Path) -> Path:
    """A backend directory: the Python backend with the stub for this Python, and our
    Python-based `torchscript` backend next to it."""
    dist, _ = triton_dist()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise MoEError(f"the bundled Python backend has no stub for Python {version}")
    python = folder / "python"
    python.mkdir(parents=True, exist_ok=True)
    for f in (dist / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy2(f, python / f.name)
    shutil.copy2(stub, python / "triton_python_backend_stub")
    torchscript = folder / "torchscript"
    torchscript.mkdir(exist_ok=True)
    shutil.copy2(TORCHSCRIPT_BACKEND, torchscript / "model.py")
    return folder


def server_env() -> dict:
    _, libs = triton_dist()
    env = os.environ.copy()
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH"), str(libs)) if p)
    # The stub embeds the system libpython: point it at this environment's packages.
    paths = [sysconfig.get_paths()["purelib"], *site.getsitepackages(), str(SOURCE_ROOT)]
    env["PYTHONPATH"] = ":".join(dict.fromkeys(p for p in (*paths, env.get("PYTHONPATH")) if p))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    # One thread per process unless a config asks for more: the stubs share few cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def repositories(root: Path) -> list[Path]:
    """`root` is an export folder (model_repository/ + ensemble/) or a plain model repository."""
    root = Path(root)
    if (root / "model_repository").is_dir():
        return [p for p in (root / "model_repository", root / "ensemble") if p.is_dir()]
    if root.is_dir():
        return [root]
    raise MoEError(f"model repository not found: {root} (run `moe export` first)")


@dataclass
class ServerOptions:
    repository: Path = DEFAULT_BUILD
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    extra_args: list[str] = field(default_factory=list)
    log_verbose: int = 0


class TritonServer:
    """A tritonserver process: start() waits until every model is ready or reports the
    server's own error; stop() shuts it down cleanly (SIGINT, as Ctrl-C would)."""

    def __init__(self, opts: ServerOptions):
        self.opts = opts
        self.workdir = Path(tempfile.mkdtemp(prefix="moe-triton-"))
        self.log_path = self.workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.opts.host}:{self.opts.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.opts.host}:{self.opts.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.opts.host}:{self.opts.metrics_port}/metrics"

    def command(self) -> list[str]:
        dist, _ = triton_dist()
        o = self.opts
        cmd = [str(dist / "bin" / "tritonserver")]
        cmd += [f"--model-repository={r}" for r in repositories(o.repository)]
        cmd += [
            f"--backend-directory={prepare_backends(self.workdir / 'backends')}",
            f"--cache-directory={self.workdir / 'cache'}",
            f"--http-address={o.host}", f"--http-port={o.http_port}",
            f"--grpc-address={o.host}", f"--grpc-port={o.grpc_port}",
            f"--metrics-address={o.host}", f"--metrics-port={o.metrics_port}",
            "--model-control-mode=none",        # no loading/unloading through the API
            "--strict-readiness=true", "--exit-on-error=true",
            "--disable-auto-complete-config",   # serve the configs exactly as exported
            f"--log-verbose={o.log_verbose}",
        ]
        return cmd + list(o.extra_args)

    def start(self, timeout: float = 180.0) -> "TritonServer":
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=server_env(), start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def error_summary(self) -> str:
        lines = [l for l in self.log_text().splitlines() if l[:1] == "E" or "error" in l.lower()]
        return "\n".join(lines[-12:]) or self.log_text()[-2000:]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MoEError(f"tritonserver exited with code {self.process.returncode} before "
                               f"all models were ready:\n{self.error_summary()}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise MoEError(f"tritonserver was not ready after {timeout:.0f}s:\n{self.error_summary()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode if self.process else None

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()
