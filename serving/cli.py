"""`moe`: one command-line entry point for training, evaluation, export, serving and queries."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

import click

from moe.data import DEFAULT_DATA
from moe.errors import MoEError


def friendly_errors(fn):
    """User mistakes become one line on stderr and exit code 2; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoEError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Mixture-of-Experts Transformer on AG News, served by NVIDIA Triton Inference Server."""


@main.command()
@click.option("--preset", default="small", show_default=True, help="tiny, small or seed")
@click.option(
    "--data", default=DEFAULT_DATA, show_default=True, help="folder with train.csv/test.csv (AG News layout), or 'hub'"
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="checkpoint folder to write")
@click.option("--epochs", type=int)
@click.option("--max-train-rows", type=int, help="use only the first N training rows")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--label-smoothing", type=float)
@click.option("--weight-decay", type=float)
@click.option("--seed", type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--save-dtype", type=click.Choice(["float32", "float16"]))
@click.option("--ema-decay", type=float, help="validate and save a moving average of the weights (e.g. 0.999)")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a model hyper-parameter of the preset, e.g. --set d_ff=768",
)
@click.option(
    "--init",
    type=click.Path(path_type=Path, file_okay=False),
    help="start from this pretrained BERT-style Hugging Face folder (sparse upcycling): "
    "it gives the architecture and tokenizer, the preset and --set the routing, "
    "max_len and dropout; training defaults become a fine-tuning schedule",
)
@click.option(
    "--upcycle",
    type=click.Choice(["copy", "slice"]),
    default="copy",
    show_default=True,
    help="with --init: each expert a copy of the layer's FFN, or one of n_experts slices of it",
)
@click.option("--layers", type=int, help="with --init: keep only the encoder's first N layers")
@click.option("--freeze-token-embedding", is_flag=True, default=None, help="keep the pretrained token embeddings")
@click.option(
    "--distill",
    type=click.Path(path_type=Path, file_okay=False),
    help="teacher checkpoint: train on its logits over the training rows and augmented copies",
)
@click.option("--distill-weight", type=float, help="weight of the loss on the teacher's logits (default 0.9)")
@click.option("--distill-temperature", type=float, help="softmax temperature of that loss (default 2)")
@click.option("--augment-copies", type=int, help="augmented copies of each training row (default 3)")
@friendly_errors
def train(preset, data, out, overrides, init, upcycle, layers, distill, **train_options):
    """Train a model and write the best checkpoint (by validation accuracy) to OUT."""
    from moe.config import preset as get_preset
    from moe.train import TRAIN_PRESETS, TrainConfig
    from moe.train import train as run_training

    try:
        cfg = get_preset(preset)
        cfg = dataclasses.replace(cfg, **parse_overrides(cfg, overrides))
    except (ValueError, TypeError) as e:
        raise MoEError(str(e)) from e
    tc = TrainConfig(**TRAIN_PRESETS.get("upcycle" if init else preset, {}))
    tc = dataclasses.replace(tc, **{k: v for k, v in train_options.items() if v is not None})
    history = run_training(
        cfg, tc, data, out, log=click.echo, init=init, upcycle=upcycle, layers=layers, teacher=distill
    )
    click.echo(
        f"best validation accuracy {history['best_val_accuracy'] * 100:.2f}% "
        f"(epoch {history['best_epoch']}), checkpoint in {out}"
    )


def parse_overrides(cfg, overrides) -> dict:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    result = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise MoEError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        kind = type(getattr(cfg, key))
        try:
            result[key] = kind(value)
        except ValueError:
            raise MoEError(f"--set {item!r}: {value!r} is not a valid {kind.__name__}") from None
    return result


@main.command("eval")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--data", default=DEFAULT_DATA, show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a report")
@click.option("--batch-size", default=128, show_default=True)
@friendly_errors
def eval_(checkpoint, data, split, as_json, batch_size):
    """Accuracy, confusion matrix and expert load of CHECKPOINT (default: the bundled one)."""
    from moe.checkpoint import TOKENIZER, load_checkpoint
    from moe.data import load_split
    from moe.evaluate import evaluate, format_report
    from moe.tokenizer import load_fast_tokenizer

    model, path = load_checkpoint(checkpoint)
    rows = load_split(data, split)
    result = evaluate(model, load_fast_tokenizer(path / TOKENIZER), rows, model.cfg, batch_size)
    result["checkpoint"] = str(path)
    click.echo(json.dumps(result) if as_json else format_report(result))


@main.command("export")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="default: build/ in the working directory")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--gpus", type=int, default=None, help="GPUs to spread experts over (default: all visible)")
@click.option(
    "--bls-device",
    type=click.Choice(["auto", "cpu"]),
    default="auto",
    show_default=True,
    help="where v1's BLS runs: auto = with the pieces; cpu = on the CPU whatever their device",
)
@click.option("--full-model-instances", type=int, help="instances of v2's model (default: 2 on the CPU, 1 on a GPU)")
@click.option(
    "--length-group",
    type=int,
    help="v2 runs texts sorted by length in groups of this many (0: one group; default: 16 on the CPU, 0 on a GPU)",
)
@click.option(
    "--expert-fanout",
    type=click.Choice(["auto", "ensemble", "calls"]),
    default="auto",
    show_default=True,
    help="how v1 reaches a layer's experts: one request to the experts ensemble, or one per busy "
    "expert (auto: the ensemble)",
)
@click.option(
    "--v1-groups",
    type=click.IntRange(min=1),
    help="v1 runs each batch as this many length-sorted groups at once (default: 2 on the CPU, 1 on a GPU)",
)
@click.option("--max-batch-size", type=int, default=64, show_default=True)
@click.option(
    "--max-queue-size",
    type=int,
    default=256,
    show_default=True,
    help="requests an entry model queues before it rejects new ones",
)
@click.option(
    "--queue-timeout-ms",
    type=int,
    default=10_000,
    show_default=True,
    help="a request queued longer than this is rejected (clients may ask for less)",
)
@friendly_errors
def export_(
    checkpoint,
    out,
    device,
    gpus,
    bls_device,
    full_model_instances,
    length_group,
    v1_groups,
    expert_fanout,
    max_batch_size,
    max_queue_size,
    queue_timeout_ms,
):
    """Export CHECKPOINT (default: the bundled one) to a Triton model repository."""
    from export.repository import DEFAULT_OUT, ExportOptions, export_repository

    if gpus is None:
        import torch

        gpus = max(1, torch.cuda.device_count()) if device == "cuda" else 1
    opts = ExportOptions(
        device=device,
        gpus=gpus,
        bls_device=bls_device,
        full_model_instances=full_model_instances,
        length_group=length_group,
        v1_groups=v1_groups,
        expert_fanout=expert_fanout,
        max_batch_size=max_batch_size,
        max_queue_size=max_queue_size,
        queue_timeout_us=queue_timeout_ms * 1000,
    )
    export_repository(checkpoint, out or DEFAULT_OUT, opts, log=click.echo)


@main.command()
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
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="address to bind; 0.0.0.0 exposes the server to the network"
)
@click.option("--http-port", default=8000, show_default=True)
@click.option("--grpc-port", default=8001, show_default=True)
@click.option("--metrics-port", default=8002, show_default=True)
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
@click.option(
    "--torch-threads",
    default=1,
    show_default=True,
    help="intra-op threads of the TorchScript models (shared by all of them)",
)
@click.option(
    "--classify",
    "sample_text",
    metavar="TEXT",
    help="once ready, classify TEXT with v1 and v2, print the answers and stop",
)
@click.option("--timeout", default=300.0, show_default=True, help="seconds to wait for readiness")
@friendly_errors
def serve(
    repository,
    checkpoint,
    host,
    http_port,
    grpc_port,
    metrics_port,
    only_experts,
    experts_at,
    admin_key,
    tritonserver,
    backend_directory,
    torch_threads,
    sample_text,
    timeout,
):
    """Serve the model repository with tritonserver (by default the nvidia-pytriton wheel's)."""
    import time

    from export.repository import read_manifest

    from .server import ServerOptions, TritonServer, parse_expert_range

    if only_experts and experts_at:
        raise MoEError(
            "--only-experts and --experts-at exclude each other: an expert server "
            "holds experts, a front server calls them"
        )
    repository = exported(repository, checkpoint)
    models = None
    if only_experts:
        manifest = read_manifest(repository)
        n_experts = manifest["config"]["n_experts"] if manifest else 8
        models = [f"expert_{e}" for e in parse_expert_range(only_experts, n_experts)]
    server = TritonServer(
        ServerOptions(
            repository=repository,
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            models=models,
            admin_key=admin_key,
            tritonserver=tritonserver,
            backend_directory=backend_directory,
            torch_threads=torch_threads,
            experts_at=[u.strip() for u in experts_at.split(",") if u.strip()] if experts_at else [],
        )
    )
    started = time.monotonic()
    click.echo(f"starting tritonserver on {repository} (log: {server.log_path})")
    try:
        server.start(timeout)
        click.echo(
            f"all models ready in {time.monotonic() - started:.1f}s\n"
            f"  HTTP     http://{server.http_url}  (KServe v2: /v2/models/moe_v2/infer)\n"
            f"  gRPC     {server.grpc_url}\n"
            f"  metrics  {server.metrics_url}"
        )
        if models:
            click.echo(f"  serving  {', '.join(models)}")
        if sample_text is not None:
            from moe_client import MoEClient

            with MoEClient(server.http_url) as client:
                for workflow in ("v1", "v2"):
                    p = client.classify(sample_text, workflow=workflow)
                    click.echo(f"moe_{workflow}: {p.label} ({p.confidence:.3f})  <- {sample_text!r}")
            return
        click.echo("Ctrl-C to stop")
        import signal

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        # SIGTERM (docker stop, systemd) stops as cleanly as Ctrl-C; so does SIGINT where a
        # shell started us with it ignored.
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)
        code = server.process.wait()
        raise MoEError(f"tritonserver exited with code {code}:\n{server.error_summary()}")
    except KeyboardInterrupt:
        click.echo("stopping tritonserver")
    finally:
        server.stop()
        server.cleanup()


