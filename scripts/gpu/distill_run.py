#!/usr/bin/env python3
"""One distillation experiment on one GPU: rebuild the teacher, label a transfer set, train
compact students on it side by side, select each by validation, test each once.

Run from the code folder of the trip that scripts/gpu/distill_pack.py packs:

    python3 scripts/gpu/distill_run.py --trip TRIP --out $OUT [--time-limit 500] [--students l2_e8,l3_e8]
        [--teachers N] [--dry-run]

1. teacher: all-MiniLM-L6-v2 upcycled with its FFN copied into 8 experts, lr 5e-5, weight EMA
   0.999, 3 epochs (the 93.79 % recipe of docs/upcycling.md), best epoch by validation. With
   --teachers N, N runs of that recipe side by side (seeds 0 to N-1, the same validation rows):
   `teacher`, `teacher_s1`, ...
2. transfer set: the training split (never the validation rows) plus augmented copies, each row
   labelled once by the teacher's logits, an ensemble's mean (moe/distill.py).
3. students (STUDENTS, or the ones --students names; ARCH_Nep names ARCH trained for N epochs):
   MiniLM's lower layers and embeddings, each FFN sliced into experts, trained on the transfer
   set with the distillation loss, each a process of its own on the same GPU; best epoch by
   validation accuracy; runs still training at the time limit are stopped and their best epoch
   so far kept.
4. each selected checkpoint evaluated once on the 7,600 test rows.

Written to OUT as it goes (at most 8 files come back, 16 MiB each): summary.json; runs.tar.xz
(logs, metrics, test results, the teacher's too); NAME.tar per student (its checkpoint folder,
in NAME.tar.part-NN pieces when larger than 15 MiB; a frozen token table is left out and
rebuilt from the dequantized encoder, its digest in summary.json).

Teachers and students in two calls, when one call's time does not hold both: the first with
--transfer-only stops after step 2 and brings the transfer set back (transfer.pt.xz, about
10 MB for 173,668 rows: token ids and the teachers' logits), the second with --transfer DIR (that
file and the first call's summary.json, carried) starts at step 3; its summary.json keeps the
teachers' runs of the first.

--dry-run: a few hundred rows, one epoch each, on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import lzma
import os
import re
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

TEACHER = dict(upcycle="copy", n_experts=8, top_k=2, lr=5e-5, epochs=3, batch_size=32, ema_decay=0.999)
# Students: (layers kept, experts per layer; each expert one slice of the FFN's 1,536 units).
# Multiply-adds per token of one layer, d = 384, ~60 tokens a text: attention projections 4d^2
# = 590k, scores and mixing 2*60*d = 46k, top-2 experts 2 * 2 * d * (1536 / experts): 295k for
# 8 experts, 590k for 4. Today's bundled model (d 256, 8 experts of 768, top-2) does 1.07M per
# layer, 2.14M per token: l2_e8 0.88x, l2_e4 1.14x, l3_e8 1.31x of it. Eager CPU throughput
# (one thread, batches of 16 and 32, random weights) put the 384-wide layers' overheads on top:
# l2_e8 0.66-0.70x, l2_e4 0.60-0.83x, l3_e8 0.50-0.62x of the bundled model's texts/s, so the
# 2-layer students are the candidates for the default and l3_e8 marks what a third layer buys.
# A frozen token table is MiniLM's and comes back without it; l2_e4_emb trains its own.
STUDENTS = {
    "l2_e8": dict(layers=2, n_experts=8, freeze_token_embedding=True),
    "l2_e4": dict(layers=2, n_experts=4, freeze_token_embedding=True),
    "l3_e8": dict(layers=3, n_experts=8, freeze_token_embedding=True),
    "l2_e4_emb": dict(layers=2, n_experts=4, freeze_token_embedding=False),
}
STUDENT_TRAINING = dict(
    lr=3e-4, epochs=3, batch_size=128, ema_decay=0.999, distill_weight=0.9, distill_temperature=2.0, augment_copies=3
)
DRY_RUN = dict(max_train_rows=300, epochs=1, augment_copies=1, test_rows=200)
PART_BYTES = 15 * 2**20
TOKEN_TABLE = "embedding.token.weight"
SCHEDULE = ("teacher_epochs", "student_epochs", "copies")  # options the workers inherit (--students is not one)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def teacher_names(count: int) -> list[str]:
    return ["teacher"] + [f"teacher_s{seed}" for seed in range(1, count)]


def is_teacher(name: str) -> bool:
    return name == "teacher" or name.startswith("teacher_s")


def student(name: str) -> tuple[str, int | None]:
    """A student's architecture (a key of STUDENTS) and the epochs its name asks for, if any."""
    match = re.fullmatch(r"(.+)_(\d+)ep", name)
    return (match[1], int(match[2])) if match else (name, None)


