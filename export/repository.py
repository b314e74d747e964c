"""`moe export`: a checkpoint -> the Triton model repository, every piece parity-checked.

Layout written under OUT (default build/):
    OUT/model_repository/<model>/config.pbtxt and 1/model.pt or 1/model.py (+ assets)
    OUT/ensemble/moe_v1, moe_v2     (a second --model-repository for tritonserver)
    OUT/manifest.json               (what was exported from where)

Config templates and Python models are the folders of the repository's model_repository/ and
ensemble/, which travel inside this package (export/templates/); ${placeholders} are filled
from the checkpoint's config and the export options.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import string
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

import torch

from moe.checkpoint import TOKENIZER, WEIGHTS, load_checkpoint, resolve
from moe.errors import MoEError
from moe.files import replaced_folder
from moe.tokenizer import encode, load_fast_tokenizer

from .host_sizing import host_cores, size_host_stages
from .pieces import build_pieces, sample_inputs

TEMPLATES = resources.files("export") / "templates"
MODEL_TEMPLATES = TEMPLATES / "model_repository"
ENSEMBLE_TEMPLATES = TEMPLATES / "ensemble"
# Python modules copied next to the Python models that use them: the routing math the eager
# model runs, and the tensor and error helpers every Python model shares.
ROUTING_SOURCE = resources.files("moe") / "routing.py"
SHARED_PYTHON = MODEL_TEMPLATES / "lib" / "triton_io.py"
PYTHON_MODELS = ("tokenizer", "moe_bls")
DEFAULT_OUT = Path("build")
MANIFEST = "manifest.json"
TOLERANCE = 1e-5

# Texts whose routed tokens exercise every piece during the parity check.
PARITY_TEXTS = [
    "Wall St. Bears Claw Back Into the Black (Reuters) Short-sellers are seeing green again.",
    "Phelps wins his sixth gold medal as the United States dominates the pool in Athens.",
    "Oil prices hit a record high as supply fears grip the market; stocks slide.",
    "NASA's new space telescope finds water on a distant planet, scientists say.",
    "The UN Security Council meets on the crisis in Darfur.",
    "Google unveils a faster search engine for mobile phones",
    "short",
]


@dataclass
class ExportOptions:
    device: str = "cpu"  # cpu | cuda
    gpus: int = 1  # GPUs to spread experts over with --device cuda
    max_batch_size: int = 64
    queue_delay_us: int = 0
    max_queue_size: int = 256  # per entry model; beyond it requests are rejected at once
    queue_timeout_us: int = 10_000_000  # a request waiting longer than this in a queue is rejected
    # Where v1's orchestration runs: "auto" is where the pieces are (with --device cuda the BLS
    # keeps activations on GPU 0); "cpu" keeps it on the CPU whatever the pieces' device, so
    # every layer's activations cross to the host and back (kept to measure what that costs).
    bls_device: str = "auto"
    # v2's model: on the CPU two instances of one thread each (both cores busy without OpenMP
    # threads spinning against each other) and texts in length-sorted groups of 16; on a GPU four
    # instances on every GPU (export/host_sizing.py) and one group. None: by device. Measured:
    # docs/benchmarks.md, docs/gpu_serving.md.
    full_model_instances: int | None = None
    length_group: int | None = None
    # v1 runs each batch as this many length-sorted groups through the attention pieces at once,
    # with as many instances of the attention and gating models: 2 on the CPU (both cores busy,
    # and less padding), 1 on a GPU. None: by device.
    v1_groups: int | None = None
    # How the BLS reaches a layer's experts: "ensemble", one request to the `experts` ensemble
    # that runs all of them inside the server, or "calls", one request per busy expert. On the
    # CPU the ensemble takes every layer, an idle expert on its empty chunk; on a GPU only layers
    # whose experts all have tokens (tritonserver 2.51 crashes on an empty GPU tensor in its
    # answer). "auto" is the ensemble: on the CPU it measured lower latency at concurrency 1 and
    # less BLS CPU per text under load (docs/benchmarks.md), on one and two H200s more v1
    # throughput under load (docs/gpu_serving.md). Remote experts are called one by one.
    expert_fanout: str = "auto"
    # Host-side stages, sized for `host_cores` (None: this machine's) by export/host_sizing.py;
    # each one given here overrides its share.
    host_cores: int | None = None
    tokenizer_instances: int | None = None
    tokenizer_threads: int | None = None
    postprocessing_instances: int | None = None
    bls_instances: int | None = None
    bls_max_batch: int | None = None
    full_model_max_batch: int | None = None

    def resolved(self) -> ExportOptions:
        on_cpu = self.device == "cpu"
        cores = self.host_cores or host_cores()
        stages = size_host_stages(self.device, cores, self.max_batch_size)

        def pick(name: str) -> int:
            value = getattr(self, name)
            return getattr(stages, name) if value is None else value

        return replace(
            self,
            host_cores=cores,
            tokenizer_instances=pick("tokenizer_instances"),
            tokenizer_threads=pick("tokenizer_threads"),
            postprocessing_instances=pick("postprocessing_instances"),
            bls_instances=pick("bls_instances"),
            bls_max_batch=pick("bls_max_batch"),
            full_model_max_batch=pick("full_model_max_batch"),
            full_model_instances=pick("full_model_instances"),
            length_group=self.length_group if self.length_group is not None else (16 if on_cpu else 0),
            v1_groups=self.v1_groups or (2 if on_cpu else 1),
            expert_fanout=self.expert_fanout if self.expert_fanout != "auto" else "ensemble",
        )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Every TorchScript model runs on the legacy graph executor: the default profiling executor
# re-specialises the graph for each new input shape it sees, and with texts of every length that
# meant requests stalling for half a second at random.
LIBTORCH_PARAMETERS = 'parameters { key: "ENABLE_JIT_PROFILING" value: { string_value: "false" } }'


def experts_ensemble(n_experts: int, d_model: int) -> dict:
    """The `experts` ensemble's inputs, outputs and steps: one step per expert model."""

    def tensor(name: str) -> str:
        return f'  {{ name: "{name}" data_type: TYPE_FP32 dims: [ -1, {d_model} ] }}'

    step = """    {{
      model_name: "expert_{e}"
      model_version: -1
      input_map {{ key: "INPUT__0" value: "H_{e}" }}
      input_map {{ key: "INPUT__1" value: "LAYER" }}
      output_map {{ key: "OUTPUT__0" value: "OUT_{e}" }}
    }}"""
    experts = range(n_experts)
    return dict(
        expert_inputs=",\n".join(
            [*(tensor(f"H_{e}") for e in experts), '  { name: "LAYER" data_type: TYPE_INT64 dims: [ 1 ] }']
        ),
        expert_outputs=",\n".join(tensor(f"OUT_{e}") for e in experts),
        expert_steps=",\n".join(step.format(e=e) for e in experts),
    )


