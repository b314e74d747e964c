#!/usr/bin/env python3
"""The accuracy-cost frontier of the distilled students: test accuracy (each evaluated once,
after selection by validation) against served v2 throughput at concurrency 64 and weight size,
with today's bundled model from the same bench session and the original project's claim.

    python scripts/gpu/distill_frontier.py --summary docs/runs/distill_gpu/summary.json \
        --bench NAME=build/bench-distill/NAME/bench.json ... --bundled-test 0.9074 \
        --plot docs/img/distill_frontier.png

Prints the markdown table; NAME is a run of the summary, or "bundled". With several experiments,
`--summary PREFIX=SUMMARY` each, and NAME is PREFIX/name; with several bench sessions, each
`--bench SESSION:NAME=...`, its ratios taken against that session's bundled runs (the plot's axis).
`--reference NAME` adds a run that was not benched (a teacher, over the size budget): a table row
without throughput and, in the plot, a line at its test accuracy, since it has no place on the
cost axis. A model benched in several sessions is one point in the plot, its ratios pooled.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORIGINAL_CLAIM = 0.922  # the original project's AG News accuracy (validation), no serving cost given


def v2_throughput(bench: dict, concurrency: int = 64) -> float:
    for level in bench["levels"]:
        if level["workflow"] == "v2" and level["concurrency"] == concurrency and level["batch_size"] == 1:
            return level["throughput"]
    raise SystemExit(f"no v2 level at concurrency {concurrency} in {bench['command']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", action="append", required=True, metavar="[PREFIX=]SUMMARY_JSON")
    ap.add_argument(
        "--bench",
        action="append",
        default=[],
        metavar="[SESSION:]NAME=BENCH_JSON",
        help="one per model and bench round; a SESSION's ratios are taken against its own bundled runs",
    )
    ap.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME",
        help="a run of the summaries that was not benched: its test accuracy as a line in the plot",
    )
    ap.add_argument("--bundled-test", type=float, required=True, help="the bundled model's test accuracy")
    ap.add_argument("--bundled-bytes", type=int, required=True)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--default", help="the run that ships as the product's default: ringed and named in the plot")
    args = ap.parse_args()
    runs = {}
    for item in args.summary:
        prefix, _, path = item.rpartition("=")
        for r in json.loads(Path(path).read_text())["runs"]:
            runs[f"{prefix}/{r['name']}" if prefix else r["name"]] = r
    # Round i of every model is the i-th --bench given for it in its session; ratios are taken
    # within a round of a session.
    throughputs: dict[tuple[str, str], list[float]] = {}
    for item in args.bench:
        key, _, path = item.partition("=")
        session, _, name = key.rpartition(":")
        throughputs.setdefault((session, name), []).append(v2_throughput(json.loads(Path(path).read_text())))
    rows = []  # (session, name, test, texts/s per round, ratio per round, bytes, val)
    for (session, name), values in throughputs.items():
        bases = throughputs[(session, "bundled")]
        ratios = [v / b for v, b in zip(values, bases)]
        if name == "bundled":
            rows.append((session, name, args.bundled_test, values, ratios, args.bundled_bytes, None))
        else:
            r = runs[name]
            rows.append((session, name, r["test_accuracy"], values, ratios, r["weights_bytes"], r["best_val_accuracy"]))
    print("| bench session | model | val % | test % | v2 texts/s at C=64, per round | vs bundled, per round | MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for session, name, test, values, ratios, size, val in rows:
        val_s = f"{val * 100:.2f}" if val is not None else ""
        tput = " / ".join(f"{v:.0f}" for v in values)
        ratio = " / ".join(f"{x:.2f}x" for x in ratios)
        print(f"| {session} | {name} | {val_s} | {test * 100:.2f} | {tput} | {ratio} | {size / 1e6:.1f} |")
    references = [(name, runs[name]) for name in args.reference]
    for name, r in references:
        val, test, size = r["best_val_accuracy"] * 100, r["test_accuracy"] * 100, r["weights_bytes"] / 1e6
        print(f"| | {name} | {val:.2f} | {test:.2f} | | | {size:.1f} |")
    if args.plot:
        plot(rows, args.plot, references, args.default)


def plot(rows: list, out: Path, references: list = (), default: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefixes = sorted({name.rpartition("/")[0] for _, name, *_ in rows if name != "bundled"})
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    # Teachers first, so the axis limits the labels are placed in already include them; each a
    # line in the legend (they have no serving cost to place them by).
    for i, (name, r) in enumerate(references):
        ax.axhline(
            r["test_accuracy"] * 100,
            color=f"C{4 + i}",
            ls="-.",
            lw=0.9,
            label=f"{name}: {r['test_accuracy'] * 100:.2f} % ({r['weights_bytes'] / 1e6:.0f} MB, not benched)",
        )
    points = []
    for name, (test, size, ratios) in pool_sessions(rows).items():
        x = sum(ratios) / len(ratios)
        ax.errorbar(x, test * 100, xerr=[[x - min(ratios)], [max(ratios) - x]], color="lightgray", zorder=0)
        color = "tab:gray" if name == "bundled" else f"C{prefixes.index(name.rpartition('/')[0])}"
        is_default = name == default
        ax.scatter(
            x, test * 100, s=size / 1e6 * 6, color=color, edgecolors="black" if is_default else "none", linewidths=1.5
        )
        label = "agnews-moe-small, from scratch" if name == "bundled" else name
        label += " (bundled)" if is_default else ""
        points.append((x, test * 100, f"{label} ({size / 1e6:.0f} MB)", size / 1e6 * 6))
    ax.axhline(ORIGINAL_CLAIM * 100, color="tab:red", ls="--", lw=1)
    ax.text(ax.get_xlim()[0], ORIGINAL_CLAIM * 100 + 0.05, " original project's claim, 92.2 %", color="tab:red")
    ax.axhline(93.5, color="tab:green", ls=":", lw=1)
    ax.text(ax.get_xlim()[0], 93.55, " target 93.5 %", color="tab:green")
    ax.axvline(0.67, color="tab:orange", ls=":", lw=1)
    ax.text(0.67, ax.get_ylim()[0] + 0.1, " 0.67x: cost target", color="tab:orange")
    if references:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.2), fontsize=8, title="teachers", title_fontsize=8)
    ax.set_xlabel("v2 texts/s at concurrency 64 / agnews-moe-small's in the same bench round (2-core CPU)")
    ax.set_ylabel("test accuracy % (7,600 texts)")
    ax.set_title("AG News: accuracy against serving cost (marker area ~ weights)")
    fig.tight_layout()  # before the labels: they are placed by where the points land in the figure
    place_labels(fig, ax, points)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def pool_sessions(rows: list) -> dict[str, tuple[float, int, list[float]]]:
    """One plotted point per model: a model benched in several sessions pools its ratios (each
    already taken within its own round), and its whisker spans every round."""
    models: dict[str, tuple[float, int, list[float]]] = {}
    for _, name, test, _, ratios, size, _ in rows:
        models.setdefault(name, (test, size, []))[2].extend(ratios)
    return models


def place_labels(fig, ax, points: list) -> list:
    """Each point's label above right of it, or, where that would touch another marker or label,
    the nearest free place around it, tied to the point by a thin line once it moves away
    (models of one architecture sit close together). Returns the labels' boxes, in pixels."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72
    markers = []
    for x, y, _, area in points:
        cx, cy = ax.transData.transform((x, y))
        r = (area / 3.1416) ** 0.5 * px_per_pt + 2  # scatter's s is the marker's area in pt²
        markers.append(Bbox([[cx - r, cy - r], [cx + r, cy + r]]))
    sides = [
        (dx, dy, "left" if dx > 0 else "right", "bottom" if dy > 0 else "top")
        for dy in (4, -4, 16, -16, 28, -28)
        for dx in (8, -8)
    ]
    placed = []
    for i, (x, y, text, _) in enumerate(points):
        others = [m for j, m in enumerate(markers) if j != i]
        for dx, dy, ha, va in sides:
            leader = {"arrowstyle": "-", "color": "gray", "lw": 0.6} if abs(dy) > 4 else None
            label = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, arrowprops=leader
            )
            box = label.get_window_extent(renderer).expanded(1.0, 1.1)
            if not any(box.overlaps(m) for m in others) and not any(box.overlaps(b) for b in placed):
                break
            label.remove()
        else:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(8, 4))
            box = label.get_window_extent(renderer)
        placed.append(box)
    return placed


if __name__ == "__main__":
    main()
