"""The plot of docs/gpu_serving.md: v2's and v1's texts/s on one H200, from the bench JSON of
each configuration, against the tokenizer's own rate on that host and the targets.

    python scripts/plot_gpu_serving.py docs/runs/gpu/2026-12-04 docs/img/gpu_serving_configurations.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# (label, JSON file in the runs folder, workflow, texts per request)
BARS = [
    ("v2, batches of 32\ndefault before (f127d8e)", None, "v2", 32),
    ("v2, batches of 32\nsized, full_model 2 (call 1)", "call1_bench_default_ed52edd.json", "v2", 32),
    ("v2, batches of 32\nfull_model 2 (call 2)", "call2_bench_fm2_4be3b03.json", "v2", 32),
    ("v2, batches of 32\ndefault: full_model 4 (call 2)", "call2_bench_default_4be3b03.json", "v2", 32),
    ("v2, single texts, C=256\ndefault (call 2; p99 56 ms)", "call2_bench_default_4be3b03.json", "v2", 1),
    ("v1, batches of 32\nBLS batches of 64 (call 1)", "call1_bench_default_ed52edd.json", "v1", 32),
]
BEFORE = 4_704  # the best of the runs before host-stage sizing, the measurement at f127d8e


def best(result: dict, workflow: str, batch: int) -> float:
    return max(lv["throughput"] for lv in result["levels"] if lv["workflow"] == workflow and lv["batch_size"] == batch)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    values = [BEFORE if f is None else best(json.loads((runs / f).read_text()), w, b) for _, f, w, b in BARS]
    tokenizer = max(r["texts_per_s"] for r in json.loads((runs / "call2_tokenizer_rate.json").read_text())["runs"])
    fig, ax = plt.subplots(figsize=(11, 4.8))
    bars = ax.bar(range(len(BARS)), values, color=["#999"] + ["C1"] * 4 + ["C0"])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=9)
    ax.axhline(100_000, color="C3", ls="--", lw=1)
    ax.text(len(BARS) - 0.5, 100_000, "target, v2 batches of 32", color="C3", ha="right", va="bottom", fontsize=9)
    ax.axhline(tokenizer, color="k", ls=":", lw=1)
    label = "tokenizer alone, 12 processes (no server)"
    ax.text(len(BARS) - 0.5, tokenizer, label, ha="right", va="bottom", fontsize=9)
    ax.set_xticks(range(len(BARS)), [label for label, *_ in BARS], fontsize=8)
    ax.set_ylabel("texts/s (best level, wrk, every answer checked)")
    ax.set_title("One H200, 16 host cores: served texts/s by export")
    ax.set_ylim(0, 110_000)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
