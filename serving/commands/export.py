"""`moe export`: every option a field of export.options.ExportOptions, its default read there."""

from __future__ import annotations

from pathlib import Path

import click

from export.options import DEFAULT_OUT, FULL_MODEL_DTYPE_CHOICES, GPU_WAITS, GRAPH_EXPERTS, ExportOptions

from .common import field_option, friendly_errors


@click.command("export")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="default: build/ in the working directory")
@field_option(ExportOptions, "device", type=click.Choice(["cpu", "cuda"]))
@click.option("--gpus", type=int, default=None, help="GPUs to spread experts over (default: all visible)")
@field_option(
    ExportOptions,
    "bls_device",
    type=click.Choice(["auto", "cpu"]),
    help="where v1's BLS runs: auto = with the pieces; cpu = on the CPU whatever their device",
)
@field_option(
    ExportOptions,
    "full_model_instances",
    type=int,
    help="instances of v2's model (default: 2 on the CPU; on every GPU, sized for the host's cores)",
)
@field_option(
    ExportOptions,
    "full_model_dtype",
    type=click.Choice(FULL_MODEL_DTYPE_CHOICES),
    help="v2's model in half precision, if every test label stays float32's and probabilities within "
    "0.1 (checked at export; v2 then matches v1 on labels, not to the last digit); auto: float16 for a "
    "GPU where that check passes on this machine's GPU, else float32",
)
@field_option(
    ExportOptions,
    "full_model_answer",
    type=click.Choice(["auto", "device", "host"]),
    help="where v2's model leaves its answer: on its device, or in host memory (one copy per batch, "
    "so Triton hands each request its rows by memcpy); auto: device",
)
@field_option(
    ExportOptions,
    "full_model_response_threads",
    type=click.IntRange(min=0),
    help="threads per instance of v2's model that send its answers, so the instance takes its next "
    "batch at once (0: the instance's own thread, the default)",
)
@field_option(
    ExportOptions,
    "gpu_wait",
    type=click.Choice(GPU_WAITS),
    help="how the server's threads wait for the GPU: spin (keep the core), yield (spin, giving the core "
    "to any thread that wants it), block (sleep until the GPU is done); auto: CUDA's choice",
)
@field_option(
    ExportOptions,
    "full_model_cuda_graphs",
    type=click.IntRange(min=0),
    help="executions of v2's model of at most N texts replay a CUDA graph, one launch for the whole "
    "forward, its graphs captured at load (--device cuda only; 0: never; default: 128 on a GPU)",
)
@field_option(
    ExportOptions,
    "full_model_graph_experts",
    type=click.Choice(GRAPH_EXPERTS),
    help="how a graphed batch reaches its experts: dense (every expert on every position) or blocked "
    "(each position on its top-k experts, in blocks of one expert each); auto: dense",
)
@field_option(
    ExportOptions,
    "precision_check_texts",
    type=click.IntRange(min=1),
    help="check a half-precision v2 on the first N test texts only (default: all 7,600)",
)
@field_option(
    ExportOptions,
    "full_model_max_batch",
    type=click.IntRange(min=1),
    help="texts per execution of v2's model (default: 256 on a GPU, --max-batch-size on the CPU)",
)
@field_option(
    ExportOptions,
    "host_cores",
    type=click.IntRange(min=1),
    help="cores of the serving machine that the host-side stages are sized for (default: this machine's)",
)
@field_option(
    ExportOptions, "tokenizer_instances", type=click.IntRange(min=1), help="default: sized for the host's cores"
)
@field_option(
    ExportOptions,
    "tokenizer_threads",
    type=click.IntRange(min=0),
    help="each tokenizer instance's thread pool (0: one per core; default: 1 on a GPU host, 0 on the CPU)",
)
@field_option(
    ExportOptions, "postprocessing_instances", type=click.IntRange(min=1), help="default: sized for the host's cores"
)
@field_option(
    ExportOptions, "bls_instances", type=click.IntRange(min=1), help="v1's BLS (default: sized for the host's cores)"
)
@field_option(
    ExportOptions,
    "bls_max_batch",
    type=click.IntRange(min=1),
    help="texts per execution of v1's BLS (default: --max-batch-size on the CPU, at least 512 on a GPU)",
)
@field_option(
    ExportOptions,
    "length_group",
    type=int,
    help="v2 runs texts sorted by length in groups of this many (0: one group; default: 16 on the CPU, 0 on a GPU)",
)
@field_option(
    ExportOptions,
    "expert_fanout",
    type=click.Choice(["auto", "ensemble", "calls"]),
    help="how v1 reaches a layer's experts: one request to the experts ensemble, or one per busy "
    "expert (auto: the ensemble)",
)
@field_option(
    ExportOptions,
    "v1_groups",
    type=click.IntRange(min=1),
    help="v1 runs each batch as this many length-sorted groups at once (default: 2 on the CPU, 1 on a GPU)",
)
@field_option(ExportOptions, "max_batch_size")
@field_option(
    ExportOptions,
    "queue_delay_us",
    help="how long the dynamic batchers (tokenizer, full_model, BLS, postprocessing) wait to fill a batch",
)
@field_option(
    ExportOptions,
    "max_queue_size",
    type=click.IntRange(min=0),
    help="requests an entry model queues before it rejects new ones (0: no bound; any bound can add up to "
    "500 ms of queueing under tritonserver 2.51, docs/reliability.md)",
)
@click.option(
    "--queue-timeout-ms",
    type=click.IntRange(min=0),
    default=ExportOptions.queue_timeout_us // 1000,
    show_default=True,
    help="a request queued longer than this is rejected, and clients may ask for less "
    "(0: no timeout, and tritonserver 2.51 then ignores the requests' own)",
)
@friendly_errors
def export_(checkpoint, out, gpus, queue_timeout_ms, **options):
    """Export CHECKPOINT (default: the bundled one) to a Triton model repository."""
    from export.repository import export_repository

    if gpus is None:
        import torch

        gpus = max(1, torch.cuda.device_count()) if options["device"] == "cuda" else 1
    opts = ExportOptions(gpus=gpus, queue_timeout_us=queue_timeout_ms * 1000, **options)
    export_repository(checkpoint, out or DEFAULT_OUT, opts, log=click.echo)
