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
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

import torch

from moe.checkpoint import TOKENIZER, WEIGHTS, load_checkpoint, resolve
from moe.errors import MoEError
from moe.files import replaced_folder
from moe.tokenizer import encode, load_fast_tokenizer

from .options import DEFAULT_OUT, ExportOptions, bls_on_gpu, expert_calls
from .pieces import build_pieces, sample_inputs

__all__ = ["DEFAULT_OUT", "ExportOptions", "export_repository", "is_current", "read_manifest"]

TEMPLATES = resources.files("export") / "templates"
MODEL_TEMPLATES = TEMPLATES / "model_repository"
ENSEMBLE_TEMPLATES = TEMPLATES / "ensemble"
# Python modules copied next to the Python models that use them: the routing math the eager
# model runs, and the tensor and error helpers every Python model shares.
ROUTING_SOURCE = resources.files("moe") / "routing.py"
SHARED_PYTHON = MODEL_TEMPLATES / "lib" / "triton_io.py"
PYTHON_MODELS = ("tokenizer", "moe_bls")
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


def instance_group(opts: ExportOptions, gpu: int = 0, count: int = 1) -> str:
    if opts.device == "cuda":
        return f"{{ count: {count} kind: KIND_GPU gpus: [ {gpu % max(1, opts.gpus)} ] }}"
    return f"{{ count: {count} kind: KIND_CPU }}"


def copy_python(source, dest: Path) -> None:
    """The Python files of a model's version folder, its packages (the BLS's bls/) included."""
    for f in source.iterdir():
        if f.is_dir() and f.name != "__pycache__":
            (dest / f.name).mkdir()
            copy_python(f, dest / f.name)
        elif f.name.endswith(".py"):
            (dest / f.name).write_bytes(f.read_bytes())


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
        expert_calls=expert_calls(opts),
        **experts_ensemble(cfg.n_experts, cfg.d_model),
        max_text_chars=cfg.max_len * 64,
        pad_to_multiple_of=8 if cfg.max_len % 8 == 0 else 0,
        instance_group=instance_group(opts),
        libtorch_parameters=LIBTORCH_PARAMETERS,
        bls_instance_group=instance_group(opts if bls_on_gpu(opts) else replace(opts, device="cpu")),
    )

    def write_model(name: str, template: str, extra: dict | None = None):
        source, folder = MODEL_TEMPLATES / template, models / name
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(fill(source / "config.pbtxt", {**values, **(extra or {})}))
        if name in PYTHON_MODELS:
            copy_python(source / "1", folder / "1")
            (folder / "1" / SHARED_PYTHON.name).write_bytes(SHARED_PYTHON.read_bytes())
        if name in scripted:
            torch.jit.save(scripted[name], str(folder / "1" / "model.pt"))
        return folder

    for name in ("embedding", "classifier"):  # a small share of v1's time: one instance
        write_model(name, name)
    for name in ("attention", "gating"):  # v1's length groups run through them side by side
        write_model(name, name, dict(instance_group=instance_group(opts, count=opts.v1_groups)))
    write_model("full_model", "full_model", dict(instance_group=instance_group(opts, count=opts.full_model_instances)))
    for e, name in enumerate(experts):
        write_model(name, "expert", dict(name=name, expert=e, instance_group=instance_group(opts, gpu=e)))
    tokenizer = write_model("tokenizer", "tokenizer")
    shutil.copy2(ckpt / TOKENIZER, tokenizer / "1" / TOKENIZER)
    bls = write_model("moe_bls", "moe_bls")
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
