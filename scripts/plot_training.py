#!/usr/bin/env python3
"""Plots and the runs table of docs/results.md, from the files the training runs left behind.

Reads every `docs/runs/<sweep>/<run>.metrics.json` (written by `moe train`), the test-set
results next to it (`<run>.test.json`: GPU, `<run>.test_cpu.json`: `moe eval` on a CPU), the
command line (`<run>.cmd`) and log (`<run>.log`), and the bundled checkpoint's metrics.json.
Writes docs/img/training_curves.png and docs/img/expert_load.png, and with --table prints the
markdown runs table.

    .venv/bin/python scripts/plot_training.py [--table]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs" / "runs"
IMG = ROOT / "docs" / "img"
# The from-scratch default of the sweeps (its card and metrics are kept as a record).
BUNDLED = RUNS / "agnews-moe-small"


def load_runs() -> list[dict]:
    runs = []
    gpu = (RUNS / "gpu.txt").read_text().split(",")[0].strip() if (RUNS / "gpu.txt").is_file() else "?"
    for sweep in sorted(p for p in RUNS.iterdir() if p.is_dir() and p.name.startswith("sweep")):
        metrics_files = sorted(sweep.glob("*.metrics.json"))
        for f in metrics_files:
            name = f.name[: -len(".metrics.json")]
            m = json.loads(f.read_text())
            run = dict(
                name=name,
                sweep=sweep.name,
                metrics=m,
                gpu=gpu,
                concurrent=len(metrics_files),
                preset="seed" if m["config"]["n_layers"] == 6 else "small",
            )
            for key, suffix in (("test_gpu", ".test.json"), ("test_cpu", ".test_cpu.json")):
                p = sweep / (name + suffix)
                run[key] = json.loads(p.read_text()) if p.is_file() else None
            t, c = m["train"], m["config"]
            run["settings"] = (
                f"lr {t['lr']:g}, batch {t['batch_size']}, smoothing {t['label_smoothing']:g}, "
                f"wd {t['weight_decay']:g}, dropout {c['dropout']:g}, vocab {c['vocab_size']}, "
                f"balance w {c['balance_loss_weight']:g}"
            )
            cmd = (sweep / (name + ".cmd")).read_text().split()
            run["args"] = " ".join(cmd[cmd.index("--out") + 2 :])
            log = (sweep / (name + ".log")).read_text()
            found = re.search(r"model: ([\d.]+)M parameters", log)
            run["params_m"] = float(found.group(1)) if found else None
            run["killed"] = "rc=124" in log
            runs.append(run)
    return runs


def fmt_acc(x) -> str:
    return "–" if x is None else f"{x * 100:.2f}"


def table(runs: list[dict]) -> str:
    bundled_epochs = json.loads((BUNDLED / "metrics.json").read_text())["epochs"]
    head = (
        "| run | preset | settings | params | train rows | epochs run / planned "
        "(best) | val acc % | test acc % (GPU) | test acc % (CPU) | max load / fair (test) "
        "| train time | GPU (runs sharing it) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(runs, key=lambda r: (r["preset"] != "small", r["sweep"], r["name"])):
        m = r["metrics"]
        planned, ran = m["train"]["epochs"], len(m["epochs"])
        test = r["test_gpu"] or r["test_cpu"]
        load = f"{test['max_load_over_fair_share']:.2f}" if test else "–"
        seconds = sum(e["seconds"] for e in m["epochs"])
        name = r["name"] + (" **(previous default)**" if m["epochs"] == bundled_epochs else "")
        lines.append(
            f"| {name} | {r['preset']} | {r['settings']} | {r['params_m']:.1f}M "
            f"| {m['train_rows']:,} | {ran} / {planned}{' (time limit)' if r['killed'] else ''} "
            f"({m['best_epoch']}) | {fmt_acc(m['best_val_accuracy'])} "
            f"| {fmt_acc(r['test_gpu'] and r['test_gpu']['accuracy'])} "
            f"| {fmt_acc(r['test_cpu'] and r['test_cpu']['accuracy'])} | {load} "
            f"| {seconds / 60:.1f} min | {r['gpu']} ({r['sweep']}: {r['concurrent']}) |"
        )
    return "\n".join(lines)


def plot_curves(runs: list[dict], out: Path) -> None:
    bundled = json.loads((BUNDLED / "metrics.json").read_text())
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), sharex="col")
    for col, preset in enumerate(("small", "seed")):
        chosen = [r for r in runs if r["preset"] == preset]
        for r in sorted(chosen, key=lambda r: r["name"]):
            ep = [e["epoch"] for e in r["metrics"]["epochs"]]
            style = "-" if r["sweep"] != "sweep1" else "--"
            lw = 2.8 if r["metrics"]["epochs"] == bundled["epochs"] else 1.3
            axes[0, col].plot(
                ep,
                [e["val_accuracy"] * 100 for e in r["metrics"]["epochs"]],
                style,
                marker="o",
                ms=3,
                lw=lw,
                label=f"{r['name']} ({r['sweep']})",
            )
            axes[1, col].plot(ep, [e["train_loss"] for e in r["metrics"]["epochs"]], style, marker="o", ms=3, lw=lw)
        axes[0, col].set_title(f"{preset} preset: validation accuracy (2,285 held-out training rows)")
        axes[0, col].set_ylabel("val accuracy %")
        axes[0, col].set_ylim(88, 91.5)
        axes[0, col].grid(alpha=0.3)
        axes[0, col].legend(fontsize=7, ncol=2, loc="lower right")
        axes[1, col].set_title(f"{preset} preset: training loss (cross-entropy incl. label smoothing)")
        axes[1, col].set_ylabel("train loss")
        axes[1, col].set_xlabel("epoch")
        axes[1, col].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[1, col].grid(alpha=0.3)
    fig.suptitle(
        "AG News, 43,417 training rows (45,702 of the official 120,000 minus validation); dashed: sweep 1", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def best_seed_run(runs: list[dict]) -> dict | None:
    """The seed-preset run with the best validation accuracy that has a test evaluation."""
    tested = [r for r in runs if r["preset"] == "seed" and r["test_gpu"]]
    return max(tested, key=lambda r: r["metrics"]["best_val_accuracy"], default=None)


def plot_load(runs: list[dict], out: Path) -> None:
    m = json.loads((BUNDLED / "metrics.json").read_text())
    panels = [("bundled small checkpoint", m["test"]["expert_load"])]
    seed = best_seed_run(runs)
    if seed:
        panels.append((f"best seed run ({seed['name']})", seed["test_gpu"]["expert_load"]))
    cols = max(len(load) for _, load in panels)
    fig, axes = plt.subplots(len(panels), cols, figsize=(3.3 * cols, 3.2 * len(panels)), sharey=True, squeeze=False)
    for row, (title, load) in enumerate(panels):
        n_experts = len(load[0])
        for layer in range(cols):
            ax = axes[row, layer]
            if layer >= len(load):
                ax.axis("off")
                continue
            fair = sum(load[layer]) / n_experts
            share = [v / fair for v in load[layer]]
            ax.bar(range(n_experts), share, color="tab:blue" if row == 0 else "tab:purple")
            ax.axhline(1.0, color="gray", lw=1, ls="--", label="fair share")
            ax.axhline(2.0, color="tab:red", lw=1, ls=":", label="2x fair share (limit)")
            ax.set_xticks(range(n_experts), [f"e{e}" for e in range(n_experts)], fontsize=7)
            ax.set_title(f"{title}\nlayer {layer}: max {max(share):.2f}x", fontsize=8)
            ax.set_ylim(0, 2.2)
            ax.grid(axis="y", alpha=0.3)
        axes[row, 0].set_ylabel("tokens routed / fair share")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Expert load per layer on the 7,600-row AG News test set", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="print the markdown runs table")
    args = parser.parse_args()
    runs = load_runs()
    IMG.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, IMG / "training_curves.png")
    plot_load(runs, IMG / "expert_load.png")
    if args.table:
        print(table(runs))
    else:
        print(f"{len(runs)} runs; wrote {IMG / 'training_curves.png'} and {IMG / 'expert_load.png'}")


if __name__ == "__main__":
    main()
