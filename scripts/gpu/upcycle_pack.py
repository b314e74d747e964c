#!/usr/bin/env python3
"""Pack what an upcycling run on the GPU machine needs and the repository lacks: the pretrained
encoder and AG News, small enough to travel with the working tree.

The encoder is written as a Hugging Face folder that moe/upcycle.py reads: fp16 weights, the
vocabulary trimmed to the subwords of train.csv (the training and validation rows, never the test
set; `moe train --init` trims again to its training split), sharded so that each part fits
one call's carry. The CSVs go xz-compressed. One folder per call:

    OUT/part1/minilm/{config.json, tokenizer.json, model.safetensors.index.json, shard 1}
    OUT/part1/ag_news/{train,test}.csv.xz
    OUT/part2/minilm/shard 2

    python scripts/gpu/upcycle_pack.py --init HF_FOLDER [--data ../shared/data/ag_news] [--out .devcarry/upcycle]
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from moe.checkpoint import CONFIG, TOKENIZER  # noqa: E402
from moe.data import read_csv  # noqa: E402
from moe.upcycle import WEIGHTS_INDEX, Pretrained, read_pretrained, trim_vocabulary  # noqa: E402

# The repository is ~25 MiB of the 64 MiB a call may carry.
PART_LIMIT = 30 * 2**20


def shard(weights: dict[str, torch.Tensor], first_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Two shards in name order, the first up to `first_shard_bytes`."""
    first, second, used = {}, {}, 0
    for name in sorted(weights):
        size = weights[name].numel() * weights[name].element_size()
        if not second and used + size <= first_shard_bytes:
            first[name], used = weights[name], used + size
        else:
            second[name] = weights[name]
    return [first, second]


def write_folder(pretrained: Pretrained, parts: list[Path], first_shard_bytes: int) -> None:
    """A Hugging Face folder with sharded fp16 safetensors; shard i goes to parts[i]."""
    weights = {k: v.to(torch.float16).contiguous() for k, v in pretrained.weights.items() if v.is_floating_point()}
    shards = shard(weights, first_shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for part, tensors, name in zip(parts, shards, names):
        (part / "minilm").mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(part / "minilm" / name), metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": sum(v.numel() * 2 for v in weights.values())},
        "weight_map": {k: name for tensors, name in zip(shards, names) for k in tensors},
    }
    (parts[0] / "minilm" / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (parts[0] / "minilm" / CONFIG).write_text(json.dumps(pretrained.config, indent=2) + "\n")
    pretrained.tokenizer.save(str(parts[0] / "minilm" / TOKENIZER))


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", type=Path, required=True, help="pretrained BERT-style Hugging Face folder")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ag_news")
    ap.add_argument("--out", type=Path, default=ROOT / ".devcarry" / "upcycle")
    args = ap.parse_args()

    train_texts = read_csv(args.data / "train.csv").texts
    pretrained = trim_vocabulary(read_pretrained(args.init), train_texts)
    shutil.rmtree(args.out, ignore_errors=True)
    parts = [args.out / "part1", args.out / "part2"]
    (parts[0] / "ag_news").mkdir(parents=True)
    for split in ("train", "test"):
        with (
            open(args.data / f"{split}.csv", "rb") as src,
            lzma.open(parts[0] / "ag_news" / f"{split}.csv.xz", "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
    # What part 1 holds besides its shard: the data and the small files.
    room = PART_LIMIT - folder_bytes(parts[0]) - 2 * 2**20
    write_folder(pretrained, parts, first_shard_bytes=room)
    print(f"vocabulary: {pretrained.config['vocab_size']} subwords (train.csv's, special tokens, single characters)")
    for part in parts:
        size = folder_bytes(part)
        print(f"{part}: {size / 2**20:.1f} MiB")
        if size > PART_LIMIT:
            sys.exit(f"{part} exceeds {PART_LIMIT / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
