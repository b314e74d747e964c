"""The values each model's config.pbtxt template takes: scalars only, each template fed exactly
the keys it names (fill() refuses a missing or an unused one). The templates hold the
structure; what follows from the export options is decided in export/options.py."""

from __future__ import annotations

import json
import re
import string

from moe.errors import MoEError

from .options import ExportOptions, bls_on_gpu, expert_calls

# Every TorchScript model runs on the legacy graph executor: the default profiling executor
# re-specialises the graph for each new input shape it sees, and with texts of every length that
# meant requests stalling for half a second at random.
LIBTORCH_PARAMETERS = 'parameters { key: "ENABLE_JIT_PROFILING" value: { string_value: "false" } }'
# A half-precision full_model runs attention without cuDNN's kernel, which builds a plan for every
# new input shape (third_party/triton/README.md lists the backend change this needs).
HALF_PRECISION_PARAMETERS = 'parameters { key: "DISABLE_CUDNN" value: { string_value: "true" } }'


def response_threads_parameter(threads: int) -> str:
    """full_model's RESPONSE_THREADS for the vendored backend (ExportOptions.full_model_response_threads
    says why); none for 0, which is upstream's behaviour."""
    return f'\nparameters {{ key: "RESPONSE_THREADS" value: {{ string_value: "{threads}" }} }}' if threads else ""


def queue_policy(max_queue_size: int, timeout_us: int) -> str:
    """A dynamic batcher's default_queue_policy, written only where a bound is asked for
    (ExportOptions.max_queue_size says what one costs)."""
    if not max_queue_size and not timeout_us:
        return ""
    return f"""
  # Overload answers fast: a full queue or a request waiting past its timeout is rejected
  # (clients may ask for a shorter timeout per request).
  default_queue_policy {{
    timeout_action: REJECT
    default_timeout_microseconds: {timeout_us}
    allow_timeout_override: true
    max_queue_size: {max_queue_size}
  }}"""


def gpu_wait_parameter(wait: str) -> str:
    """GPU_WAIT for the vendored backend (ExportOptions.gpu_wait says why); none for "auto"."""
    return "" if wait == "auto" else f'\nparameters {{ key: "GPU_WAIT" value: {{ string_value: "{wait}" }} }}'


# full_model's warm-up data (in its warmup/ folder): a mask of max_len ones, which samples of
# any width up to max_len read from.
WARMUP_MASK = "mask_ones"


def warmup_sample(name: str, batch: int, tokens: int, mask: str) -> str:
    """One full_model warm-up request of `batch` texts of `tokens` token ids 0, with `mask` either
    zero_data (every token masked out) or input_data_file (every token real)."""
    return (
        f'{{ name: "{name}" batch_size: {batch}\n'
        f'  inputs {{ key: "INPUT__0" value: {{ data_type: TYPE_INT64 dims: [ {tokens} ] zero_data: true }} }}\n'
        f'  inputs {{ key: "INPUT__1" value: {{ data_type: TYPE_BOOL dims: [ {tokens} ] {mask} }} }} }}'
    )


def cuda_graphs_parameter(max_batch: int, full_model_max_batch: int, max_len: int) -> str:
    """full_model's CUDA_GRAPH_MAX_BATCH for the vendored backend (ExportOptions.full_model_cuda_graphs
    says why), with warm-up requests as each instance loads: one text, whose execution captures
    every graph (on one H100, 0.2-0.3 s for seven), and, where larger batches run the eager
    forward, a small and a full batch of real tokens through it, so that its first runs do not
    come under load either. None for 0."""
    if not max_batch:
        return ""
    samples = [warmup_sample("capture_cuda_graphs", 1, 1, "zero_data: true")]
    if max_batch < full_model_max_batch:
        ones = f'input_data_file: "{WARMUP_MASK}"'
        samples.append(warmup_sample("eager_forward_small", max_batch + 1, min(16, max_len), ones))
        samples.append(warmup_sample("eager_forward_full", full_model_max_batch, max_len, ones))
    return (
        f'\nparameters {{ key: "CUDA_GRAPH_MAX_BATCH" value: {{ string_value: "{max_batch}" }} }}'
        "\nmodel_warmup [\n" + ",\n".join(samples) + "\n]"
    )


def placeholders(text: str) -> set[str]:
    return {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)} - {None}


def fill(template, values: dict) -> str:
    """The template's text with its ${placeholders} replaced: exactly the keys of `values`."""
    text = template.read_text()
    missing, unused = placeholders(text) - set(values), set(values) - placeholders(text)
    if missing or unused:
        raise MoEError(f"{template}: no value for {sorted(missing)}, values never used {sorted(unused)}")
    return string.Template(text).substitute(values)


