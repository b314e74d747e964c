#!/usr/bin/env python3
"""Why a half-precision full_model is slow on single texts: the first and the second call of the
TorchScript FullModel for each shape a single text can have (one text, 8 to 128 tokens), in
float32 and float16, with PyTorch's cuDNN attention allowed and not. A first call far slower
than the second is a per-shape cost (a plan built or a kernel compiled), which served single
texts pay again and again: every request batch brings a shape the instance has not seen.

    python3 scripts/gpu/half_shapes.py --out shapes.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from export.pieces import FullModel  # noqa: E402
from moe.checkpoint import load_checkpoint  # noqa: E402


def timed(module, ids, mask, lengths) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        module(ids, mask, lengths)
    torch.cuda.synchronize()
    return round(1000 * (time.perf_counter() - start), 3)


def sweep(module, batch: int) -> list[dict]:
    rows = []
    for tokens in range(8, 129, 8):
        ids = torch.randint(5, 1000, (batch * tokens,), device="cuda")
        mask = torch.ones(batch * tokens, dtype=torch.bool, device="cuda")
        lengths = torch.full((batch, 1), tokens, dtype=torch.int32, device="cuda")
        rows.append(
            dict(tokens=tokens, first_ms=timed(module, ids, mask, lengths), second_ms=timed(module, ids, mask, lengths))
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    model, _ = load_checkpoint(None)
    result = {}
    for dtype in ("float32", "float16"):
        for cudnn in (True, False):
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
            half = copy.deepcopy(model).to(getattr(torch, dtype)).eval()
            module = torch.jit.script(FullModel(half)).cuda()
            name = f"{dtype}, cuDNN attention {'on' if cudnn else 'off'}"
            result[name] = {f"batch {b}": sweep(module, b) for b in (1, 7)}
            first = [r["first_ms"] for r in result[name]["batch 1"]]
            second = [r["second_ms"] for r in result[name]["batch 1"]]
            print(
                json.dumps(dict(variant=name, first_ms_median=sorted(first)[8], second_ms_median=sorted(second)[8])),
                flush=True,
            )
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
