"""Model configuration: one dataclass, a few named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

LABELS = ("World", "Sports", "Business", "Sci/Tech")


@dataclass(frozen=True)
class MoEConfig:
    vocab_size: int = 16000
    max_len: int = 128  # tokens per text, [CLS] included; longer texts are truncated
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    n_experts: int = 8
    top_k: int = 2
    d_ff: int = 512  # hidden width of each expert
    dropout: float = 0.1
    n_classes: int = len(LABELS)
    labels: tuple[str, ...] = LABELS
    balance_loss_weight: float = 0.01
    z_loss_weight: float = 0.0
    pad_id: int = 0
    # "pre": our from-scratch blocks, LayerNorm before each sublayer. "post": BERT-style blocks,
    # LayerNorm after each residual add, for encoders upcycled from pretrained checkpoints.
    # Configs written before these two fields existed load as "pre" with PyTorch's eps.
    norm_position: str = "pre"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        problems = []
        if self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 1 <= self.top_k <= self.n_experts:
            problems.append(f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}")
        if len(self.labels) != self.n_classes:
            problems.append(f"{len(self.labels)} labels given for n_classes={self.n_classes}")
        if self.norm_position not in ("pre", "post"):
            problems.append(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if not self.layer_norm_eps > 0:
            problems.append(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "n_layers", "n_experts", "d_ff"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MoEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        d = dict(d)
        if "labels" in d:
            d["labels"] = tuple(d["labels"])
        return cls(**d)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> MoEConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


PRESETS: dict[str, MoEConfig] = {
    # Trains in seconds on a laptop CPU; used by the tests.
    "tiny": MoEConfig(
        vocab_size=2000, max_len=64, d_model=32, n_heads=2, n_layers=2, n_experts=8, top_k=2, d_ff=64, dropout=0.0
    ),
    # The shipped checkpoint: ~10.9M parameters, ~22 MB as fp16. Two layers, because v1's
    # latency is set by its sequential hops per layer (attention -> gating -> experts).
    "small": MoEConfig(
        vocab_size=16000, max_len=128, d_model=256, n_heads=4, n_layers=2, n_experts=8, top_k=2, d_ff=768, dropout=0.1
    ),
    # The configuration the original project describes.
    "seed": MoEConfig(
        vocab_size=30000, max_len=128, d_model=512, n_heads=8, n_layers=6, n_experts=8, top_k=2, d_ff=2048, dropout=0.1
    ),
}


def preset(name: str) -> MoEConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
