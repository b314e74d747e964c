"""What tritonserver runs with by default: the binary shipped in the nvidia-pytriton wheel, a
backend folder with its Python backend and NVIDIA's libtorch backend built here, and the
environment its processes need."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from moe.errors import MoEError


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
    """A backend directory: the Python backend with the stub for this Python, and NVIDIA's
    libtorch backend built against the torch installed here (serving.pytorch_backend)."""
    from .pytorch_backend import LIBRARY, ensure_built

    dist, libs = triton_dist()
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
    pytorch = folder / "pytorch"
    pytorch.mkdir(exist_ok=True)
    shutil.copy2(ensure_built() / LIBRARY, pytorch / LIBRARY)
    # The backend links libtritonserver.so (RPATH $ORIGIN); the wheel ships it under a hashed name.
    server_library = next(libs.glob("libtritonserver*.so*"), None)
    if server_library is None:
        raise MoEError(f"no libtritonserver in {libs}")
    (pytorch / "libtritonserver.so").symlink_to(server_library)
    return folder


def server_env(bundled: bool = True, torch_threads: int = 1) -> dict:
    env = os.environ.copy()
    if bundled:
        from .pytorch_backend import torch_paths

        _, libs = triton_dist()
        # libtriton_pytorch.so finds libtorch in the installed torch package.
        extra = (str(libs), str(torch_paths()[1]))
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH"), *extra) if p)
    # The stub embeds the system libpython and ignores PYTHONPATH: it takes its packages from
    # the environment of the `python3` first on PATH (venv, .pth files and all). This
    # interpreter's folder goes first, so the stubs import what this environment has.
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    # Intra-op threads of every TorchScript model in the server (the libtorch backend's
    # per-model INTRA_OP_THREAD_COUNT sets one process-wide value, so it is set once here).
    env["OMP_NUM_THREADS"] = str(torch_threads)
    # glibc gives each of the server's many threads (one per model instance) a heap of its own
    # and keeps what they freed: two heaps cut the tree's peak RSS by a fifth under load at no
    # measured cost in throughput (docs/benchmarks.md). A value the caller set is kept.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env
