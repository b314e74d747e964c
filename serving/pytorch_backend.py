"""NVIDIA's libtorch backend (`libtriton_pytorch.so`), built from the vendored r24.10 sources
against the torch installed here, once, and cached.

The tritonserver of the nvidia-pytriton wheel ships only the Python backend. The libtorch
backend is what runs TorchScript inside the server process in NVIDIA's container; built here
from the same release as the bundled server (2.51 = r24.10), it lets `moe serve` run exactly the
repository that the container runs. The build is keyed by the torch version (with its CUDA
version), the GPU switch and a hash of the sources: a new torch or an edited source rebuilds, and
nothing else does.

    python -m serving.pytorch_backend            # build (or find) it, print its folder
    python -m serving.pytorch_backend --gpu      # with GPU support (needs nvcc and a CUDA torch)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from moe.errors import MoEError
from moe.files import replaced_folder

LIBRARY = "libtriton_pytorch.so"
# The vendored sources travel inside this package (a link to third_party/triton in the checkout).
SOURCES = resources.files("serving") / "third_party" / "triton"
# Hopper and Ampere: the GPUs this project is run on. nvcc 13 refuses the default list's sm_53.
DEFAULT_CUDA_ARCHITECTURES = "80-real;90-real"


def cache_root() -> Path:
    if os.environ.get("MOE_BACKEND_CACHE"):
        return Path(os.environ["MOE_BACKEND_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "moe-triton" / "pytorch-backend"


def torch_paths() -> tuple[Path, Path]:
    """(torch package folder, its lib folder) without importing torch (which takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise MoEError("torch is not installed: the libtorch backend is built against it")
    root = Path(spec.origin).parent
    return root, root / "lib"


def torch_version() -> tuple[str, str | None]:
    """(torch version, CUDA version or None), read from torch/version.py without importing torch."""
    root, _ = torch_paths()
    values: dict = {}
    exec((root / "version.py").read_text(), values)  # torch's own generated file: two assignments
    return values["__version__"], values.get("cuda")


def sources_digest(root: Path = SOURCES) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in Path(str(root)).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(Path(str(root)))).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def wants_gpu() -> bool:
    """Build with GPU support when torch is a CUDA build and nvcc is there."""
    return torch_version()[1] is not None and shutil.which("nvcc") is not None


def build_key(gpu: bool) -> str:
    version, cuda = torch_version()
    h = hashlib.sha256(f"{version}|{cuda}|gpu={gpu}|{sources_digest()}".encode())
    return f"torch-{version}-{'gpu' if gpu else 'cpu'}-{h.hexdigest()[:12]}"


@contextmanager
def locked(path: Path):
    """One build at a time per cache folder (parallel test runs, two shells)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cmake_args(build_sources: Path, gpu: bool, cuda_architectures: str) -> list[str]:
    root, lib = torch_paths()
    include = sysconfig.get_paths()["include"]
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    return [
        *generator,
        str(build_sources / "pytorch_backend"),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DTRITON_ENABLE_GPU={'ON' if gpu else 'OFF'}",
        f"-DTRITON_BACKEND_CUDA_ARCHITECTURES={cuda_architectures}",
        "-DTRITON_ENABLE_NVTX=OFF",
        "-DTRITON_PYTORCH_ENABLE_TORCHVISION=OFF",
        f"-DTRITON_PYTORCH_INCLUDE_PATHS={root / 'include'};{root / 'include/torch/csrc/api/include'}",
        f"-DTRITON_PYTORCH_LIB_PATHS={lib}",
        # No network: FetchContent takes the vendored trees instead of cloning GitHub.
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-COMMON={build_sources / 'common'}",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-CORE={build_sources / 'core'}",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-BACKEND={build_sources / 'backend'}",
        "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",
        # The real interpreter, not a virtual environment's shim: CMake's FindPython looks
        # for the headers beside it.
        f"-DPython3_EXECUTABLE={getattr(sys, '_base_executable', sys.executable)}",
        f"-DPython3_INCLUDE_DIR={include}",
    ]


def check_tools(gpu: bool) -> None:
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if gpu and shutil.which("nvcc") is None:
        missing.append("nvcc")
    if missing:
        raise MoEError(
            f"building the libtorch backend needs {', '.join(missing)} "
            "(`make setup` installs cmake, g++, ninja and rapidjson)"
        )


def build(out: Path, gpu: bool, cuda_architectures: str, log=print) -> None:
    check_tools(gpu)
    with tempfile.TemporaryDirectory(prefix="moe-pytorch-backend-") as tmp:
        # A writable copy: CMake writes next to FetchContent sources in some versions.
        sources = Path(tmp) / "sources"
        shutil.copytree(Path(str(SOURCES)), sources)
        work = Path(tmp) / "build"
        work.mkdir()
        started = time.monotonic()
        log(f"building {LIBRARY} ({'GPU' if gpu else 'CPU'}) against torch {torch_version()[0]} ...")
        for step in (
            ["cmake", *cmake_args(sources, gpu, cuda_architectures)],
            ["cmake", "--build", ".", "--target", "triton-pytorch-backend", "--parallel", str(os.cpu_count() or 2)],
        ):
            result = subprocess.run(step, cwd=work, capture_output=True, text=True)
            if result.returncode != 0:
                tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
                raise MoEError(f"building the libtorch backend failed at `{' '.join(step[:3])} ...`:\n{tail}")
        built = next(work.rglob(LIBRARY), None)
        if built is None:
            raise MoEError(f"the libtorch backend build produced no {LIBRARY}")
        with replaced_folder(out) as folder:
            shutil.copy2(built, folder / LIBRARY)
            (folder / "BUILD_INFO").write_text(
                f"torch {torch_version()[0]} cuda {torch_version()[1]} gpu {gpu} "
                f"cuda_architectures {cuda_architectures}\n"
            )
        log(f"built {out / LIBRARY} in {time.monotonic() - started:.0f}s")


def ensure_built(gpu: bool | None = None, cuda_architectures: str = DEFAULT_CUDA_ARCHITECTURES, log=print) -> Path:
    """The folder holding a libtriton_pytorch.so for the torch installed here; built on first use."""
    gpu = wants_gpu() if gpu is None else gpu
    out = cache_root() / build_key(gpu)
    if (out / LIBRARY).is_file():
        return out
    with locked(cache_root() / ".lock"):
        if not (out / LIBRARY).is_file():
            build(out, gpu, cuda_architectures, log)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", default=None, help="build with GPU support")
    parser.add_argument("--cpu", dest="gpu", action="store_false", help="build without GPU support")
    parser.add_argument("--cuda-architectures", default=DEFAULT_CUDA_ARCHITECTURES)
    args = parser.parse_args(argv)
    try:
        print(ensure_built(args.gpu, args.cuda_architectures, log=lambda m: print(m, file=sys.stderr)))
    except MoEError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
