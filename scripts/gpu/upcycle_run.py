#!/usr/bin/env python3
"""Fine-tune several upcycled MoEs at once on one GPU; bring back every run's numbers and the
selected checkpoint.

Run from the repository root on the GPU machine, on the trip folder that
scripts/gpu/upcycle_pack.py packs (minilm/: the pretrained encoder; ag_news/: the CSVs, xz):

    python3 scripts/gpu/upcycle_run.py --trip TRIP --out $OUT [--runs copy,slice,...] [--time-limit 470]

Each run is its own process (moe.train.train with --init semantics: best epoch by validation
accuracy, never test), then its best checkpoint is evaluated once on the 7,600 test rows. Runs
still training at the time limit are stopped; their best epoch so far is evaluated instead and
marked as stopped. The selected checkpoint is the best by validation accuracy among the runs
whose weights fit the bundled-checkpoint budget. Written to OUT (8 files at most come back):

    summary.json, summary.md   per run: settings, per-epoch numbers, test accuracy, expert load, size
    runs.tar.xz                per run: log, metrics.json, config.json, test.json
    selected.tar.part-NN       the selected checkpoint folder, in parts of 15 MiB:
                               cat selected.tar.part-* | tar x

--dry-run trains each run for one epoch on a few rows and tests on a few rows (CPU is enough).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_runs import metrics_and_test, test_on, wait_all  # noqa: E402

# name -> upcycling method, training settings (peak learning rate; epochs and weight EMA where
# they differ from the fine-tuning default) and model settings over the small preset's routing
# (8 experts, max_len 128, dropout 0.1, balance-loss weight 0.01). Slices keep the dense model's
# parameter count (the candidates for the bundled checkpoint); copies are the accuracy reference
# (8 FFN copies per layer: about 140 MB in fp16).
RUNS = {
    "copy": dict(upcycle="copy", lr=1e-4, top_k=2),
    "slice": dict(upcycle="slice", lr=1e-4, top_k=2),
    "slice_lr2e-4": dict(upcycle="slice", lr=2e-4, top_k=2),
    "slice_top4": dict(upcycle="slice", lr=1e-4, top_k=4),
    "copy_lr5e-5": dict(upcycle="copy", lr=5e-5, top_k=2),
    "slice_top4_lr2e-4": dict(upcycle="slice", lr=2e-4, top_k=4),
    "slice_balance0.05": dict(upcycle="slice", lr=1e-4, top_k=2, balance_loss_weight=0.05),
    "copy_ema": dict(upcycle="copy", lr=1e-4, ema_decay=0.999, top_k=2),
    "copy_lr5e-5_ema": dict(upcycle="copy", lr=5e-5, ema_decay=0.999, top_k=2),
    "slice_ema": dict(upcycle="slice", lr=1e-4, ema_decay=0.999, top_k=2),
    "slice_lr2e-4_ema": dict(upcycle="slice", lr=2e-4, ema_decay=0.999, top_k=2),
    "slice_lr2e-4_4ep_ema": dict(upcycle="slice", lr=2e-4, epochs=4, ema_decay=0.999, top_k=2),
    "slice_5ep_ema": dict(upcycle="slice", lr=1e-4, epochs=5, ema_decay=0.999, top_k=2),
    "slice_top4_ema": dict(upcycle="slice", lr=1e-4, ema_decay=0.999, top_k=4),
    "slice_top4_lr2e-4_ema": dict(upcycle="slice", lr=2e-4, ema_decay=0.999, top_k=4),
}
TRAIN_SETTINGS = ("lr", "epochs", "ema_decay")
# Runs sharing one GPU take turns on it: a step of this 6-layer MoE is thousands of small
# kernels. Three runs on one H200 took 104-140 s per epoch of 1,357 steps (batch 32) each, so
# three runs of 3 epochs fit the time limit, a fourth would not. With several GPUs, runs go to
# them in turn (run i on GPU i mod n). The default: the best copy and slice by validation in the
# 12-run sweep of docs/upcycling.md, and plain copy as the reference.
DEFAULT_RUNS = "copy_lr5e-5_ema,copy,slice_lr2e-4_4ep_ema"
WEIGHTS_BUDGET = 50_000_000  # bytes of fp16 weights for the bundled checkpoint
PART_BYTES = 15 * 2**20  # files of at most 16 MiB come back from the machine
DRY_RUN = dict(max_train_rows=300, epochs=1, batch_size=16, test_rows=200)


def run_settings(name: str, args):
    """(model config, train config) of one run, on the `moe train --init` defaults."""
    from moe.config import preset
    from moe.train import TRAIN_PRESETS, TrainConfig

    cfg = dataclasses.replace(preset("small"), **model_settings(name))
    tc = dataclasses.replace(TrainConfig(**TRAIN_PRESETS["upcycle"]), **train_settings(name))
    if args.dry_run:
        tc = dataclasses.replace(
            tc, max_train_rows=DRY_RUN["max_train_rows"], epochs=DRY_RUN["epochs"], batch_size=DRY_RUN["batch_size"]
        )
    for option in ("epochs", "batch_size"):
        if getattr(args, option) is not None:
            tc = dataclasses.replace(tc, **{option: getattr(args, option)})
    return cfg, tc


def model_settings(name: str) -> dict:
    return {k: v for k, v in RUNS[name].items() if k != "upcycle" and k not in TRAIN_SETTINGS}


def train_settings(name: str) -> dict:
    return {k: v for k, v in RUNS[name].items() if k in TRAIN_SETTINGS}


def cli_command(name: str, args) -> str:
    """The same run as a `moe train` command line (the CLI's --init defaults are these)."""
    spec = RUNS[name]
    overridden = {o for o in ("epochs", "batch_size") if getattr(args, o) is not None}
    options = "".join(
        f" --{k.replace('_', '-')} {v:g}" for k, v in train_settings(name).items() if k not in ("lr", *overridden)
    )
    options += "".join(f" --set {k}={v}" for k, v in model_settings(name).items())
    options += "".join(
        f" --{o.replace('_', '-')} {getattr(args, o)}" for o in ("epochs", "batch_size") if getattr(args, o) is not None
    )
    return f"moe train --init MINILM --upcycle {spec['upcycle']} --lr {spec['lr']:g}{options} --out {name}"


def worker(name: str, args) -> None:
    import torch

    from moe.train import train

    torch.set_num_threads(1)
    cfg, tc = run_settings(name, args)
    spec = RUNS[name]
    train(
        cfg,
        tc,
        args.work / "ag_news",
        args.work / name,
        log=lambda s: print(s, flush=True),
        init=args.trip / "minilm",
        upcycle=spec["upcycle"],
    )
    result = test_on(
        args.work / name,
        args.work / "ag_news",
        args.work / f"{name}.test.json",
        DRY_RUN["test_rows"] if args.dry_run else None,
    )
    print(f"test accuracy {result['accuracy'] * 100:.2f}% ({result['rows']} rows)", flush=True)


def unpack_data(trip: Path, work: Path) -> None:
    (work / "ag_news").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with (
            lzma.open(trip / "ag_news" / f"{split}.csv.xz") as src,
            open(work / "ag_news" / f"{split}.csv", "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)


def visible_gpus() -> list[str]:
    """The GPUs runs may use, as CUDA_VISIBLE_DEVICES entries (none on a CPU machine)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",") if listed else [str(i) for i in range(torch.cuda.device_count())]


def launch(names: list[str], args) -> dict[str, str]:
    """Start every run, wait until they end or the time limit; returns name -> status."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    gpus = visible_gpus()
    procs = {}
    for i, name in enumerate(names):
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        command = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--trip",
            str(args.trip),
            "--work",
            str(args.work),
            "--out",
            str(args.out),
        ]
        command += [
            f"--{o.replace('_', '-')}={getattr(args, o)}"
            for o in ("epochs", "batch_size")
            if getattr(args, o) is not None
        ]
        command += ["--dry-run"] if args.dry_run else []
        log = open(args.work / f"{name}.log", "w")
        procs[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        log.close()
    deadline = time.time() + args.time_limit
    return wait_all(procs, deadline, lambda line: print(line, flush=True))


def summarize(name: str, status: str, args) -> dict:
    folder = args.work / name
    rows = DRY_RUN["test_rows"] if args.dry_run else None
    metrics, test = metrics_and_test(folder, args.work / "ag_news", args.work / f"{name}.test.json", rows)
    weights = folder / "model.safetensors"
    return dict(
        name=name,
        status=status,
        upcycle=RUNS[name]["upcycle"],
        lr=RUNS[name]["lr"],
        model_settings=model_settings(name),
        command=cli_command(name, args),
        config=metrics.get("config"),
        train=metrics.get("train"),
        train_rows=metrics.get("train_rows"),
        val_rows=metrics.get("val_rows"),
        epochs=[
            {k: e[k] for k in ("epoch", "train_loss", "train_accuracy", "balance_loss", "val_accuracy", "seconds")}
            for e in metrics.get("epochs", [])
        ],
        best_epoch=metrics.get("best_epoch"),
        best_val_accuracy=metrics.get("best_val_accuracy"),
        test_accuracy=test.get("accuracy"),
        test_rows=test.get("rows"),
        test_max_load_over_fair_share=test.get("max_load_over_fair_share"),
        test_expert_load=test.get("expert_load"),
        test_confusion_matrix=test.get("confusion_matrix"),
        device=test.get("device"),
        weights_bytes=weights.stat().st_size if weights.is_file() else None,
    )


def percent(x) -> str:
    return "–" if x is None else f"{x * 100:.2f}"


def markdown(summary: dict) -> str:
    lines = [
        f"# Upcycling runs ({summary['device']}, {len(summary['runs'])} runs sharing it)",
        "",
        "| run | method | lr | settings | status | val acc % per epoch | best val % (epoch) | "
        "test % | max load / fair (test) | weights MB | s per epoch |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in summary["runs"]:
        vals = " / ".join(percent(e["val_accuracy"]) for e in r["epochs"])
        secs = " / ".join(f"{e['seconds']:.0f}" for e in r["epochs"])
        load = "–" if r["test_max_load_over_fair_share"] is None else f"{r['test_max_load_over_fair_share']:.2f}"
        size = "–" if r["weights_bytes"] is None else f"{r['weights_bytes'] / 1e6:.1f}"
        extra = {k: v for k, v in RUNS[r["name"]].items() if k in TRAIN_SETTINGS and k != "lr"}
        settings = ", ".join(f"{k} {v}" for k, v in {**r["model_settings"], **extra}.items())
        lines.append(
            f"| {r['name']} | {r['upcycle']} | {r['lr']:g} | {settings} | {r['status']} | {vals} | "
            f"{percent(r['best_val_accuracy'])} ({r['best_epoch']}) | {percent(r['test_accuracy'])} | "
            f"{load} | {size} | {secs} |"
        )
    lines += [
        "",
        f"Selected by validation accuracy among runs with weights ≤ {WEIGHTS_BUDGET / 1e6:.0f} MB: "
        f"**{summary['selected'] or 'none'}**; best by validation overall: {summary['best_by_val']}.",
        f"Wall time {summary['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def pack(summary: dict, args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "summary.md").write_text(markdown(summary))
    with tarfile.open(args.out / "runs.tar.xz", "w:xz") as tar:
        for r in summary["runs"]:
            for f in (
                f"{r['name']}.log",
                f"{r['name']}.test.json",
                f"{r['name']}/metrics.json",
                f"{r['name']}/config.json",
            ):
                if (args.work / f).is_file():
                    tar.add(args.work / f, arcname=f)
    if summary["selected"]:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(args.work / summary["selected"], arcname=summary["selected"])
        data = buffer.getvalue()
        for i, start in enumerate(range(0, len(data), PART_BYTES)):
            (args.out / f"selected.tar.part-{i:02d}").write_bytes(data[start : start + PART_BYTES])
    files = sorted(p.name for p in args.out.iterdir())
    if len(files) > 8:
        sys.exit(f"{len(files)} files in {args.out}: only 8 come back")
    print("\n".join(f"{args.out / f}: {(args.out / f).stat().st_size / 2**20:.1f} MiB" for f in files))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trip", type=Path, required=True, help="folder with minilm/ and ag_news/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/upcycle_runs"))
    ap.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated, of: {', '.join(RUNS)}")
    ap.add_argument("--time-limit", type=float, default=470.0, help="seconds for training all runs")
    ap.add_argument("--epochs", type=int, help="instead of the fine-tuning default (3)")
    ap.add_argument("--batch-size", type=int, help="instead of the fine-tuning default (32)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.trip, args.work, args.out = args.trip.resolve(), args.work.resolve(), args.out.resolve()
    if args.worker:
        return worker(args.worker, args)

    names = args.runs.split(",")
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    from moe.errors import MoEError
    from moe.upcycle import read_pretrained

    try:
        read_pretrained(args.trip / "minilm")
    except MoEError as e:
        sys.exit(f"{e} (the trip is packed by scripts/gpu/upcycle_pack.py)")
    if not (args.trip / "ag_news" / "test.csv.xz").is_file():
        sys.exit(f"{args.trip} has no ag_news/ (the trip is packed by scripts/gpu/upcycle_pack.py)")
    started = time.time()
    shutil.rmtree(args.work, ignore_errors=True)
    unpack_data(args.trip, args.work)
    status = launch(names, args)
    runs = [summarize(name, status[name], args) for name in names]
    scored = [r for r in runs if r["best_val_accuracy"] is not None]

    def best(rs):
        return max(rs, key=lambda r: r["best_val_accuracy"])["name"] if rs else None

    import torch

    summary = dict(
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        dry_run=args.dry_run,
        runs=runs,
        weights_budget_bytes=WEIGHTS_BUDGET,
        selected=best([r for r in scored if r["weights_bytes"] <= WEIGHTS_BUDGET]),
        best_by_val=best(scored),
        seconds=time.time() - started,
    )
    pack(summary, args)
    print(markdown(summary))


if __name__ == "__main__":
    main()