def configs(name: str, args):
    from moe.config import preset
    from moe.train import TRAIN_PRESETS, TrainConfig

    if is_teacher(name):
        spec = dict(TEACHER, seed=int(name.removeprefix("teacher").removeprefix("_s") or 0))
    else:
        spec = dict(STUDENT_TRAINING, **STUDENTS[student(name)[0]], top_k=2)
    model_keys = ("n_experts", "top_k")
    cfg = dataclasses.replace(preset("small"), **{k: spec[k] for k in model_keys})
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    tc = dataclasses.replace(
        TrainConfig(**TRAIN_PRESETS["upcycle"]), **{k: v for k, v in spec.items() if k in train_keys}
    )
    if is_teacher(name) and args.teacher_epochs:
        tc = dataclasses.replace(tc, epochs=args.teacher_epochs)
    if not is_teacher(name) and (student(name)[1] or args.student_epochs):
        tc = dataclasses.replace(tc, epochs=student(name)[1] or args.student_epochs)
    if args.copies is not None:
        tc = dataclasses.replace(tc, augment_copies=args.copies)
    if args.dry_run:
        tc = dataclasses.replace(
            tc, max_train_rows=DRY_RUN["max_train_rows"], epochs=1, augment_copies=DRY_RUN["augment_copies"]
        )
    return cfg, tc, spec


def worker(name: str, args) -> None:
    import torch

    from moe.distill import TransferSet
    from moe.train import train

    torch.set_num_threads(2)
    cfg, tc, spec = configs(name, args)
    transfer = None if is_teacher(name) else TransferSet.load(args.work / "transfer.pt")
    train(
        cfg,
        tc,
        args.work / "ag_news",
        args.work / name,
        log=log,
        init=args.work / "minilm",
        upcycle=spec.get("upcycle", "slice"),
        layers=spec.get("layers"),
        teacher=None if is_teacher(name) else [args.work / t for t in args.teachers_trained],
        transfer=transfer,
    )
    rows = DRY_RUN["test_rows"] if args.dry_run else None
    result = test_on(args.work / name, args.work / "ag_news", args.work / f"{name}.test.json", rows)
    log(f"{name}: test accuracy {result['accuracy'] * 100:.2f}% ({result['rows']} rows)")


