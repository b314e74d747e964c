#!/usr/bin/env python3
"""Pack the distillation experiment's trip to the GPU machine into one folder: the code, AG News
(xz) and all-MiniLM-L6-v2 with its vocabulary trimmed to train.csv's subwords, its matrices
stored as int8 with one fp16 scale per row (absmax), so that the whole trip stays under 30 MiB.

scripts/gpu/distill_run.py dequantizes the encoder before anything starts from it; the teacher
and every student start from those dequantized weights (the rounding moves a weight by at most
half a step of its row's scale: about 0.4 % of the row's largest weight). `--dequantized DIR`
writes the same folder here too, the one a frozen-embedding student's table is rebuilt from.

    python scripts/gpu/distill_pack.py --init MINILM_DIR --out TRIP [--dequantized DIR]

The code travels as `git archive HEAD moe scripts/gpu` (commit first).
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from moe.checkpoint import CONFIG, TOKENIZER, WEIGHTS  # noqa: E402
from moe.data import read_csv  # noqa: E402
from moe.upcycle import read_pretrained, trim_vocabulary  # noqa: E402

QUANTIZED = "weights.int8.safetensors"
TRIP_LIMIT = 30 * 2**20


def quantize(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices as int8 rows with fp16 absmax scales (NAME.q, NAME.scale); the rest fp16."""
    out = {}
    for name, w in weights.items():
        if not w.is_floating_point():
            continue
        w = w.float()
        if w.dim() == 2:
            scale = (w.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12).half()
            out[name + ".q"] = torch.round(w / scale.float()).clamp(-127, 127).to(torch.int8)
            out[name + ".scale"] = scale
        else:
            out[name] = w.half()
    return out


def dequantize(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in packed.items():
        if name.endswith(".q"):
            base = name[: -len(".q")]
            out[base] = t.float() * packed[base + ".scale"].float()
        elif not name.endswith(".scale"):
            out[name] = t.float()
    return out


def write_dequantized(trip_minilm: Path, folder: Path) -> None:
    """A Hugging Face folder (fp32 weights) that moe/upcycle.py reads."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dequantize(load_file(str(trip_minilm / QUANTIZED))), str(folder / WEIGHTS))
    for name in (CONFIG, TOKENIZER):
        shutil.copy(trip_minilm / name, folder / name)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", type=Path, required=True, help="all-MiniLM-L6-v2 as a Hugging Face folder")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ag_news")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dequantized", type=Path, help="also write the dequantized encoder here")
    args = ap.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "src").mkdir(parents=True)
    archive = ["git", "-C", str(ROOT), "archive", "HEAD", "moe", "scripts/gpu"]
    archive = subprocess.run(archive, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(args.out / "src")], input=archive, check=True)
    (args.out / "ag_news").mkdir()
    for split in ("train", "test"):
        with open(args.data / f"{split}.csv", "rb") as src:
            with lzma.open(args.out / "ag_news" / f"{split}.csv.xz", "wb") as dst:
                shutil.copyfileobj(src, dst)
    pretrained = trim_vocabulary(read_pretrained(args.init), read_csv(args.data / "train.csv").texts)
    minilm = args.out / "minilm"
    minilm.mkdir()
    save_file(quantize(pretrained.weights), str(minilm / QUANTIZED))
    (minilm / CONFIG).write_text(json.dumps(pretrained.config, indent=2) + "\n")
    pretrained.tokenizer.save(str(minilm / TOKENIZER))
    if args.dequantized:
        write_dequantized(minilm, args.dequantized)
    size = folder_bytes(args.out)
    print(f"vocabulary {pretrained.config['vocab_size']} subwords; trip {size / 2**20:.1f} MiB in {args.out}")
    if size > TRIP_LIMIT:
        sys.exit(f"the trip exceeds {TRIP_LIMIT / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
