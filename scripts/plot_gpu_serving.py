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
    ("v2, batches of 32\ndefault, call 2", "call2_bench_default_4be3b03.json", "v2", 32),
    ("v2, batches of 32\ndefault now, call 4", "call4_bench_default_bd73dcd.json", "v2", 32),
    ("v2, batches of 32\nfloat16 full_model, call 4", "call4_bench_fp16_bd73dcd.json", "v2", 32),
    ("v2, single texts, C=256\ndefault now, call 4", "call4_bench_default_bd73dcd.json", "v2", 1),
    ("v1, batches of 32\nBLS batches of 64, call 1", "call1_bench_default_ed52edd.json", "v1", 32),
    ("v1, batches of 32\nBLS batches of 64, call 4", "call4_bench_bls64_bd73dcd.json", "v1", 32),
    ("v1, batches of 32\ndefault now: BLS 256, call 4", "call4_bench_default_bd73dcd.json", "v1", 32),
]
COLORS = ["#999"] + ["C1"] * 4 + ["C0"] * 3
BEFORE = 4_704  # the best of the runs before host-stage sizing, the measurement at f127d8e
TOKENIZER_RATES = [
    ("call2_tokenizer_rate.json", "tokenizer alone, 12 processes, call 2"),
    ("call3_tokenizer_rate.json", "fast path, call 3"),
]


def best(result: dict, workflow: str, batch: int) -> float:
    return max(lv["throughput"] for lv in result["levels"] if lv["workflow"] == workflow and lv["batch_size"] == batch)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    values = [BEFORE if f is None else best(json.loads((runs / f).read_text()), w, b) for _, f, w, b in BARS]
    fig, ax = plt.subplots(figsize=(14, 5))
    bars = ax.bar(range(len(BARS)), values, color=COLORS)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=9)
    top = 130_000
    ax.axhline(100_000, color="C3", ls="--", lw=1)
    ax.text(len(BARS) - 0.5, 100_000, "target, v2 batches of 32", color="C3", ha="right", va="bottom", fontsize=9)
    for name, label in TOKENIZER_RATES:
        rate = max(r["texts_per_s"] for r in json.loads((runs / name).read_text())["runs"])
        if rate < top:
            ax.axhline(rate, color="k", ls=":", lw=1)
            ax.text(len(BARS) - 0.5, rate, f"{label} (no server)", ha="right", va="bottom", fontsize=9)
        else:
            ax.text(
                len(BARS) - 0.5, top * 0.97, f"{label}: {rate:,.0f} (off the chart)", ha="right", va="top", fontsize=9
            )
    ax.set_xticks(range(len(BARS)), [label for label, *_ in BARS], fontsize=7.5)
    ax.set_ylabel("texts/s (best level, wrk, every answer checked)")
    ax.set_title("One H200, 16 host cores: served texts/s by export")
    ax.set_ylim(0, top)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