def pbtxt_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def instance_group(opts: ExportOptions, gpu: int | None = 0, count: int = 1) -> str:
    """`count` instances on GPU `gpu` (None: on every GPU), or on the CPU."""
    if opts.device == "cuda":
        gpus = range(max(1, opts.gpus)) if gpu is None else [gpu % max(1, opts.gpus)]
        return f"{{ count: {count} kind: KIND_GPU gpus: [ {', '.join(map(str, gpus))} ] }}"
    return f"{{ count: {count} kind: KIND_CPU }}"


def fill(template, values: dict) -> str:
    try:
        return string.Template(template.read_text()).substitute(values)
    except KeyError as e:
        raise MoEError(f"{template}: no value for placeholder {e}") from None


def check_parity(name: str, eager: torch.nn.Module, scripted: torch.jit.ScriptModule, samples) -> float:
    worst = 0.0
    with torch.no_grad():
        for args in samples:
            expected, got = eager(*args), scripted(*args)
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = got if isinstance(got, tuple) else (got,)
            for e, g in zip(expected, got):
                if isinstance(e, list):  # class names
                    if e != g:
                        raise MoEError(f"TorchScript {name} answers {g[:3]}..., eager {e[:3]}...: refusing to export")
                    continue
                if e.shape != g.shape or e.dtype != g.dtype:
                    raise MoEError(
                        f"TorchScript {name} returns {tuple(g.shape)} {g.dtype}, "
                        f"eager returns {tuple(e.shape)} {e.dtype}: refusing to export"
                    )
                diff = (e.double() - g.double()).abs().max().item() if e.numel() else 0.0
                worst = max(worst, diff)
    if not worst <= TOLERANCE:
        raise MoEError(
            f"TorchScript {name} differs from the eager module by {worst:.3g} "
            f"(tolerance {TOLERANCE}): refusing to export"
        )
    return worst


def read_manifest(out: Path) -> dict | None:
    """What `moe export` wrote into `out` (None if it is no export folder)."""
    manifest = Path(out) / MANIFEST
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def is_current(out: Path, checkpoint: Path | None) -> bool:
    """Whether `out` holds an export of these very weights (serve re-exports otherwise)."""
    manifest = read_manifest(out)
    return manifest is not None and manifest.get("weights_sha256") == sha256(resolve(checkpoint) / WEIGHTS)