def exported(repository: Path | None, checkpoint: Path | None) -> Path:
    """The repository to serve: the given one, or build/ (re-)exported from the checkpoint
    when it is missing or holds other weights."""
    from export.repository import DEFAULT_OUT, export_repository, is_current

    if repository is None:
        repository = DEFAULT_OUT
        if not is_current(repository, checkpoint):
            click.echo(f"exporting the checkpoint to {repository} (missing or from other weights)")
            export_repository(checkpoint, repository, log=click.echo)
    elif not repository.exists():
        raise MoEError(f"model repository not found: {repository} (run `moe export`)")
    return repository


@main.command()
@click.argument("texts", nargs=-1)
@click.option(
    "--workflow",
    type=click.Choice(["v1", "v2"]),
    default="v2",
    show_default=True,
    help="v1 distributed pipeline, v2 monolith",
)
@click.option("--url", help="host:port of the server (default: localhost:8000 for http, localhost:8001 for grpc)")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option(
    "--file",
    "file",
    type=click.File("r", encoding="utf-8"),
    help="read one text per line ('-' for stdin); blank lines are skipped",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per text")
@click.option("--routing", is_flag=True, help="tokens each expert got in each layer (--workflow v1)")
@click.option("--timeout", default=30.0, show_default=True, help="seconds per request")
@friendly_errors
def classify(texts, workflow, url, protocol, file, as_json, routing, timeout):
    """Classify TEXTS (and the lines of --file) with the model served by tritonserver."""
    from moe_client import MoEClient, MoEClientError

    texts = list(texts) + ([line.rstrip("\r\n") for line in file if line.strip()] if file else [])
    if not texts:
        raise MoEError("nothing to classify: give TEXTS or --file")
    if routing and workflow != "v1":
        raise MoEError("--routing needs --workflow v1 (the monolith does not report routing)")
    url = url or ("localhost:8000" if protocol == "http" else "localhost:8001")
    try:
        with MoEClient(url, protocol=protocol, workflow=workflow, timeout=timeout) as client:
            predictions = client.classify(texts, return_routing=routing)
    except MoEClientError as e:
        raise MoEError(str(e)) from e
    if as_json:
        for p in predictions:
            click.echo(json.dumps(dataclasses.asdict(p)))
        return
    width = min(60, max(len("TEXT"), *(len(t) for t in texts)))
    click.echo(f"{'TEXT':<{width}}  {'LABEL':<8}  CONFIDENCE" + ("  EXPERT TOKENS PER LAYER" if routing else ""))
    for p in predictions:
        text = " ".join(p.text.split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        row = f"{text:<{width}}  {p.label:<8}  {p.confidence:>10.1%}"
        if routing:
            row += "  " + " | ".join(" ".join(map(str, layer)) for layer in p.expert_tokens)
        click.echo(row)


def local_server(repository: Path, torch_threads: int = 1):
    """A tritonserver on free loopback ports for `moe bench` and `moe loadtest`."""
    from .server import ServerOptions, TritonServer, free_ports

    http_port, grpc_port, metrics_port = free_ports(3)
    return TritonServer(
        ServerOptions(
            repository=repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            torch_threads=torch_threads,
        )
    )


@main.command()
@click.option("--url", help="gRPC address of a running server (default: start one on free ports)")
@click.option(
    "--repository", type=click.Path(path_type=Path), help="repository to serve (default: build/, exported on first use)"
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="checkpoint whose eager labels every answer is checked against (default: bundled)",
)
@click.option("--data", default=DEFAULT_DATA, show_default=True)
@click.option("--requests", default=10000, show_default=True)
@click.option("--concurrency", default=64, show_default=True)
@click.option("--workflows", default="v1,v2", show_default=True)
@click.option("--json-out", type=click.Path(path_type=Path), help="write the summary as JSON here")
@friendly_errors
def loadtest(url, repository, checkpoint, data, requests, concurrency, workflows, json_out):
    """Closed-loop load of mixed workflows and batch sizes; every answer checked against eager."""
    import asyncio

    from tqdm.auto import tqdm

    from bench.baseline import eager_labels
    from bench.load import closed_loop, mixed_plan
    from moe.data import load_split
    from moe_client import AsyncMoEClient

    texts = load_split(data, "test").texts
    plan = mixed_plan(texts, requests, workflows=tuple(w.strip() for w in workflows.split(",")))
    click.echo(f"eager reference labels for {len(texts)} test texts ...")
    labels = eager_labels(checkpoint, texts)
    server = None
    if url is None:
        server = local_server(exported(repository, checkpoint)).start()
        url = server.grpc_url

    async def run():
        async with AsyncMoEClient(url, protocol="grpc", timeout=60, retries=0) as client:
            with tqdm(total=requests, desc=f"load x{concurrency}", unit="req") as bar:
                return await closed_loop(client, plan, concurrency, progress=bar.update)

    try:
        result = asyncio.run(run())
    finally:
        if server is not None:
            server.stop()
            server.cleanup()
    summary = {
        "url": url,
        "concurrency": concurrency,
        **result.summary(),
        "wrong_answers": result.wrong_answers(plan, labels),
    }
    click.echo(json.dumps(summary, indent=2))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2) + "\n")
    if summary["errors"] or summary["wrong_answers"]:
        sys.exit(1)