def pbtxt_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def placement(opts: ExportOptions, instances: int = 1, gpu: int | None = 0, on_gpu: bool | None = None) -> dict:
    """instance_group's scalars: `instances` on the CPU (with an empty GPU list: Triton refuses
    GPUs for KIND_CPU), or on GPU `gpu` (modulo the GPUs used; None: `instances` on every GPU)."""
    on_gpu = opts.device == "cuda" if on_gpu is None else on_gpu
    gpus = range(max(1, opts.gpus)) if gpu is None else [gpu % max(1, opts.gpus)]
    return dict(
        instances=instances,
        kind="KIND_GPU" if on_gpu else "KIND_CPU",
        gpus=", ".join(map(str, gpus)) if on_gpu else "",
    )


def ensemble_size(template) -> int:
    """How many experts the `experts` ensemble's file has steps for."""
    return len(re.findall(r'model_name: "expert_\d+"', template.read_text()))


def model_values(cfg, opts: ExportOptions, experts_template) -> dict[str, dict]:
    """Triton model (or template, for the expert models) -> its template's values."""
    queue = dict(
        max_batch_size=opts.max_batch_size,
        queue_delay_us=opts.queue_delay_us,
        queue_policy=queue_policy(opts.max_queue_size, opts.queue_timeout_us),
    )
    libtorch = dict(libtorch_parameters=LIBTORCH_PARAMETERS)
    d, k = dict(d_model=cfg.d_model), dict(top_k=cfg.top_k)
    routed = dict(n_layers=cfg.n_layers, n_experts=cfg.n_experts)  # EXPERT_TOKENS [layers, experts]
    values = {
        # A small share of v1's time: one instance each.
        "embedding": {**d, **libtorch, **placement(opts)},
        "classifier": {**d, "n_classes": cfg.n_classes, **libtorch, **placement(opts)},
        # v1's length groups run through them side by side.
        "attention": {**d, **libtorch, **placement(opts, opts.v1_groups)},
        "gating": {**d, **k, **libtorch, **placement(opts, opts.v1_groups)},
        "full_model": {
            **queue,
            "max_batch_size": opts.full_model_max_batch,
            "n_classes": cfg.n_classes,
            "libtorch_parameters": LIBTORCH_PARAMETERS
            + ("" if opts.full_model_dtype == "float32" else "\n" + HALF_PRECISION_PARAMETERS)
            + response_threads_parameter(opts.full_model_response_threads)
            + gpu_wait_parameter(opts.gpu_wait)
            + cuda_graphs_parameter(opts.full_model_cuda_graphs, opts.full_model_max_batch, cfg.max_len),
            **placement(opts, opts.full_model_instances, gpu=None),
        },
        "tokenizer": {
            **queue,
            "max_text_chars": cfg.max_len * 64,
            "pad_to_multiple_of": 8 if cfg.max_len % 8 == 0 else 0,
            "threads": opts.tokenizer_threads,
            **placement(opts, opts.tokenizer_instances, on_gpu=False),
        },
        "postprocessing": {
            **queue,
            "n_classes": cfg.n_classes,
            "labels_json": pbtxt_string(json.dumps(list(cfg.labels))),
            **libtorch,
            **placement(opts, opts.postprocessing_instances, on_gpu=False),
        },
        "moe_bls": {
            **queue,
            "max_batch_size": opts.bls_max_batch,
            "n_classes": cfg.n_classes,
            **routed,
            "pad_id": cfg.pad_id,
            "expert_models": ",".join(f"expert_{e}" for e in range(cfg.n_experts)),
            "v1_groups": opts.v1_groups,
            "expert_calls": expert_calls(opts, cfg.n_experts, ensemble_size(experts_template)),
            **placement(opts, opts.bls_instances, on_gpu=bls_on_gpu(opts)),
        },
        "attention_gating": {**d, **k},
        "embedding_attention_gating": {**d, **k},
        "experts": d,
        "moe_v1": {"max_batch_size": opts.max_batch_size, "n_classes": cfg.n_classes, **routed},
        "moe_v2": {"max_batch_size": opts.max_batch_size, "n_classes": cfg.n_classes},
    }
    for e in range(cfg.n_experts):
        values[f"expert_{e}"] = {"name": f"expert_{e}", "expert": e, **d, **libtorch, **placement(opts, gpu=e)}
    return values