def launch(names: list[str], args, deadline: float) -> dict[str, str]:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    procs = {}
    for name in names:
        command = [sys.executable, __file__, "--worker", name, "--trip", str(args.trip), "--work", str(args.work)]
        command += ["--out", str(args.out)] + (["--dry-run"] if args.dry_run else [])
        command += [f"--{o.replace('_', '-')}={getattr(args, o)}" for o in SCHEDULE if getattr(args, o) is not None]
        command += [f"--teachers-trained={','.join(args.teachers_trained)}"]
        with open(args.work / f"{name}.log", "w") as out:
            procs[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return wait_all(procs, deadline, log)


def record(name: str, status: str, args) -> dict:
    folder = args.work / name
    rows = DRY_RUN["test_rows"] if args.dry_run else None
    metrics, test = metrics_and_test(folder, args.work / "ag_news", args.work / f"{name}.test.json", rows)
    weights = folder / "model.safetensors"
    _, tc, spec = configs(name, args)
    return dict(
        name=name,
        status=status,
        spec=dict(spec, epochs=tc.epochs, seed=tc.seed),
        val_accuracy_per_epoch=[e["val_accuracy"] for e in metrics.get("epochs", [])],
        seconds_per_epoch=[round(e["seconds"], 1) for e in metrics.get("epochs", [])],
        train=metrics.get("train"),
        best_epoch=metrics.get("best_epoch"),
        best_val_accuracy=metrics.get("best_val_accuracy"),
        test_accuracy=test.get("accuracy"),
        test_max_load_over_fair_share=test.get("max_load_over_fair_share"),
        distilled_from=metrics.get("distilled_from"),
        weights_bytes=weights.stat().st_size if weights.is_file() else None,
    )


def add_file(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    if path.is_file():
        tar.add(path, arcname=arcname)


def pack_student(name: str, args, summary: dict) -> None:
    """NAME.tar (or its parts): the checkpoint folder, a frozen token table left out."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = args.work / name
    if not (folder / "model.safetensors").is_file():
        return
    state = load_file(str(folder / "model.safetensors"))
    entry = next(r for r in summary["runs"] if r["name"] == name)
    if STUDENTS[student(name)[0]]["freeze_token_embedding"]:
        table = state.pop(TOKEN_TABLE)
        entry["token_table_sha256"] = hashlib.sha256(table.to(torch.float16).numpy().tobytes()).hexdigest()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for f in ("config.json", "tokenizer.json", "metrics.json"):
            add_file(tar, folder / f, f"{name}/{f}")
        save_file(state, str(args.work / f"{name}.weights"), metadata={"format": "pt"})
        weights = (args.work / f"{name}.weights").read_bytes()
        info = tarfile.TarInfo(f"{name}/model.safetensors")
        info.size = len(weights)
        tar.addfile(info, io.BytesIO(weights))
    write_parts(buffer.getvalue(), args.out / f"{name}.tar")


def write_summary(summary: dict, args) -> None:
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    with lzma.open(args.out / "runs.tar.xz", "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
        for name in [*teacher_names(args.teachers), *args.students]:
            add_file(tar, args.work / f"{name}.log", f"{name}.log")
            add_file(tar, args.work / f"{name}.test.json", f"{name}.test.json")
            for file in ("metrics.json", "config.json"):
                add_file(tar, args.work / name / file, f"{name}.{file}")


def write_parts(data: bytes, path: Path) -> None:
    """PATH, or PATH.part-NN pieces when larger than a returned file may be."""
    if len(data) <= PART_BYTES:
        path.write_bytes(data)
        return
    for i, s in enumerate(range(0, len(data), PART_BYTES)):
        path.with_name(f"{path.name}.part-{i:02d}").write_bytes(data[s : s + PART_BYTES])


def read_parts(path: Path) -> bytes:
    if path.is_file():
        return path.read_bytes()
    parts = sorted(path.parent.glob(f"{path.name}.part-*"))
    if not parts:
        raise SystemExit(f"{path}: not there, nor in parts")
    return b"".join(p.read_bytes() for p in parts)


def bring_transfer_back(args) -> None:
    write_parts(lzma.compress((args.work / "transfer.pt").read_bytes(), preset=6), args.out / "transfer.pt.xz")


def take_transfer(args, summary: dict) -> None:
    """The transfer set and teachers of an earlier call (--transfer-only), carried in as DIR."""
    earlier = json.loads((args.transfer / "summary.json").read_text())
    (args.work / "transfer.pt").write_bytes(lzma.decompress(read_parts(args.transfer / "transfer.pt.xz")))
    summary["runs"] += [r for r in earlier["runs"] if is_teacher(r["name"])]
    summary["transfer_set"] = dict(earlier["transfer_set"], made_by=earlier["command"], made=earlier["started"])
    args.teachers_trained = earlier["transfer_set"]["teachers"]


def prepare(args) -> None:
    from distill_pack import write_dequantized

    (args.work / "ag_news").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with (
            lzma.open(args.trip / "ag_news" / f"{split}.csv.xz") as src,
            open(args.work / "ag_news" / f"{split}.csv", "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
    write_dequantized(args.trip / "minilm", args.work / "minilm")


def build_transfer(args) -> dict:
    import torch

    from moe.data import load_split, train_val_split
    from moe.distill import build_transfer_set
    from moe.train import load_teachers

    _, tc, _ = configs(args.students[0], args)
    rows = load_split(args.work / "ag_news", "train").head(tc.max_train_rows)
    train_rows, _ = train_val_split(rows, tc.val_fraction, tc.split_seed)
    teachers, tokenizer = load_teachers([args.work / name for name in args.teachers_trained])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    transfer = build_transfer_set(
        teachers,
        tokenizer,
        train_rows.texts,
        train_rows.labels,
        tc.augment_copies,
        tc.seed,
        device,
    )
    transfer.save(args.work / "transfer.pt")
    agree = (transfer.teacher_logits.argmax(-1) == torch.tensor(transfer.labels)).float()
    return dict(
        teachers=args.teachers_trained,
        rows=len(transfer.labels),
        originals=transfer.originals,
        teacher_agrees_with_label_original=agree[: transfer.originals].mean().item(),
        teacher_agrees_with_label_augmented=agree[transfer.originals :].mean().item() if tc.augment_copies else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trip", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/distill-work"))
    ap.add_argument("--time-limit", type=float, default=500.0, help="seconds for the whole run, packing included")
    ap.add_argument("--teacher-limit", type=float, default=300.0, help="seconds the teacher may train and test")
    ap.add_argument("--teacher-epochs", type=int, help="instead of the recipe's 3 (a shorter cosine schedule)")
    ap.add_argument("--student-epochs", type=int)
    ap.add_argument("--copies", type=int, help="augmented copies of each training row")
    ap.add_argument(
        "--teachers", type=int, default=1, help="runs of the teacher's recipe (seeds 0..N-1), their logits averaged"
    )
    ap.add_argument("--teachers-trained", default="", help=argparse.SUPPRESS)
    ap.add_argument(
        "--students",
        default=",".join(STUDENTS),
        help="comma list of the students to train (fewer share the GPU faster); default: all of STUDENTS",
    )
    ap.add_argument(
        "--transfer-only", action="store_true", help="stop after the transfer set, bringing it back (transfer.pt.xz)"
    )
    ap.add_argument(
        "--transfer", type=Path, help="start at the students, from a --transfer-only call's files in this folder"
    )
    ap.add_argument("--worker")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    args.trip, args.work, args.out = args.trip.resolve(), args.work.resolve(), args.out.resolve()
    args.students = [n.strip() for n in args.students.split(",") if n.strip()]
    args.teachers_trained = [n for n in args.teachers_trained.split(",") if n]
    unknown = [n for n in args.students if student(n)[0] not in STUDENTS]
    if unknown or not args.students:
        ap.error(f"--students: unknown {unknown or 'none given'}; choose from {', '.join(STUDENTS)}")
    if args.transfer_only and args.transfer:
        ap.error("--transfer-only makes the transfer set that --transfer starts from: one or the other")
    if args.transfer:
        args.transfer = args.transfer.resolve()
    if args.worker:
        worker(args.worker, args)
        return

    started = time.time()
    end = started + args.time_limit - 35  # kept for the last tests and the packing
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = dict(
        started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        command=" ".join(sys.argv),
        runs=[],
    )
    import torch

    summary["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    prepare(args)
    if args.transfer:
        take_transfer(args, summary)
        log(f"prepared in {time.time() - started:.0f}s; transfer set of {summary['transfer_set']['made_by']}")
    else:
        teachers = teacher_names(args.teachers)
        log(f"prepared in {time.time() - started:.0f}s; training {', '.join(teachers)}")
        status = launch(teachers, args, min(end, started + args.teacher_limit))
        for name in teachers:
            summary["runs"].append(record(name, status[name], args))
            log(f"{name}: {summary['runs'][-1]}")
        write_summary(summary, args)
        args.teachers_trained = [n for n in teachers if (args.work / n / "model.safetensors").is_file()]
        if not args.teachers_trained:
            log("no teacher checkpoint: stopping")
            return
        t0 = time.time()
        summary["transfer_set"] = build_transfer(args)
        summary["transfer_set"]["seconds"] = time.time() - t0
        log(f"transfer set: {summary['transfer_set']}")
        write_summary(summary, args)
        if args.transfer_only:
            bring_transfer_back(args)
            summary["seconds"] = time.time() - started
            write_summary(summary, args)
            log(f"transfer set brought back; done in {summary['seconds']:.0f}s")
            return
    status = launch(args.students, args, end)
    for name in args.students:
        summary["runs"].append(record(name, status[name], args))
        write_summary(summary, args)
    for name in args.students:
        pack_student(name, args, summary)
    summary["seconds"] = time.time() - started
    write_summary(summary, args)
    for r in summary["runs"]:
        log(
            f"{r['name']}: {r['status']}; val {r['val_accuracy_per_epoch']} best {r['best_val_accuracy']} "
            f"test {r['test_accuracy']} load {r['test_max_load_over_fair_share']} bytes {r['weights_bytes']}"
        )


if __name__ == "__main__":
    main()
