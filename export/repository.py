"""`moe export`: a checkpoint -> the Triton model repository, every piece parity-checked.

Layout written under OUT (default build/):
    OUT/model_repository/<model>/config.pbtxt and 1/model.pt or 1/model.py (+ assets)
    OUT/ensemble/moe_v1, moe_v2     (a second --model-repository for tritonserver)
    OUT/manifest.json               (what was exported from where)

Config templates and Python models are the folders of the repository's model_repository/ and
ensemble/ (each the template of the output folder of its name), which travel inside this
package (export/templates/). A template holds its model's structure; only scalars are filled in,
each model's own (export/configs.py), from the checkpoint's config and the export options.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

import torch

from moe.checkpoint import TOKENIZER, WEIGHTS, load_checkpoint, resolve
from moe.errors import MoEError
from moe.files import replaced_folder
from moe.tokenizer import encode, load_fast_tokenizer

from .configs import WARMUP_MASK, fill, model_values
from .options import DEFAULT_OUT, GPU_WAITS, GRAPH_EXPERTS, ExportOptions
from .pieces import build_pieces, sample_inputs
from .precision import choose_full_model

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


def copy_python(source, dest: Path) -> None:
    """The Python files of a model's version folder, its packages (the BLS's bls/) included."""
    for f in source.iterdir():
        if f.is_dir() and f.name != "__pycache__":
            (dest / f.name).mkdir()
            copy_python(f, dest / f.name)
        elif f.name.endswith(".py"):
            (dest / f.name).write_bytes(f.read_bytes())


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
    if opts.full_model_answer not in ("auto", "device", "host"):
        raise MoEError(f"--full-model-answer must be auto, device or host, got {opts.full_model_answer!r}")
    if opts.gpu_wait not in GPU_WAITS:
        raise MoEError(f"--gpu-wait must be one of {', '.join(GPU_WAITS)}, got {opts.gpu_wait!r}")
    if opts.full_model_graph_experts not in GRAPH_EXPERTS:
        raise MoEError(
            f"--full-model-graph-experts must be one of {', '.join(GRAPH_EXPERTS)}, "
            f"got {opts.full_model_graph_experts!r}"
        )
    if opts.full_model_cuda_graphs and opts.device != "cuda":
        raise MoEError("--full-model-cuda-graphs needs --device cuda: CUDA graphs run on a GPU only")
    model, ckpt = load_checkpoint(checkpoint)
    cfg = model.cfg
    tokenizer = load_fast_tokenizer(ckpt / TOKENIZER)
    ids, mask = encode(tokenizer, PARITY_TEXTS, cfg.max_len)
    opts = opts.resolved()
    v2_model, dtype, precision = choose_full_model(model, tokenizer, opts, log=log)
    opts = replace(opts, full_model_dtype=dtype)
    pieces = build_pieces(
        model,
        opts.length_group,
        v2_model,
        answer_on_host=opts.full_model_answer == "host",
        blocked_experts=opts.full_model_graph_experts == "blocked",
    )
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
        manifest = write_repository(tmp, model, ckpt, scripted, opts, precision)
    log(f"wrote {len(manifest['models'])} models and {len(manifest['ensembles'])} ensembles to {out}")
    return out


def write_repository(tmp: Path, model, ckpt: Path, scripted: dict, opts: ExportOptions, precision=None) -> dict:
    cfg = model.cfg
    models, ensembles = tmp / "model_repository", tmp / "ensemble"
    values = model_values(cfg, opts, MODEL_TEMPLATES / "experts" / "config.pbtxt")

    def write_model(name: str, template: str):
        source, folder = MODEL_TEMPLATES / template, models / name
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(fill(source / "config.pbtxt", values[name]))
        if name in PYTHON_MODELS:
            copy_python(source / "1", folder / "1")
            (folder / "1" / SHARED_PYTHON.name).write_bytes(SHARED_PYTHON.read_bytes())
        if name in scripted:
            torch.jit.save(scripted[name], str(folder / "1" / "model.pt"))
        return folder

    for name in ("embedding", "attention", "gating", "classifier", "full_model", "postprocessing"):
        write_model(name, name)
    if opts.full_model_cuda_graphs:
        (models / "full_model" / "warmup").mkdir()
        (models / "full_model" / "warmup" / WARMUP_MASK).write_bytes(b"\x01" * cfg.max_len)
    for e in range(cfg.n_experts):
        write_model(f"expert_{e}", "expert")
    tokenizer = write_model("tokenizer", "tokenizer")
    shutil.copy2(ckpt / TOKENIZER, tokenizer / "1" / TOKENIZER)
    bls = write_model("moe_bls", "moe_bls")
    (bls / "1" / "moe_routing.py").write_bytes(ROUTING_SOURCE.read_bytes())
    for name in ("attention_gating", "embedding_attention_gating"):  # v1's chained pieces
        write_model(name, name)
    if values["moe_bls"]["expert_calls"] != "calls":
        write_model("experts", "experts")
    for name in ("moe_v1", "moe_v2"):
        folder = ensembles / name
        (folder / "1").mkdir(parents=True)  # ensembles need an (empty) version folder
        (folder / "config.pbtxt").write_text(fill(ENSEMBLE_TEMPLATES / name / "config.pbtxt", values[name]))

    manifest = dict(
        checkpoint=str(ckpt),
        weights_sha256=sha256(ckpt / WEIGHTS),
        config=cfg.to_dict(),
        options=asdict(opts),
        # full_model in half precision: what the gate measured (export/precision.py).
        precision_check=precision,
        models=sorted(p.name for p in models.iterdir()),
        ensembles=sorted(p.name for p in ensembles.iterdir()),
    )
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
