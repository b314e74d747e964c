"""A checkpoint is a folder: model.safetensors, config.json, tokenizer.json, metrics.json."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import MoEConfig
from .errors import MoEError
from .files import replaced_folder
from .model import MoEClassifier

WEIGHTS, CONFIG, TOKENIZER, METRICS = "model.safetensors", "config.json", "tokenizer.json", "metrics.json"
REQUIRED = (WEIGHTS, CONFIG, TOKENIZER)

# The checkpoint shipped with the package (the repository's checkpoints/); commands default to it.
BUNDLED = Path(str(resources.files("moe") / "checkpoints" / "agnews-moe-distilled"))


def save_checkpoint(
    out: Path, model: MoEClassifier, tokenizer_json: str, metrics: dict, dtype: torch.dtype = torch.float32
) -> None:
    """Write the whole folder next to `out`, then swap it in: an interrupted save leaves the
    previous checkpoint intact."""
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    with replaced_folder(out) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        model.cfg.save(tmp / CONFIG)
        (tmp / TOKENIZER).write_text(tokenizer_json)
        write_metrics(tmp, metrics)


def write_metrics(folder: Path, metrics: dict) -> None:
    tmp = Path(folder) / (METRICS + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, Path(folder) / METRICS)


def resolve(path: Path | None) -> Path:
    path = Path(path) if path is not None else BUNDLED
    if not path.is_dir():
        raise MoEError(f"checkpoint folder not found: {path}")
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise MoEError(f"{path} is not a checkpoint: missing {', '.join(missing)}")
    return path


def load_config(path: Path) -> MoEConfig:
    try:
        return MoEConfig.load(Path(path) / CONFIG)
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise MoEError(f"{Path(path) / CONFIG}: {e}") from e


def load_checkpoint(path: Path | None = None) -> tuple[MoEClassifier, Path]:
    """The model in fp32 and eval mode, and the checkpoint folder it came from."""
    path = resolve(path)
    cfg = load_config(path)
    model = MoEClassifier(cfg)
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise MoEError(f"{path / WEIGHTS}: unreadable weights ({e})") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise MoEError(
            f"{path}: weights do not match config.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}): checkpoint from another config?"
        )
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise MoEError(
                f"{path}: {name} has shape {tuple(state[name].shape)} but config.json "
                f"implies {tuple(tensor.shape)}: checkpoint from another config?"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), path
