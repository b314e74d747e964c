"""Run tritonserver on an exported model repository: by default the binary shipped in the
nvidia-pytriton wheel, with its Python backend and NVIDIA's libtorch backend built here."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from export.repository import DEFAULT_OUT
from moe.errors import MoEError
from moe_client import ADMIN_HEADER


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


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on loopback now (for tests, benchmarks and load runs)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def repositories(root: Path) -> list[Path]:
    """`root` is an export folder (model_repository/ + ensemble/) or a plain model repository."""
    root = Path(root)
    if (root / "model_repository").is_dir():
        return [p for p in (root / "model_repository", root / "ensemble") if p.is_dir()]
    if root.is_dir():
        return [root]
    raise MoEError(f"model repository not found: {root} (run `moe export` first)")


# Triton API groups closed unless the caller sends the admin header (Triton's restricted APIs):
# repository index/load/unload, shared-memory registration, log settings and tracing.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")


def parse_expert_range(spec: str, n_experts: int = 8) -> list[int]:
    """'0-3' / '0,2,5' / '4-7,1' -> sorted expert indices."""
    experts = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            experts.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise MoEError(f"expert list {spec!r}: expected e.g. 0-3 or 0,2,5") from None
    bad = sorted(e for e in experts if not 0 <= e < n_experts)
    if bad or not experts:
        raise MoEError(f"expert list {spec!r}: experts are numbered 0..{n_experts - 1}")
    return sorted(experts)


def _proc_stat_parent(pid: int) -> int | None:
    try:
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def parents() -> dict[int, int | None]:
    """pid -> parent pid of every process now."""
    return {int(p.name): _proc_stat_parent(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    # The kernel's list of each thread's children: a few reads, where scanning every process of
    # the machine twice a second cost the supervising process 1-2 % of a core. The scan remains
    # for kernels without the list.
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return [child for child, parent in parents().items() if parent == pid]


def process_tree(root: int) -> list[int]:
    """root and every process below it."""
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children(pid))
    return tree


def cmdline(pid: int) -> list[str]:
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def gpu_memory_mb(pids: list[int]) -> dict[int, float] | None:
    """GPU memory used by each of `pids` (nvidia-smi); None without a GPU driver."""
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        return None
    used: dict[int, float] = {}
    for line in result.stdout.splitlines():
        pid, _, mb = line.partition(",")
        if pid.strip().isdigit() and int(pid) in pids:
            used[int(pid)] = used.get(int(pid), 0.0) + float(mb)
    return used


def _env_path(name: str) -> Path | None:
    return Path(os.environ[name]) if os.environ.get(name) else None


@dataclass
class ServerOptions:
    repository: Path = DEFAULT_OUT
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    # Serve only these models of the repository (None: all). `--only-experts 0-3` uses it.
    models: list[str] | None = None
    # Other Triton servers holding the expert models (`--experts-at`): v1 calls them over gRPC.
    experts_at: list[str] = field(default_factory=list)
    # Header value that opens the restricted APIs; None: a random one, so they stay closed.
    admin_key: str | None = None
    # Another tritonserver and its backends (NVIDIA's container: /opt/tritonserver/...);
    # default: the binary of the nvidia-pytriton wheel and a backend folder made from it.
    tritonserver: Path | None = field(default_factory=lambda: _env_path("MOE_TRITONSERVER"))
    backend_directory: Path | None = field(default_factory=lambda: _env_path("MOE_BACKEND_DIRECTORY"))
    # Intra-op threads of the TorchScript models (all of them share the server's pool).
    torch_threads: int = 1
    extra_args: list[str] = field(default_factory=list)
    log_verbose: int = 0


class TritonServer:
    """A tritonserver process: start() waits until every model is ready or reports the
    server's own error; stop() shuts it down cleanly (SIGINT, as Ctrl-C would)."""

    def __init__(self, opts: ServerOptions):
        self.opts = opts
        # Opens the restricted APIs; known to this process (for stub recovery), never logged.
        self.admin_key = opts.admin_key or secrets.token_urlsafe(32)
        self.restarts: list[str] = []  # models reloaded after their stub died
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
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

    def repository_args(self) -> list[str]:
        roots = repositories(self.opts.repository)
        keep = self.opts.models
        if keep is None and self.opts.experts_at:
            # Experts live on the other servers: serve everything else here, except the ensemble
            # that runs local experts (the BLS calls remote ones one by one).
            keep = [m.name for r in roots for m in r.iterdir() if not m.name.startswith(("expert_", "experts"))]
        if keep is None:
            return [f"--model-repository={r}" for r in roots]
        # A view of the repository with only the chosen models (symbolic links, nothing copied).
        available = {m.name: m for r in roots for m in r.iterdir() if (m / "config.pbtxt").is_file()}
        unknown = sorted(set(keep) - set(available))
        if unknown:
            raise MoEError(f"not in the repository {self.opts.repository}: {', '.join(unknown)}")
        view = self.workdir / "repository"
        view.mkdir(exist_ok=True)
        for name in keep:
            (view / name).symlink_to(available[name].resolve(), target_is_directory=True)
        return [f"--model-repository={view}"]

    def restricted_api_args(self) -> list[str]:
        rule = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]

    def command(self) -> list[str]:
        o = self.opts
        binary = o.tritonserver or triton_dist()[0] / "bin" / "tritonserver"
        backends = o.backend_directory or prepare_backends(self.workdir / "backends")
        cmd = [str(binary), *self.repository_args(), *self.restricted_api_args()]
        cmd += [
            f"--backend-directory={backends}",
            f"--cache-directory={self.workdir / 'cache'}",
            f"--http-address={o.host}",
            f"--http-port={o.http_port}",
            f"--grpc-address={o.host}",
            f"--grpc-port={o.grpc_port}",
            f"--metrics-address={o.host}",
            f"--metrics-port={o.metrics_port}",
            # Explicit mode only so that this process can reload a model whose stub died; the
            # load/unload endpoints sit behind the admin header like the rest of the
            # repository API, so for everyone else model control stays closed.
            "--model-control-mode=explicit",
            "--load-model=*",
            "--exit-timeout-secs=5",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--disable-auto-complete-config",  # serve the configs exactly as exported
            f"--log-verbose={o.log_verbose}",
        ]
        return cmd + list(o.extra_args)

    def start(self, timeout: float = 180.0) -> TritonServer:
        log = open(self.log_path, "wb")
        env = server_env(bundled=self.opts.tritonserver is None, torch_threads=self.opts.torch_threads)
        if self.opts.experts_at:
            env["MOE_REMOTE_EXPERTS"] = ",".join(self.opts.experts_at)
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        self.wait_ready(timeout)
        self._supervisor = threading.Thread(target=self._supervise, name="stub-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def stubs(self) -> dict[str, int]:
        """Model name -> pid of its Python backend stub (one instance per Python model here)."""
        found = {}
        for pid in children(self.process.pid):
            args = cmdline(pid)
            if args and args[0].endswith("triton_python_backend_stub"):
                found[Path(args[1]).parent.parent.name] = pid
        return found

    def rss_mb(self) -> float:
        """Resident memory of tritonserver and every process below it, in MB: a few small reads,
        where `memory` also reads each process's page map for PSS (tens of ms)."""
        return round(sum(status_kb(p, "VmRSS") for p in process_tree(self.process.pid)) / 1024, 1)

    def memory(self) -> dict:
        """Resident memory of tritonserver and every process below it (the Python stubs), in MB:
        RSS, and PSS (pages shared between processes counted once); GPU memory per process
        where nvidia-smi answers."""
        stubs = self.stubs()
        pids = process_tree(self.process.pid)
        names = {pid: name for name, pid in stubs.items()} | {self.process.pid: "tritonserver"}
        result = dict(
            processes=len(pids),
            python_stubs=len(stubs),
            rss_mb=round(sum(status_kb(p, "VmRSS") for p in pids) / 1024, 1),
            pss_mb=round(sum(pss_kb(p) for p in pids) / 1024, 1),
            tritonserver_rss_mb=round(status_kb(self.process.pid, "VmRSS") / 1024, 1),
            stub_rss_mb={name: round(status_kb(pid, "VmRSS") / 1024, 1) for name, pid in sorted(stubs.items())},
        )
        gpu = gpu_memory_mb(pids)
        if gpu is not None:
            result["gpu_mb"] = {names.get(pid, str(pid)): mb for pid, mb in gpu.items()}
        return result

    def _repository_call(self, model: str, action: str) -> None:
        request = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/models/{model}/{action}",
            data=b"{}",
            method="POST",
            headers={ADMIN_HEADER: self.admin_key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()

    def reload(self, model: str) -> None:
        # A load of an unchanged, loaded model is a no-op in Triton: unload it first.
        self._repository_call(model, "unload")
        self._repository_call(model, "load")

    def _supervise(self, interval: float = 0.5) -> None:
        """Triton's Python backend does not restart a stub that died (OOM kill, crash): its
        model answers every request with "Stub process ... is not healthy". Reload such a model."""
        known = self.stubs()
        while not self._stopping.wait(interval):
            if self.process.poll() is not None:
                return
            alive = self.stubs()
            for model in sorted(set(known) - set(alive)):
                if self._stopping.is_set():
                    return
                try:
                    self.reload(model)
                    self.restarts.append(model)
                except OSError:
                    continue  # retried at the next pass
            known = self.stubs()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def error_summary(self) -> str:
        # CUDA/NVML/DCGM complaints are expected on a machine without a GPU: not the cause.
        noise = ("CUDA", "NVML", "DCGM", "CudaDriverHelper", "pb_stub.cc")
        lines = [
            l
            for l in self.log_text().splitlines()
            if (l[:1] == "E" or "error" in l.lower()) and not any(n in l for n in noise)
        ]
        return "\n".join(lines[-8:]) or self.log_text()[-2000:]

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
                raise MoEError(
                    f"tritonserver exited with code {self.process.returncode} before "
                    f"all models were ready:\n{self.error_summary()}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise MoEError(f"tritonserver was not ready after {timeout:.0f}s:\n{self.error_summary()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=130)
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
