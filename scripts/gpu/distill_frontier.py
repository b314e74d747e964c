#!/usr/bin/env python3
"""The accuracy-cost frontier of the distilled students: test accuracy (each evaluated once,
after selection by validation) against served v2 throughput at concurrency 64 and weight size,
with today's bundled model from the same bench session and the original project's claim.

    python scripts/gpu/distill_frontier.py --summary docs/runs/distill_gpu/summary.json \
        --bench NAME=build/bench-distill/NAME/bench.json ... --bundled-test 0.9074 \
        --plot docs/img/distill_frontier.png

Prints the markdown table; NAME is a run of the summary, or "bundled".
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
    ap.add_argument("--summary", type=Path, required=True)
    ap.add_argument(
        "--bench", action="append", default=[], metavar="NAME=BENCH_JSON", help="one per model and bench round"
    )
    ap.add_argument("--bundled-test", type=float, required=True, help="the bundled model's test accuracy")
    ap.add_argument("--bundled-bytes", type=int, required=True)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    runs = {r["name"]: r for r in json.loads(args.summary.read_text())["runs"]}
    # Round i of every model is the i-th --bench given for it; ratios are taken within a round.
    throughputs: dict[str, list[float]] = {}
    for item in args.bench:
        name, _, path = item.partition("=")
        throughputs.setdefault(name, []).append(v2_throughput(json.loads(Path(path).read_text())))
    bases = throughputs["bundled"]
    base = sum(bases) / len(bases)
    rows = [("bundled", args.bundled_test, bases, args.bundled_bytes, None)]
    for name, values in throughputs.items():
        if name != "bundled":
            r = runs[name]
            rows.append((name, r["test_accuracy"], values, r["weights_bytes"], r["best_val_accuracy"]))
    print("| model | val % | test % | v2 texts/s at C=64, per round | vs bundled, per round | weights MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, test, values, size, val in rows:
        val_s = f"{val * 100:.2f}" if val is not None else ""
        tput = " / ".join(f"{v:.0f}" for v in values)
        ratio = " / ".join(f"{v / b:.2f}x" for v, b in zip(values, bases))
        print(f"| {name} | {val_s} | {test * 100:.2f} | {tput} | {ratio} | {size / 1e6:.1f} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, test, values, size, _ in rows:
            tput = sum(values) / len(values)
            spread = [[tput - min(values)], [max(values) - tput]]
            ax.errorbar(tput, test * 100, xerr=spread, color="lightgray", zorder=0)
            ax.scatter(tput, test * 100, s=size / 1e6 * 6, color="tab:gray" if name == "bundled" else "tab:blue")
            label = "agnews-moe-small, from scratch" if name == "bundled" else name
            ax.annotate(f"{label} ({size / 1e6:.0f} MB)", (tput, test * 100), textcoords="offset points", xytext=(6, 4))
        ax.axhline(ORIGINAL_CLAIM * 100, color="tab:red", ls="--", lw=1)
        ax.text(ax.get_xlim()[0], ORIGINAL_CLAIM * 100 + 0.05, " original project's claim, 92.2 %", color="tab:red")
        ax.axhline(93.5, color="tab:green", ls=":", lw=1)
        ax.text(ax.get_xlim()[0], 93.55, " target 93.5 %", color="tab:green")
        ax.axvline(0.67 * base, color="tab:orange", ls=":", lw=1)
        ax.text(0.67 * base, ax.get_ylim()[0] + 0.1, " 0.67x agnews-moe-small", color="tab:orange")
        ax.set_xlabel("v2 texts/s at concurrency 64 (moe bench, 2-core CPU; mean and range of the rounds)")
        ax.set_ylabel("test accuracy % (7,600 texts)")
        ax.set_title("AG News: accuracy against serving cost (marker area ~ weights)")
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
