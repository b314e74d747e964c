"""v1 = v2 = eager on a served model: the first N official test texts through both workflows,
compared with the eager model in this process (on the device asked for, and on the CPU).

    python scripts/gpu/check_answers.py --url 127.0.0.1:8000 --device cuda --out answers.json

Prints and writes: labels equal, the largest probability differences, errors. Exits 1 if any
label differs or a probability differs by more than --tolerance (--v2-tolerance for pairs with v2,
whose model may be in half precision).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from bench.baseline import EagerModel
from moe.data import DEFAULT_DATA, load_split
from moe_client import MoEClient, MoEClientError


def eager_probs(model: EagerModel, texts: list[str], batch: int = 64) -> np.ndarray:
    from moe.evaluate import predict

    with torch.inference_mode():
        batches = predict(model.model, model.tokenizer, texts, model.model.cfg, batch, model.device)
        return np.concatenate([probs.numpy() for probs, _ in batches])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="host:port of the server's HTTP endpoint")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="device of the eager reference")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--v2-tolerance", type=float, help="default: --tolerance")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    texts = load_split(args.data, "test").texts[: args.texts]
    labels = EagerModel(args.checkpoint).labels
    references = {
        "eager_" + d: eager_probs(EagerModel(args.checkpoint, d), texts) for d in dict.fromkeys([args.device, "cpu"])
    }
    served, errors = {}, {}
    with MoEClient(args.url, timeout=120) as client:
        for workflow in ("v1", "v2"):
            try:
                predictions = client.classify(texts, workflow=workflow)
                served[workflow] = np.array([[p.probabilities[name] for name in labels] for p in predictions])
            except MoEClientError as e:
                errors[workflow] = str(e)
    report = dict(
        texts=len(texts),
        device=args.device,
        tolerance=args.tolerance,
        v2_tolerance=args.v2_tolerance,
        errors=errors,
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    )
    probs = {**served, **references}
    names = list(probs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            report[f"{a}_vs_{b}"] = dict(
                labels_equal=int((probs[a].argmax(1) == probs[b].argmax(1)).sum()),
                max_abs_prob_diff=float(np.abs(probs[a] - probs[b]).max()),
            )
    v2_tolerance = args.tolerance if args.v2_tolerance is None else args.v2_tolerance
    served_pairs = {k: v for k, v in report.items() if isinstance(v, dict) and k.startswith(("v1_", "v2_"))}
    ok = (
        not errors
        and len(served) == 2
        and all(
            v["labels_equal"] == len(texts)
            and v["max_abs_prob_diff"] <= (v2_tolerance if "v2" in k else args.tolerance)
            for k, v in served_pairs.items()
        )
    )
    report["ok"] = ok
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
