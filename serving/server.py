"""A tritonserver process on an exported model repository: its command line, start until every
model is ready (or the server's own error), clean stop, memory, and the supervision of its
Python stubs. The binary and backends: serving/backends.py; /proc accounting:
serving/processes.py; stub supervision: serving/supervisor.py."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from export.repository import DEFAULT_OUT, read_manifest
from moe.errors import MoEError
from moe_client import ADMIN_HEADER

from .backends import prepare_backends, server_env, triton_dist
from .processes import status_kb, tree_memory, tree_rss_mb
from .supervisor import StubSupervisor, python_stubs


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
TRACE_LOG_FREQUENCY = 100  # traces per file Triton writes while it runs (bench/trace.trace_files)


# Tensors of the largest batch ([texts, max_len, d_model] floats) one BLS execution keeps in the
# pool at its peak: a layer's front answers (X_OUT, H), its experts' answers and the previous
# layer's (held until the next answer is back), and the inputs handed to the pieces.
BLS_POOL_TENSORS = 12


def cuda_memory_pool_mb(manifest: dict | None) -> int | None:
    """Per GPU, the pool Triton's Python backend hands GPU tensors through, for a repository
    exported for GPUs (None: Triton's default, 64 MB). v1's BLS passes every activation through
    it; when it is full they go through host memory instead, and on an H200 v1 with batches of 32
    fell to 2,124 texts/s with its queue overflowing (docs/gpu_serving.md)."""
    options, config = (manifest or {}).get("options") or {}, (manifest or {}).get("config") or {}
    if options.get("device") != "cuda":
        return None
    batch_bytes = options["bls_max_batch"] * config["max_len"] * config["d_model"] * 4
    return max(64, -(-options["bls_instances"] * BLS_POOL_TENSORS * batch_bytes // 2**20))


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
    # MB per GPU of the pool the Python backend passes GPU tensors through (None: sized from the
    # export, cuda_memory_pool_mb).
    cuda_memory_pool_mb: int | None = None
    # Threads of Triton's HTTP front end, which parse each request's JSON and write its answer
    # (None: as the export sized them for its host, http_thread_args).
    http_threads: int | None = None
    # Triton's request trace (timestamps of each sampled request and of the model executions
    # it makes, ensemble steps included) written to this JSON file; bench/trace.py reads it.
    trace_file: Path | None = None
    # Trace one request in this many.
    trace_rate: int = 100
    extra_args: list[str] = field(default_factory=list)
    log_verbose: int = 0
    # Seconds start() waits for every model to be ready.
    ready_timeout_s: float = 180.0
    # Where the server's log is copied when it is cleaned up (None: not kept).
    keep_log: Path | None = None


class TritonServer:
    """A tritonserver process: start() waits until every model is ready or reports the
    server's own error; stop() shuts it down cleanly (SIGINT, as Ctrl-C would)."""

    def __init__(self, opts: ServerOptions):
        self.opts = opts
        # Opens the restricted APIs; known to this process (for stub recovery), never logged.
        self.admin_key = opts.admin_key or secrets.token_urlsafe(32)
        self._supervisor: StubSupervisor | None = None
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
            *self.cuda_pool_args(),
            *self.http_thread_args(),
            *self.trace_args(),
        ]
        return cmd + list(o.extra_args)

    def trace_args(self) -> list[str]:
        if self.opts.trace_file is None:
            return []
        return [
            f"--trace-config=triton,file={Path(self.opts.trace_file).resolve()}",
            # Written as they are collected, so a server that does not stop cleanly leaves them.
            f"--trace-config=triton,log-frequency={TRACE_LOG_FREQUENCY}",
            f"--trace-config=rate={self.opts.trace_rate}",
            "--trace-config=level=TIMESTAMPS",
        ]

    @property
    def http_threads(self) -> int | None:
        """As asked, else as the export sized them for its host (export/host_sizing.py); None:
        Triton's default (a CPU export, or one written before the export sized them)."""
        asked = self.opts.http_threads
        if asked is None:
            asked = ((read_manifest(self.opts.repository) or {}).get("options") or {}).get("http_threads")
        return asked or None

    def http_thread_args(self) -> list[str]:
        return [f"--http-thread-count={self.http_threads}"] if self.http_threads else []

    def cuda_pool_args(self) -> list[str]:
        manifest = read_manifest(self.opts.repository)
        mb = self.opts.cuda_memory_pool_mb or cuda_memory_pool_mb(manifest)
        if mb is None:
            return []
        gpus = ((manifest or {}).get("options") or {}).get("gpus", 1)
        return [f"--cuda-memory-pool-byte-size={gpu}:{mb * 2**20}" for gpu in range(gpus)]

    @property
    def restarts(self) -> list[str]:
        """Models reloaded after their stub died."""
        return self._supervisor.restarts if self._supervisor else []

    def start(self, timeout: float | None = None) -> TritonServer:
        log = open(self.log_path, "wb")
        env = server_env(bundled=self.opts.tritonserver is None, torch_threads=self.opts.torch_threads)
        if self.opts.experts_at:
            env["MOE_REMOTE_EXPERTS"] = ",".join(self.opts.experts_at)
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        self.wait_ready(self.opts.ready_timeout_s if timeout is None else timeout)
        self._supervisor = StubSupervisor(self.process, self.http_url, self.admin_key).start()
        return self

    def stubs(self) -> dict[str, int]:
        """Model name -> pid of its Python backend stub."""
        return python_stubs(self.process.pid)

    def rss_mb(self) -> float:
        """Resident memory of tritonserver and every process below it, in MB (cheap)."""
        return tree_rss_mb(self.process.pid)

    def memory(self) -> dict:
        """Resident memory of tritonserver and every process below it (the Python stubs), in MB:
        RSS, and PSS (pages shared between processes counted once); GPU memory per process
        where nvidia-smi answers."""
        stubs = self.stubs()
        names = {pid: name for name, pid in stubs.items()} | {self.process.pid: "tritonserver"}
        tree = tree_memory(self.process.pid, names)
        result = dict(
            processes=tree["processes"],
            python_stubs=len(stubs),
            rss_mb=tree["rss_mb"],
            pss_mb=tree["pss_mb"],
            tritonserver_rss_mb=round(status_kb(self.process.pid, "VmRSS") / 1024, 1),
            stub_rss_mb={name: round(status_kb(pid, "VmRSS") / 1024, 1) for name, pid in sorted(stubs.items())},
        )
        if "gpu_mb" in tree:
            result["gpu_mb"] = tree["gpu_mb"]
        return result

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def error_summary(self) -> str:
        # CUDA/NVML/DCGM complaints are expected on a machine without a GPU: not the cause. A
        # model that failed to load is, whatever its message names.
        noise = ("CUDA", "NVML", "DCGM", "CudaDriverHelper", "pb_stub.cc")
        lines = [
            l
            for l in self.log_text().splitlines()
            if (l[:1] == "E" or "error" in l.lower()) and ("failed to load" in l or not any(n in l for n in noise))
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
        if self._supervisor is not None:
            self._supervisor.stop()
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode if self.process else None

    def cleanup(self) -> None:
        if self.opts.keep_log is not None:
            self.opts.keep_log.write_text(self.log_text())
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        """The started server; stopped and cleaned up when the block ends, or here if it never
        became ready (Ctrl-C while waiting included)."""
        try:
            return self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()


def local_server(repository: Path, **options) -> TritonServer:
    """A tritonserver on free loopback ports (`moe bench`, `moe loadtest`, the tests): use it
    as a context manager, `with local_server(repository) as server: ...`."""
    http_port, grpc_port, metrics_port = free_ports(3)
    return TritonServer(
        ServerOptions(
            repository=repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, **options
        )
    )
