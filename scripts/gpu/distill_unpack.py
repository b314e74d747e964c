#!/usr/bin/env python3
"""Turn what scripts/gpu/distill_run.py brought back into whole checkpoint folders.

A student trained with its token table frozen came back without it: the table is rebuilt from
the same dequantized all-MiniLM-L6-v2 (scripts/gpu/distill_pack.py --dequantized), trimmed to
the same training split, and checked against the digest the run recorded.

    python scripts/gpu/distill_unpack.py --back FILES_AT --dequantized DIR --out runs/distill
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_run import read_parts  # noqa: E402

from moe.checkpoint import CONFIG, WEIGHTS, load_config  # noqa: E402
from moe.data import DEFAULT_DATA, load_split, train_val_split  # noqa: E402
from moe.upcycle import start_from_pretrained  # noqa: E402

TOKEN_TABLE = "embedding.token.weight"


def extract(archive: bytes, out: Path) -> None:
    """Unpack a student's folder; Pythons without tarfile's data filter (before 3.11.4) get the
    same guard by hand: plain files and folders inside OUT only."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(out, filter="data")
            return
        for member in tar.getmembers():
            inside = (out / member.name).resolve().is_relative_to(out.resolve())
            if not (member.isfile() or member.isdir()) or not inside:
                raise SystemExit(f"refusing to unpack {member.name!r}: not a plain file inside {out}")
        tar.extractall(out)


def token_table(dequantized: Path, folder: Path, data: Path) -> torch.Tensor:
    """The frozen table: MiniLM's rows for the vocabulary trimmed to the training split."""
    cfg = load_config(folder)
    rows = load_split(data, "train")
    train_rows, _ = train_val_split(rows, 0.05, 0)
    model, _ = start_from_pretrained(dequantized, train_rows.texts, cfg, "slice", layers=1)
    return model.embedding.token.weight.detach().to(torch.float16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--back", type=Path, required=True, help="the folder the run's files came back to")
    ap.add_argument("--dequantized", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    summary = json.loads((args.back / "summary.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    table = None
    for run in summary["runs"]:
        if run["name"].startswith("teacher") or run.get("weights_bytes") is None:
            continue
        name = run["name"]
        extract(read_parts(args.back / f"{name}.tar"), args.out)
        folder = args.out / name
        digest = run.get("token_table_sha256")
        if digest:
            state = load_file(str(folder / WEIGHTS))
            table = token_table(args.dequantized, folder, args.data) if table is None else table
            found = hashlib.sha256(table.numpy().tobytes()).hexdigest()
            if found != digest:
                raise SystemExit(f"{name}: the rebuilt token table differs from the trained one ({found} != {digest})")
            state[TOKEN_TABLE] = table
            save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
        cfg = json.loads((folder / CONFIG).read_text())
        print(f"{folder}: {cfg['n_layers']} layers, {cfg['n_experts']} experts, {(folder / WEIGHTS).stat().st_size} B")


if __name__ == "__main__":
    main()
