"""Training loop: AdamW, warm-up + cosine decay, clipping, bf16 autocast on CUDA, optional
weight EMA, best-by-val."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import TOKENIZER, load_checkpoint, save_checkpoint, write_metrics
from .config import MoEConfig
from .data import Split, load_split, train_val_split
from .distill import TransferSet, build_transfer_set, distillation_loss, padded, student_rows, vocabulary_digest
from .errors import MoEError
from .evaluate import evaluate
from .model import MoEClassifier, auxiliary_losses, expert_load
from .tokenizer import load_fast_tokenizer, train_tokenizer
from .upcycle import start_from_pretrained


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    min_lr_ratio: float = 0.05
    warmup_fraction: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    val_fraction: float = 0.05
    max_train_rows: int | None = None
    seed: int = 0
    # The validation rows, apart from `seed`: runs of other seeds (an ensemble's teachers) are
    # selected on the same rows and never train on those their students validate on.
    split_seed: int = 0
    save_dtype: str = "float32"  # float16 for the shipped checkpoint
    device: str = "auto"
    # > 0: validate and save an exponential moving average of the weights (decay per step,
    # ramped up as (1 + t) / (10 + t) so that early steps do not drag the start in).
    ema_decay: float = 0.0
    # Distillation (`moe train --distill TEACHER`, moe/distill.py): the weight of the loss on the
    # teachers' logits (the labels' loss takes the rest), its softmax temperature, and how many
    # augmented copies of each training row the transfer set adds.
    distill_weight: float = 0.9
    distill_temperature: float = 2.0
    augment_copies: int = 3
    # Keep the pretrained token embeddings as they are (a student upcycled from --init).
    freeze_token_embedding: bool = False


# Schedules from the sweeps in docs/results.md: on the 43,417 training rows we hold, validation
# accuracy peaks within 1-3 epochs and then the models overfit, so longer schedules only cost
# time. The bundled checkpoint is the small preset with these settings plus
# `--set vocab_size=20000`.
TRAIN_PRESETS = {
    "tiny": dict(epochs=2, lr=2e-3, batch_size=64, label_smoothing=0.0),
    "small": dict(epochs=3, lr=5e-4, label_smoothing=0.2, save_dtype="float16"),
    "seed": dict(epochs=3, lr=3e-4),
    # Fine-tuning an upcycled pretrained encoder (`moe train --init`): the usual BERT recipe of
    # a small learning rate with 10 % warm-up, batch 32, a few epochs.
    "upcycle": dict(
        epochs=3,
        lr=1e-4,
        batch_size=32,
        warmup_fraction=0.1,
        weight_decay=0.01,
        label_smoothing=0.1,
        save_dtype="float16",
    ),
}


class WeightAverage:
    """An exponential moving average of a model's floating-point parameters, kept as a second
    model on the same device: validation and checkpoints read it like any model."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.steps = decay, 0
        self.source = [p for p in model.parameters() if p.is_floating_point()]
        self.target = [p for p in self.model.parameters() if p.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.target, self.source, 1.0 - decay)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(step: int, total: int, tc: TrainConfig) -> float:
    warmup = max(1, int(total * tc.warmup_fraction))
    if step < warmup:
        return tc.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = tc.lr * tc.min_lr_ratio
    return floor + (tc.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Batches:
    """Tokenized rows (with the teacher's logits when distilling), served as length-bucketed
    batches padded to their longest row."""

    def __init__(self, ids: list[list[int]], labels: list[int], pad_id: int, teacher_logits=None):
        self.ids, self.labels, self.pad_id, self.teacher_logits = ids, labels, pad_id, teacher_logits

    @classmethod
    def of_split(cls, tokenizer, split: Split, max_len: int) -> Batches:
        enc = tokenizer(split.texts, truncation=True, max_length=max_len)
        return cls(enc["input_ids"], split.labels, tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.ids)

    def iterate(self, batch_size: int, shuffle: bool, rng: random.Random | None = None):
        order = list(range(len(self.ids)))
        if shuffle:
            rng.shuffle(order)
            # Sort within chunks of 50 batches by length: less padding, still random batches.
            chunk = batch_size * 50
            order = [
                i
                for s in range(0, len(order), chunk)
                for i in sorted(order[s : s + chunk], key=lambda j: len(self.ids[j]))
            ]
            batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
            rng.shuffle(batches)
        else:
            batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        for b in batches:
            yield self.collate(b)

    def collate(self, idx: list[int]):
        ids, mask = padded([self.ids[i] for i in idx], self.pad_id)
        soft = None if self.teacher_logits is None else self.teacher_logits[torch.tensor(idx)]
        return ids, mask, torch.tensor([self.labels[i] for i in idx]), soft


def load_teachers(folders: list[Path]) -> tuple[list[MoEClassifier], object]:
    """The teachers' models and their one tokenizer: an ensemble labels the same token ids."""
    models, tokenizers = [], []
    for folder in folders:
        model, path = load_checkpoint(folder)
        models.append(model)
        tokenizers.append(load_fast_tokenizer(path / TOKENIZER))
    digests = {vocabulary_digest(t) for t in tokenizers}
    if len(digests) > 1:
        raise MoEError(f"the teachers {', '.join(map(str, folders))} have different tokenizers: an ensemble needs one")
    return models, tokenizers[0]


def train(
    cfg: MoEConfig,
    tc: TrainConfig,
    data: str | Path,
    out: Path,
    log=print,
    init: Path | None = None,
    upcycle: str = "copy",
    layers: int | None = None,
    teacher: Path | list[Path] | None = None,
    transfer: TransferSet | None = None,
) -> dict:
    """Train from scratch, or with `init` (a pretrained BERT-style Hugging Face folder) fine-tune
    the MoE upcycled from it by `upcycle` ("copy" or "slice", see moe/upcycle.py), on its first
    `layers` layers if given: its architecture and tokenizer then come from `init`, routing,
    max_len and dropout from `cfg`.

    With `teacher` (a checkpoint folder, or several sharing a tokenizer: an ensemble), distil:
    the transfer set (the training rows and tc.augment_copies augmented copies, labelled by the
    teachers) replaces the training rows. `transfer` gives one built beforehand from the same
    training split."""
    teachers = [teacher] if isinstance(teacher, (str, Path)) else list(teacher or [])
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    device = pick_device(tc.device)
    rows = load_split(data, "train").head(tc.max_train_rows)
    train_rows, val_rows = train_val_split(rows, tc.val_fraction, tc.split_seed)
    log(f"data: {len(train_rows)} training rows, {len(val_rows)} validation rows, device {device}")

    t0 = time.time()
    if init is None:
        tok = train_tokenizer(train_rows.texts, cfg.vocab_size, cfg.max_len)
        if tok.get_vocab_size() < cfg.vocab_size:
            # Few training rows make a smaller vocabulary; the embedding follows the tokenizer.
            cfg = dataclasses.replace(cfg, vocab_size=tok.get_vocab_size())
        model = MoEClassifier(cfg)
        log(f"tokenizer: {tok.get_vocab_size()} subwords, trained in {time.time() - t0:.1f}s")
    else:
        model, tok = start_from_pretrained(init, train_rows.texts, cfg, upcycle, layers)
        cfg = model.cfg
        log(
            f"upcycled {init} ({upcycle}): tokenizer trimmed to the {tok.get_vocab_size()} "
            f"subwords the training texts use, in {time.time() - t0:.1f}s"
        )
    tokenizer_json = tok.to_str(pretty=True)
    fast = load_fast_tokenizer(tok)
    teacher_tokenizer = None
    if teachers and transfer is None:
        t0 = time.time()
        teacher_models, teacher_tokenizer = load_teachers(teachers)
        transfer = build_transfer_set(
            teacher_models, teacher_tokenizer, train_rows.texts, train_rows.labels, tc.augment_copies, tc.seed, device
        )
        del teacher_models
        names = ", ".join(map(str, teachers))
        log(f"transfer set: {len(transfer.labels)} rows labelled by {names} in {time.time() - t0:.1f}s")
    if transfer is not None:
        if transfer.originals != len(train_rows):
            raise MoEError(f"the transfer set holds {transfer.originals} training rows, this split {len(train_rows)}")
        rows = student_rows(transfer, teacher_tokenizer, fast, cfg.max_len)
        train_batches = Batches(rows, transfer.labels, fast.pad_token_id, transfer.teacher_logits)
    else:
        train_batches = Batches.of_split(fast, train_rows, cfg.max_len)
    if tc.freeze_token_embedding:
        model.embedding.token.weight.requires_grad_(False)
    model = model.to(device)
    log(
        f"model: {model.num_parameters() / 1e6:.2f}M parameters, {cfg.n_layers} "
        f"{cfg.norm_position}-norm layers, {cfg.n_experts} experts of FFN {cfg.d_ff}, top-{cfg.top_k}"
    )
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.dim() >= 2 and "embedding" not in n]
    no_decay = [p for n, p in trained if not (p.dim() >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr,
        betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )
    steps_per_epoch = math.ceil(len(train_batches) / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    rng = random.Random(tc.seed)
    average = WeightAverage(model, tc.ema_decay) if tc.ema_decay > 0 else None
    # What is validated and saved: the averaged weights when there are any.
    kept = average.model if average else model

    history = {
        "config": cfg.to_dict(),
        "train": dataclasses.asdict(tc),
        "data": str(data),
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "epochs": [],
    }
    if init is not None:
        history["upcycled_from"] = {"folder": str(init), "method": upcycle, "layers": cfg.n_layers}
    if transfer is not None:
        history["distilled_from"] = {
            "teacher": str(teachers[0]) if len(teachers) == 1 else [str(t) for t in teachers],
            "temperature": tc.distill_temperature,
            "weight": tc.distill_weight,
            "transfer_rows": len(transfer.labels),
            "augmented_rows": len(transfer.labels) - transfer.originals,
            "teacher_train_accuracy": (
                (transfer.teacher_logits[: transfer.originals].argmax(-1) == torch.tensor(train_rows.labels))
                .float()
                .mean()
                .item()
            ),
        }
    best_val, step = -1.0, 0
    for epoch in range(1, tc.epochs + 1):
        model.train()
        # Running sums stay on the device: no host sync per step (the progress bar reads them
        # every 50 steps).
        sums = dict(
            loss=torch.zeros((), device=device),
            bal=torch.zeros((), device=device),
            correct=torch.zeros((), dtype=torch.long, device=device),
            seen=0,
        )
        load = torch.zeros(cfg.n_layers, cfg.n_experts, dtype=torch.long, device=device)
        t_epoch = time.time()
        bar = tqdm(
            train_batches.iterate(tc.batch_size, True, rng),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{tc.epochs}",
            unit="batch",
            leave=False,
            mininterval=1.0,
        )
        for ids, mask, labels, soft in bar:
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, tc)
            with autocast:
                logits, expert_ids, router_logits = model.forward_routed(ids, mask)
                if soft is None:
                    ce = F.cross_entropy(logits.float(), labels, label_smoothing=tc.label_smoothing)
                else:
                    ce = distillation_loss(
                        logits.float(),
                        soft.to(device),
                        labels,
                        tc.distill_temperature,
                        tc.distill_weight,
                        tc.label_smoothing,
                    )
                bal, z = auxiliary_losses(cfg, expert_ids, router_logits)
                loss = ce + cfg.balance_loss_weight * bal + cfg.z_loss_weight * z
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            if average:
                average.update()
            step += 1
            load += expert_load(cfg, expert_ids)
            n = labels.shape[0]
            sums["loss"] += ce.detach() * n
            sums["bal"] += bal.detach() * n
            sums["correct"] += (logits.argmax(-1) == labels).sum()
            sums["seen"] += n
            if step % 50 == 0:
                bar.set_postfix(
                    loss=f"{sums['loss'].item() / sums['seen']:.4f}",
                    acc=f"{sums['correct'].item() / sums['seen']:.3f}",
                    bal=f"{bal.item():.3f}",
                )
        sums = {k: v.item() if torch.is_tensor(v) else v for k, v in sums.items()}
        val = evaluate(kept, fast, val_rows, cfg, device=device)
        record = dict(
            epoch=epoch,
            train_loss=sums["loss"] / sums["seen"],
            train_accuracy=sums["correct"] / sums["seen"],
            balance_loss=sums["bal"] / sums["seen"],
            val_accuracy=val["accuracy"],
            lr=lr_at(step - 1, total, tc),
            seconds=time.time() - t_epoch,
            expert_load_train=load.tolist(),
            expert_load_val=val["expert_load"],
        )
        history["epochs"].append(record)
        improved = val["accuracy"] > best_val
        if improved:
            best_val = val["accuracy"]
            history["best_epoch"], history["best_val_accuracy"] = epoch, best_val
            save_checkpoint(out, kept, tokenizer_json, history, dtype=getattr(torch, tc.save_dtype))
        else:
            # Keep the best weights but record every epoch's numbers next to them.
            write_metrics(out, history)
        log(
            f"epoch {epoch}/{tc.epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f} | val acc {record['val_accuracy']:.4f} | "
            f"balance {record['balance_loss']:.3f} | {record['seconds']:.0f}s" + ("  (best, saved)" if improved else "")
        )
    return history
