"""Knowledge distillation (Hinton et al., 2015): a student trained on a teacher's logits as well
as on the labels, over a transfer set of the training rows plus augmented copies of them.

The transfer set is built in the teacher's token ids: each copy masks WordPieces (alone or as
short spans) with [MASK] and swaps others for one of their nearest neighbours in the teacher's
embedding table (TinyBERT's augmentation, at the subword level), then the teacher labels every
row once. An ensemble of teachers (runs of one recipe with other seeds, sharing a tokenizer)
labels each row with the mean of their logits; the first teacher's table gives the neighbours.
The validation rows never enter it: it is made from the training split alone. A student with
the teacher's tokenizer trains on those ids directly; any other student gets the rows as text
(decoded from the ids) and tokenizes them itself.

The loss: weight * T^2 * KL(teacher_T || student_T) + (1 - weight) * CE(labels), softmaxes at
temperature T; the T^2 keeps the soft term's gradient on the scale of the hard term's.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import MoEError
from .model import MoEClassifier

MASK = "[MASK]"
NEIGHBOURS = 8  # candidates for a swapped subword, by cosine in the teacher's embedding table


@dataclass
class Augmentation:
    """Per-subword probabilities of one augmented copy (special tokens are never touched)."""

    # About a fifth of the subwords change: 0.05 * 2 (mean span) masked, 0.1 swapped.
    mask: float = 0.05  # start a masked span here (length 1-3, uniform)
    swap: float = 0.1  # replace by one of the subword's embedding neighbours


@dataclass
class TransferSet:
    ids: list[list[int]]  # teacher token ids, specials included, truncated to max_len
    labels: list[int]  # an augmented copy keeps its row's label
    teacher_logits: Tensor  # [rows, classes], float32
    originals: int  # the first `originals` rows are the training rows unchanged
    vocabulary: str  # digest of the teacher's tokenizer vocabulary

    def save(self, path: Path) -> None:
        torch.save(self.__dict__, str(path))

    @classmethod
    def load(cls, path: Path) -> TransferSet:
        return cls(**torch.load(str(path), weights_only=False))


def distillation_loss(
    logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, weight: float, label_smoothing: float
) -> Tensor:
    if not temperature > 0 or not 0 <= weight <= 1:
        raise MoEError(f"distillation needs temperature > 0 and 0 <= weight <= 1, got {temperature}, {weight}")
    soft = F.kl_div(
        F.log_softmax(logits / temperature, -1),
        F.log_softmax(teacher_logits / temperature, -1),
        log_target=True,
        reduction="batchmean",
    )
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return weight * temperature**2 * soft + (1 - weight) * hard


def vocabulary_digest(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]


@torch.no_grad()
def embedding_neighbours(table: Tensor, k: int = NEIGHBOURS, chunk: int = 4096) -> Tensor:
    """[vocab, k] ids of each row's k most cosine-similar other rows."""
    unit = F.normalize(table.float(), dim=-1)
    out = []
    for s in range(0, unit.shape[0], chunk):
        sim = unit[s : s + chunk] @ unit.T
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -2.0  # not itself
        out.append(sim.topk(k, dim=-1).indices)
    return torch.cat(out).cpu()


def augment(
    ids: list[int], rng: random.Random, neighbours: Tensor, mask_id: int, special: set[int], aug: Augmentation
) -> list[int]:
    """One augmented copy of a tokenized text: masked spans and neighbour swaps."""
    out = list(ids)
    i = 0
    while i < len(out):
        if out[i] in special:
            i += 1
            continue
        u = rng.random()
        if u < aug.mask:
            span = rng.randint(1, 3)
            for j in range(i, min(i + span, len(out))):
                if out[j] not in special:
                    out[j] = mask_id
            i += span
            continue
        if u < aug.mask + aug.swap:
            out[i] = int(neighbours[out[i], rng.randrange(neighbours.shape[1])])
        i += 1
    return out


def special_ids(tokenizer) -> set[int]:
    """[CLS], [SEP], [PAD] and the like: every added token of tokenizer.json."""
    return set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)


def padded(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """ids [B, T] padded to the longest row, and the mask of real tokens."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, ids != pad_id


@torch.no_grad()
def teacher_logits(model: MoEClassifier, rows: list[list[int]], device, batch_size: int = 512) -> Tensor:
    """The teacher's logits of every row (batched by length: little padding), float32 on the CPU."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.empty(len(rows), model.cfg.n_classes)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda")
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = padded([rows[i] for i in idx], model.cfg.pad_id)
        with autocast:
            logits = model(ids.to(device), mask.to(device))
        out[torch.tensor(idx)] = logits.float().cpu()
    return out


def build_transfer_set(
    teacher: MoEClassifier | list[MoEClassifier],
    tokenizer,
    texts: list[str],
    labels: list[int],
    copies: int,
    seed: int = 0,
    device="cpu",
    aug: Augmentation | None = None,
) -> TransferSet:
    """The training rows and `copies` augmented copies of each, labelled by the teacher (or the
    mean of an ensemble's logits).

    `tokenizer` is the teacher's (a transformers fast tokenizer over its tokenizer.json)."""
    teachers = teacher if isinstance(teacher, list) else [teacher]
    teacher = teachers[0]
    aug = aug or Augmentation()
    mask_id = tokenizer.convert_tokens_to_ids(MASK)
    if copies and (mask_id is None or mask_id == tokenizer.unk_token_id):
        raise MoEError(f"the teacher's tokenizer has no {MASK} token: augmented copies need one")
    rows = tokenizer(texts, truncation=True, max_length=teacher.cfg.max_len)["input_ids"]
    special = special_ids(tokenizer) | {mask_id}
    rng = random.Random(seed)
    augmented, augmented_labels = [], []
    if copies:
        neighbours = embedding_neighbours(teacher.embedding.token.weight.detach().to(device))
        for _ in range(copies):
            augmented += [augment(r, rng, neighbours, mask_id, special, aug) for r in rows]
            augmented_labels += labels
    all_rows = rows + augmented
    logits = torch.stack([teacher_logits(t.to(device), all_rows, device) for t in teachers]).mean(0)
    return TransferSet(
        ids=all_rows,
        labels=list(labels) + augmented_labels,
        teacher_logits=logits,
        originals=len(rows),
        vocabulary=vocabulary_digest(tokenizer),
    )


def student_rows(transfer: TransferSet, teacher_tokenizer, student_tokenizer, max_len: int) -> list[list[int]]:
    """The transfer set's rows in the student's ids: as they are when the student shares the
    teacher's tokenizer, else decoded to text and tokenized again."""
    if vocabulary_digest(student_tokenizer) == transfer.vocabulary:
        return transfer.ids
    if teacher_tokenizer is None:
        raise MoEError("the student's tokenizer differs from the transfer set's; the teacher's tokenizer is needed")
    # [MASK] stays in the text (a student without it reads it as ordinary characters).
    mask_id = teacher_tokenizer.convert_tokens_to_ids(MASK)
    dropped = special_ids(teacher_tokenizer) - {mask_id}
    # Both are WordPiece tokenizers: a "##" piece continues the word before it.
    texts = [
        " ".join(teacher_tokenizer.convert_ids_to_tokens([i for i in r if i not in dropped])).replace(" ##", "")
        for r in transfer.ids
    ]
    return student_tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
