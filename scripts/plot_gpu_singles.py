"""v2's single texts on a GPU: each run's levels as texts/s against p99 latency, one line per
export, with the target's corner (at least 20,000 texts/s within a p99 of 50 ms).

    python scripts/plot_gpu_singles.py OUT.png "LABEL=bench.json" ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_TEXTS_PER_S, TARGET_P99_MS = 20_000, 50


def single_text_levels(path: Path) -> list:
    """(concurrency, texts/s, p99 ms) of v2's single-text levels, by concurrency."""
    levels = json.loads(path.read_text())["levels"]
    return sorted(
        (lv["concurrency"], lv["throughput"], lv["p99_ms"])
        for lv in levels
        if lv["workflow"] == "v2" and lv["batch_size"] == 1 and lv["concurrency"] > 1
    )


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, runs = Path(sys.argv[1]), [arg.split("=", 1) for arg in sys.argv[2:]]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, path in runs:
        levels = single_text_levels(Path(path))
        ax.plot([t for _, t, _ in levels], [p for _, _, p in levels], "o-", label=label)
        for c, t, p in levels:
            ax.annotate(f"C={c}", (t, p), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(TARGET_TEXTS_PER_S, color="C3", ls="--", lw=1)
    ax.axhline(TARGET_P99_MS, color="C3", ls="--", lw=1)
    ax.fill_between([TARGET_TEXTS_PER_S, TARGET_TEXTS_PER_S * 1.3], 0, TARGET_P99_MS, color="C3", alpha=0.08)
    ax.text(TARGET_TEXTS_PER_S * 1.02, TARGET_P99_MS * 0.5, "target", color="C3", fontsize=9)
    ax.set_xlim(0, TARGET_TEXTS_PER_S * 1.3)
    ax.set_ylim(0, None)
    ax.set_xlabel("texts/s (wrk, every answer checked against eager)")
    ax.set_ylabel("p99 latency, ms")
    ax.set_title("v2 single texts on one GPU: texts/s against p99, by export")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
