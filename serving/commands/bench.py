"""`moe bench`: every measuring option a field of bench.options.BenchOptions, its default read
there; a server on free ports unless --url names a running one."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from pathlib import Path

import click

from bench.options import DEFAULT_OUT, LOAD_CLIENTS, BenchOptions, Endpoint
from moe.errors import MoEError

from ..server import ServerOptions, local_server
from .common import field_option, friendly_errors


def running_endpoint(url: str, protocol: str, metrics_url: str | None) -> Endpoint:
    host = url.rsplit(":", 1)[0]
    return Endpoint(
        url=url,
        http_url=url if protocol == "http" else f"{host}:8000",
        metrics_url=metrics_url or f"http://{host}:8002/metrics",
    )


@contextlib.contextmanager
def started_endpoint(
    opts: BenchOptions,
    repository: Path | None,
    torch_threads: int,
    http_threads: int | None,
    server_log: Path | None,
    trace_rate: int = 0,
):
    """A server this command starts (exporting the checkpoint first if no repository is given),
    as an Endpoint with its cold start and memory."""
    from export.repository import ExportOptions, export_repository, read_manifest

    if repository is None:
        repository = Path(opts.out) / "repository"
        click.echo(f"exporting {opts.checkpoint or 'the bundled checkpoint'} to {repository}")
        export_repository(opts.checkpoint, repository, ExportOptions(), progress=False, log=lambda *_: None)
    started = time.monotonic()
    trace = dict(trace_file=Path(opts.out) / "trace.json", trace_rate=trace_rate) if trace_rate else {}
    with local_server(
        repository,
        torch_threads=torch_threads,
        http_threads=http_threads,
        ready_timeout_s=300,
        keep_log=server_log,
        **trace,
    ) as server:
        cold = time.monotonic() - started
        click.echo(f"all models ready {cold:.1f}s after launch")
        yield Endpoint(
            url=server.http_url if opts.protocol == "http" else server.grpc_url,
            http_url=server.http_url,
            metrics_url=server.metrics_url,
            cold_start_s=round(cold, 2),
            memory=server.memory,
            rss_mb=server.rss_mb,
            facts=dict(
                repository=str(repository),
                torch_threads=torch_threads,
                # As tritonserver got them (None: Triton's default).
                http_threads=server.http_threads,
                export=(read_manifest(repository) or {}).get("options"),
            ),
        )


@click.command()
@click.option(
    "--url",
    help="host:port of a running server (default: export the checkpoint and "
    "start one on free ports, which also measures cold start and memory)",
)
@field_option(BenchOptions, "protocol", type=click.Choice(["http", "grpc"]))
@field_option(
    BenchOptions,
    "load_client",
    type=click.Choice(list(LOAD_CLIENTS)),
    help="what sends the requests: " + "; ".join(f"{k} = {v}" for k, v in LOAD_CLIENTS.items()),
)
@field_option(BenchOptions, "level_seconds", help="how long each level runs with wrk")
@field_option(BenchOptions, "workflows")
@field_option(
    BenchOptions, "concurrency", help="closed-loop concurrency levels (workers each with one request in flight)"
)
@field_option(
    BenchOptions,
    "batch_sizes",
    "--batch-size",
    help="texts per request, one or more (e.g. 1,32); each runs every level",
)
@field_option(
    BenchOptions, "requests", type=int, help="timed requests per level (default: 300, and at least 20 per worker)"
)
@field_option(BenchOptions, "batched_baseline", help="texts per batch of the batched in-process baseline (0: none)")
@field_option(
    BenchOptions,
    "checkpoint",
    type=click.Path(path_type=Path),
    help="model of the in-process baselines and of the export (default: bundled)",
)
@field_option(BenchOptions, "device", help="device of the in-process baselines")
@field_option(BenchOptions, "data", type=click.Path(path_type=Path), help="AG News folder (test.csv texts)")
@click.option("--out", type=click.Path(path_type=Path), help="results folder (default: build/bench/)")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    help="serve this exported repository (default: export the checkpoint to OUT/repository)",
)
@click.option("--metrics-url", help="with --url: Prometheus endpoint (default http://HOST:8002/metrics)")
@field_option(ServerOptions, "torch_threads", help="the server's TorchScript threads")
@field_option(
    ServerOptions,
    "http_threads",
    type=click.IntRange(min=1),
    help="the server's HTTP threads (default: as the export sized them)",
)
@field_option(BenchOptions, "targets", type=click.Choice(["cpu", "gpu"]), help="which targets the report checks")
@click.option("--server-log", type=click.Path(path_type=Path), help="keep the log of the server the bench starts here")
@click.option(
    "--trace-rate",
    type=click.IntRange(min=0),
    default=0,
    help="trace one request in N through the server the bench starts (0: none): OUT/trace.json* and, "
    "after it stops, where each traced request's time went in OUT/trace.md; every level is traced, "
    "so bench one level to compare it with that level's latency",
)
@click.option("--no-plots", is_flag=True)
@friendly_errors
def bench(url, out, repository, metrics_url, torch_threads, http_threads, server_log, trace_rate, no_plots, **options):
    """Served throughput and latency of v1 and v2 against the in-process eager model."""
    from bench.served import run_bench

    opts = BenchOptions(out=out or DEFAULT_OUT, plots=not no_plots, **options)
    args = sys.argv[sys.argv.index("bench") + 1 :] if "bench" in sys.argv else []
    command = " ".join(["moe bench", *map(shlex.quote, args)])
    if url is not None:
        if trace_rate:
            raise MoEError("--trace-rate traces the server the bench starts; with --url, start yours with --trace-file")
        endpoint = contextlib.nullcontext(running_endpoint(url, opts.protocol, metrics_url))
    else:
        endpoint = started_endpoint(opts, repository, torch_threads, http_threads, server_log, trace_rate)
    with endpoint as where:
        result = run_bench(opts, where, log=click.echo, command=command)
    out = Path(opts.out)
    click.echo((out / "bench.md").read_text())
    files = result.get("files", [])
    if trace_rate:  # read once the server has stopped: Triton writes the last traces as it goes
        from bench.trace import load_traces, markdown, summarize, trace_files

        summary = summarize(load_traces(out / "trace.json"))
        (out / "trace-summary.json").write_text(json.dumps(summary, indent=1))
        (out / "trace.md").write_text(markdown(summary))
        click.echo(markdown(summary))
        files += [p.name for p in trace_files(out / "trace.json")] + ["trace-summary.json", "trace.md"]
    click.echo(f"results in {out}: {', '.join(files)}")