def int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 1,4,16") from None


@main.command()
@click.option(
    "--url",
    help="host:port of a running server (default: export the checkpoint and "
    "start one on free ports, which also measures cold start and memory)",
)
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option(
    "--load-client",
    type=click.Choice(["auto", "raw", "moe_client"]),
    default="auto",
    show_default=True,
    help="what sends the requests: raw = a lean HTTP client, a third of the CPU per request "
    "(it shares the cores with the server here); moe_client = the product's AsyncMoEClient; "
    "auto = raw over HTTP, moe_client over gRPC",
)
@click.option("--workflows", default="v1,v2", show_default=True)
@click.option(
    "--concurrency",
    default="1,16,64",
    show_default=True,
    help="closed-loop concurrency levels (workers each with one request in flight)",
)
@click.option(
    "--batch-size",
    "batch_sizes",
    default="1",
    show_default=True,
    help="texts per request, one or more (e.g. 1,32); each runs every level",
)
@click.option(
    "--requests", type=int, default=None, help="timed requests per level (default: 300, and at least 20 per worker)"
)
@click.option(
    "--batched-baseline",
    default=16,
    show_default=True,
    help="texts per batch of the batched in-process baseline (0: none)",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="model of the in-process baselines and of the export (default: bundled)",
)
@click.option("--device", default="cpu", show_default=True, help="device of the in-process baselines")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="AG News folder (test.csv texts)")
@click.option("--out", type=click.Path(path_type=Path), help="results folder (default: build/bench/)")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    help="serve this exported repository (default: export the checkpoint to OUT/repository)",
)
@click.option("--metrics-url", help="with --url: Prometheus endpoint (default http://HOST:8002/metrics)")
@click.option("--torch-threads", default=1, show_default=True, help="the server's TorchScript threads")
@click.option(
    "--targets",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help="which targets the report checks",
)
@click.option("--server-log", type=click.Path(path_type=Path), help="keep the log of the server the bench starts here")
@click.option("--no-plots", is_flag=True)
@friendly_errors
def bench(
    url,
    protocol,
    load_client,
    workflows,
    concurrency,
    batch_sizes,
    requests,
    batched_baseline,
    checkpoint,
    device,
    data,
    out,
    repository,
    metrics_url,
    torch_threads,
    targets,
    server_log,
    no_plots,
):
    """Served throughput and latency of v1 and v2 against the in-process eager model."""
    import shlex
    import time

    from bench.served import DEFAULT_OUT, BenchOptions, Endpoint, run_bench
    from export.repository import ExportOptions, export_repository, read_manifest

    opts = BenchOptions(
        workflows=[w.strip() for w in workflows.split(",") if w.strip()],
        concurrency=int_list(concurrency),
        batch_sizes=int_list(batch_sizes),
        requests=requests,
        batched_baseline=batched_baseline,
        protocol=protocol,
        load_client=load_client,
        checkpoint=checkpoint,
        device=device,
        data=Path(data),
        out=out or DEFAULT_OUT,
        targets=targets,
        plots=not no_plots,
    )
    args = sys.argv[sys.argv.index("bench") + 1 :] if "bench" in sys.argv else []
    command = " ".join(["moe bench", *map(shlex.quote, args)])
    server = None
    try:
        if url is not None:
            host = url.rsplit(":", 1)[0]
            endpoint = Endpoint(
                url=url,
                http_url=url if protocol == "http" else f"{host}:8000",
                metrics_url=metrics_url or f"http://{host}:8002/metrics",
            )
        else:
            if repository is None:
                repository = Path(opts.out) / "repository"
                click.echo(f"exporting {checkpoint or 'the bundled checkpoint'} to {repository}")
                export_repository(checkpoint, repository, ExportOptions(), progress=False, log=lambda *_: None)
            server = local_server(repository, torch_threads)
            started = time.monotonic()
            server.start(timeout=300)
            cold = time.monotonic() - started
            click.echo(f"all models ready {cold:.1f}s after launch")
            endpoint = Endpoint(
                url=server.http_url if protocol == "http" else server.grpc_url,
                http_url=server.http_url,
                metrics_url=server.metrics_url,
                cold_start_s=round(cold, 2),
                memory=server.memory,
                rss_mb=server.rss_mb,
                facts=dict(
                    repository=str(repository),
                    torch_threads=torch_threads,
                    export=(read_manifest(repository) or {}).get("options"),
                ),
            )
        result = run_bench(opts, endpoint, log=click.echo, command=command)
    finally:
        if server is not None:
            server.stop()
            if server_log is not None:
                server_log.write_text(server.log_text())
            server.cleanup()
    out = Path(opts.out)
    click.echo((out / "bench.md").read_text())
    click.echo(f"results in {out}: {', '.join(result.get('files', []))}")


if __name__ == "__main__":
    main()
