"""v2 on a GPU, export against export: single texts' median at concurrency 1, single texts'
best rate and its p99, and the best rate of batches of 32, one bar per export.

    python scripts/plot_gpu_levels.py OUT.png "LABEL=bench.json[+bench.json...]" ...  (split at the last "=")

An export's levels may come from several bench JSONs (joined by "+"); a level missing from all
of them is left blank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def v2_levels(paths: list[Path]) -> dict:
    """(texts per request, concurrency) -> level, over every v2 level of the JSONs given."""
    return {
        (lv["batch_size"], lv["concurrency"]): lv
        for path in paths
        for lv in json.loads(path.read_text())["levels"]
        if lv["workflow"] == "v2"
    }


def summary(levels: dict) -> tuple:
    """(single texts' p50 at C=1 in ms, single texts' best texts/s and its p99, batches of 32's
    best texts/s): None where the JSONs have no such level."""
    single_c1 = levels.get((1, 1))
    singles = [lv for (b, c), lv in levels.items() if b == 1 and c > 1]
    batches = [lv for (b, _), lv in levels.items() if b == 32]
    best_single = max(singles, key=lambda lv: lv["throughput"], default=None)
    return (
        single_c1["p50_ms"] if single_c1 else None,
        (best_single["throughput"], best_single["p99_ms"]) if best_single else None,
        max((lv["throughput"] for lv in batches), default=None),
    )


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    out = Path(sys.argv[1])
    runs = [
        (label, summary(v2_levels([Path(p) for p in paths.split("+")])))
        for label, paths in (arg.rsplit("=", 1) for arg in sys.argv[2:])
    ]
    labels = [label for label, _ in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.6 * len(runs) + 2), sharey=True)
    panels = [
        ("single texts, C=1: p50 ms (lower is better)", [s[0] for _, s in runs], "{:.2f}"),
        ("single texts, best C>1: texts/s (p99 ms)", [s[1][0] if s[1] else None for _, s in runs], "{:,.0f}"),
        ("batches of 32, best C: texts/s", [s[2] for _, s in runs], "{:,.0f}"),
    ]
    for ax, (title, values, fmt) in zip(axes, panels):
        y = range(len(values))
        ax.barh(list(y), [v or 0 for v in values], color="C0")
        for i, v in enumerate(values):
            text = "not measured" if v is None else fmt.format(v)
            if v is not None and ax is axes[1]:
                text += f" ({runs[i][1][1][1]:,.0f} ms)"
            ax.text(v or 0, i, " " + text, va="center", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, max((v for v in values if v is not None), default=1) * 1.5)
        # Few ticks with thousands separators: six-digit rates otherwise run into each other.
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("v2 on one GPU by export (wrk, every answer checked against eager)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
