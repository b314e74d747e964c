"""`moe serve`: every server option a field of serving.server.ServerOptions, its default read
there."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from moe.errors import MoEError

from ..server import TRACE_LOG_FREQUENCY, ServerOptions, TritonServer
from .common import exported, field_option, friendly_errors


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


def expert_models(repository: Path, only_experts: str | None) -> list[str] | None:
    """The expert models an expert server serves (None: every model)."""
    if not only_experts:
        return None
    from export.repository import read_manifest

    manifest = read_manifest(repository)
    n_experts = manifest["config"]["n_experts"] if manifest else 8
    return [f"expert_{e}" for e in parse_expert_range(only_experts, n_experts)]


def classify_sample(server: TritonServer, text: str) -> None:
    from moe_client import MoEClient

    with MoEClient(server.http_url) as client:
        for workflow in ("v1", "v2"):
            p = client.classify(text, workflow=workflow)
            click.echo(f"moe_{workflow}: {p.label} ({p.confidence:.3f})  <- {text!r}")


def wait_for_signal(server: TritonServer) -> None:
    """Until Ctrl-C or SIGTERM (docker stop, systemd), which stop as cleanly; also SIGINT where
    a shell started us with it ignored. A server that exits by itself is an error."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    code = server.process.wait()
    raise MoEError(f"tritonserver exited with code {code}:\n{server.error_summary()}")


@click.command()
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    help="export folder or model repository (default: build/, exported on first use)",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="checkpoint to export when the repository does not exist yet (default: bundled)",
)
@field_option(ServerOptions, "host", help="address to bind; 0.0.0.0 exposes the server to the network")
@field_option(ServerOptions, "http_port")
@field_option(ServerOptions, "grpc_port")
@field_option(ServerOptions, "metrics_port")
@click.option(
    "--only-experts",
    metavar="LIST",
    help="serve only these expert models, e.g. 0-3 (an expert server for --experts-at)",
)
@click.option(
    "--experts-at",
    metavar="HOST:PORT[,HOST:PORT...]",
    help="gRPC addresses of expert servers: v1 calls its experts there",
)
@click.option(
    "--admin-key",
    envvar="MOE_ADMIN_KEY",
    help="value of the moe-admin-key header that opens the repository, logging, trace "
    "and shared-memory APIs (env MOE_ADMIN_KEY); without it they stay closed",
)
@click.option(
    "--tritonserver",
    type=click.Path(path_type=Path),
    envvar="MOE_TRITONSERVER",
    help="another tritonserver binary (env MOE_TRITONSERVER; default: the nvidia-pytriton wheel's)",
)
@click.option(
    "--backend-directory",
    type=click.Path(path_type=Path),
    envvar="MOE_BACKEND_DIRECTORY",
    help="its backends (env MOE_BACKEND_DIRECTORY), e.g. /opt/tritonserver/backends",
)
@field_option(ServerOptions, "torch_threads", help="intra-op threads of the TorchScript models (shared by all of them)")
@field_option(
    ServerOptions,
    "cuda_memory_pool_mb",
    type=click.IntRange(min=1),
    help="MB per GPU of the pool Python models pass GPU tensors through (default: sized for v1's BLS "
    "from the export; Triton's 64 for a CPU export)",
)
@field_option(
    ServerOptions,
    "http_threads",
    type=click.IntRange(min=1),
    help="threads of Triton's HTTP front end (default: as the export sized them, twice the cores of "
    "a GPU host; Triton's 8 for a CPU export)",
)
@field_option(
    ServerOptions,
    "trace_file",
    type=click.Path(path_type=Path),
    help="write Triton's request trace here (timestamps of sampled requests and their ensemble "
    f"steps; every {TRACE_LOG_FREQUENCY} traces as FILE.0, FILE.1, ..., the rest as FILE at shutdown; "
    "`python -m bench.trace FILE` summarises them all)",
)
@field_option(ServerOptions, "trace_rate", type=click.IntRange(min=1), help="with --trace-file: trace one request in N")
@click.option(
    "--classify",
    "sample_text",
    metavar="TEXT",
    help="once ready, classify TEXT with v1 and v2, print the answers and stop",
)
@click.option("--timeout", default=300.0, show_default=True, help="seconds to wait for readiness")
@friendly_errors
def serve(repository, checkpoint, only_experts, experts_at, sample_text, timeout, **options):
    """Serve the model repository with tritonserver (by default the nvidia-pytriton wheel's)."""
    if only_experts and experts_at:
        raise MoEError(
            "--only-experts and --experts-at exclude each other: an expert server "
            "holds experts, a front server calls them"
        )
    repository = exported(repository, checkpoint)
    models = expert_models(repository, only_experts)
    server = TritonServer(
        ServerOptions(
            repository=repository,
            models=models,
            experts_at=[u.strip() for u in experts_at.split(",") if u.strip()] if experts_at else [],
            ready_timeout_s=timeout,
            **options,
        )
    )
    started = time.monotonic()
    click.echo(f"starting tritonserver on {repository} (log: {server.log_path})")
    try:
        with server:
            click.echo(
                f"all models ready in {time.monotonic() - started:.1f}s\n"
                f"  HTTP     http://{server.http_url}  (KServe v2: /v2/models/moe_v2/infer)\n"
                f"  gRPC     {server.grpc_url}\n"
                f"  metrics  {server.metrics_url}"
            )
            if models:
                click.echo(f"  serving  {', '.join(models)}")
            if sample_text is not None:
                classify_sample(server, sample_text)
                return
            click.echo("Ctrl-C to stop")
            wait_for_signal(server)
    except KeyboardInterrupt:
        click.echo("stopping tritonserver")