def export_repository(
    checkpoint: Path | None,
    out: Path = DEFAULT_OUT,
    opts: ExportOptions | None = None,
    progress: bool = True,
    log=print,
) -> Path:
    opts = opts or ExportOptions()
    if opts.device not in ("cpu", "cuda"):
        raise MoEError(f"--device must be cpu or cuda, got {opts.device!r}")
    if opts.bls_device not in ("auto", "cpu"):
        raise MoEError(f"--bls-device must be auto or cpu, got {opts.bls_device!r}")
    if opts.expert_fanout not in ("auto", "ensemble", "calls"):
        raise MoEError(f"--expert-fanout must be auto, ensemble or calls, got {opts.expert_fanout!r}")
    model, ckpt = load_checkpoint(checkpoint)
    cfg = model.cfg
    tokenizer = load_fast_tokenizer(ckpt / TOKENIZER)
    ids, mask = encode(tokenizer, PARITY_TEXTS, cfg.max_len)
    opts = opts.resolved()
    pieces = build_pieces(model, opts.length_group)
    samples = sample_inputs(model, ids, mask)

    from tqdm.auto import tqdm

    scripted = {}
    bar = tqdm(pieces.items(), desc="script + parity check", unit="model", disable=not progress)
    for name, module in bar:
        bar.set_postfix_str(name)
        scripted[name] = torch.jit.script(module)
        check_parity(name, module, scripted[name], samples[name])
    log(f"parity: {len(scripted)} TorchScript models match eager within {TOLERANCE}")

    out = Path(out)
    with replaced_folder(out) as tmp:
        manifest = write_repository(tmp, model, ckpt, scripted, opts)
    log(f"wrote {len(manifest['models'])} models and {len(manifest['ensembles'])} ensembles to {out}")
    return out


def write_repository(tmp: Path, model, ckpt: Path, scripted: dict, opts: ExportOptions) -> dict:
    cfg = model.cfg
    models, ensembles = tmp / "model_repository", tmp / "ensemble"
    experts = [f"expert_{e}" for e in range(cfg.n_experts)]
    values = dict(
        max_batch_size=opts.max_batch_size,
        queue_delay_us=opts.queue_delay_us,
        max_queue_size=opts.max_queue_size,
        queue_timeout_us=opts.queue_timeout_us,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_experts=cfg.n_experts,
        top_k=cfg.top_k,
        n_classes=cfg.n_classes,
        pad_id=cfg.pad_id,
        labels_json=pbtxt_string(json.dumps(list(cfg.labels))),
        expert_models=",".join(experts),
        v1_groups=opts.v1_groups,
        expert_fanout=opts.expert_fanout,
        **experts_ensemble(cfg.n_experts, cfg.d_model),
        max_text_chars=cfg.max_len * 64,
        pad_to_multiple_of=8 if cfg.max_len % 8 == 0 else 0,
        instance_group=instance_group(opts),
        libtorch_parameters=LIBTORCH_PARAMETERS,
        bls_instance_group=instance_group(
            opts if opts.bls_device == "auto" else replace(opts, device="cpu"), count=opts.bls_instances
        ),
        tokenizer_instances=opts.tokenizer_instances,
        tokenizer_threads=opts.tokenizer_threads,
        postprocessing_instances=opts.postprocessing_instances,
    )

    def write_model(name: str, template: str, extra: dict | None = None):
        source, folder = MODEL_TEMPLATES / template, models / name
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(fill(source / "config.pbtxt", {**values, **(extra or {})}))
        if name in PYTHON_MODELS:
            for f in [*(source / "1").iterdir(), SHARED_PYTHON]:
                if f.name.endswith(".py"):
                    (folder / "1" / f.name).write_bytes(f.read_bytes())
        if name in scripted:
            torch.jit.save(scripted[name], str(folder / "1" / "model.pt"))
        return folder

    for name in ("embedding", "classifier"):  # a small share of v1's time: one instance
        write_model(name, name)
    for name in ("attention", "gating"):  # v1's length groups run through them side by side
        write_model(name, name, dict(instance_group=instance_group(opts, count=opts.v1_groups)))
    write_model(
        "full_model",
        "full_model",
        dict(
            instance_group=instance_group(opts, gpu=None, count=opts.full_model_instances),
            max_batch_size=opts.full_model_max_batch,
        ),
    )
    for e, name in enumerate(experts):
        write_model(name, "expert", dict(name=name, expert=e, instance_group=instance_group(opts, gpu=e)))
    tokenizer = write_model("tokenizer", "tokenizer")
    shutil.copy2(ckpt / TOKENIZER, tokenizer / "1" / TOKENIZER)
    bls = write_model("moe_bls", "moe_bls", dict(max_batch_size=opts.bls_max_batch))
    (bls / "1" / "moe_routing.py").write_bytes(ROUTING_SOURCE.read_bytes())
    write_model("postprocessing", "postprocessing")
    for name in ("attention_gating", "embedding_attention_gating"):  # v1's chained pieces
        write_model(name, name)
    if opts.expert_fanout == "ensemble":
        write_model("experts", "experts")
    for name in ("moe_v1", "moe_v2"):
        folder = ensembles / name
        (folder / "1").mkdir(parents=True)  # ensembles need an (empty) version folder
        (folder / "config.pbtxt").write_text(fill(ENSEMBLE_TEMPLATES / name / "config.pbtxt", values))

    manifest = dict(
        checkpoint=str(ckpt),
        weights_sha256=sha256(ckpt / WEIGHTS),
        config=cfg.to_dict(),
        options=asdict(opts),
        models=sorted(p.name for p in models.iterdir()),
        ensembles=sorted(p.name for p in ensembles.iterdir()),
    )
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
