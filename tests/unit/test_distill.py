"""Distillation: the loss on the teacher's logits, the augmented transfer set labelled by the
teacher, students kept to the encoder's lower layers. (End to end through `moe train --distill`:
tests/integration/test_training.py.)"""

import random

import pytest
import torch
import torch.nn.functional as F

from moe.checkpoint import save_checkpoint
from moe.config import preset
from moe.distill import (
    Augmentation,
    augment,
    build_transfer_set,
    distillation_loss,
    embedding_neighbours,
    student_rows,
    teacher_logits,
    vocabulary_digest,
)
from moe.errors import MoEError
from moe.model import MoEClassifier
from moe.tokenizer import load_fast_tokenizer, train_tokenizer
from moe.train import load_teachers
from moe.upcycle import start_from_pretrained

from .test_upcycle import BASE, TRAIN_TEXTS, save_tiny_bert


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def teacher(bert_folder):
    """A copy-upcycled tiny BERT and its tokenizer: a teacher with [MASK] in its vocabulary."""
    torch.manual_seed(0)
    model, tok = start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "copy")
    return model.eval(), load_fast_tokenizer(tok)


def test_loss_is_the_label_loss_at_weight_zero_and_the_scaled_kl_at_weight_one():
    torch.manual_seed(0)
    student, teacher_out, labels = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    ce = F.cross_entropy(student, labels, label_smoothing=0.1)
    assert torch.allclose(distillation_loss(student, teacher_out, labels, 2.0, 0.0, 0.1), ce)
    p = torch.softmax(teacher_out / 2, -1)
    kl = (p * (p.log() - torch.log_softmax(student / 2, -1))).sum(-1).mean()
    assert torch.allclose(distillation_loss(student, teacher_out, labels, 2.0, 1.0, 0.1), 4 * kl, atol=1e-6)
    mixed = distillation_loss(student, teacher_out, labels, 2.0, 0.9, 0.1)
    assert torch.allclose(mixed, 0.9 * 4 * kl + 0.1 * ce, atol=1e-6)
    # Matching the teacher leaves only the label term.
    assert torch.allclose(distillation_loss(teacher_out, teacher_out, labels, 3.0, 1.0, 0.0), torch.tensor(0.0))
    with pytest.raises(MoEError, match="temperature"):
        distillation_loss(student, teacher_out, labels, 0.0, 0.5, 0.0)


def test_gradient_steps_on_the_soft_loss_move_the_student_to_the_teacher():
    torch.manual_seed(0)
    target = torch.randn(8, 4)
    student = torch.zeros(8, 4, requires_grad=True)
    labels = torch.zeros(8, dtype=torch.long)  # deliberately unlike the teacher
    opt = torch.optim.SGD([student], lr=1.0)
    for _ in range(300):
        opt.zero_grad()
        distillation_loss(student, target, labels, 2.0, 1.0, 0.0).backward()
        opt.step()
    assert torch.allclose(torch.softmax(student, -1), torch.softmax(target, -1), atol=1e-2)


def test_embedding_neighbours_are_the_most_similar_other_rows():
    table = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    near = embedding_neighbours(table, k=1, chunk=2)
    assert near[:, 0].tolist() == [1, 0, 3, 2, 2]


def test_augment_never_touches_special_tokens_and_changes_about_what_it_is_asked():
    rng = random.Random(0)
    neighbours = torch.tensor([[(i + 1) % 50, (i + 2) % 50] for i in range(50)])
    special, mask_id = {0, 1, 2}, 3
    row = [1] + list(range(10, 48)) + [2]
    assert augment(row, rng, neighbours, mask_id, special, Augmentation(mask=0.0, swap=0.0)) == row
    masked = augment(row, rng, neighbours, mask_id, special, Augmentation(mask=1.0, swap=0.0))
    assert masked == [1] + [mask_id] * 38 + [2]
    swapped = augment(row, rng, neighbours, mask_id, special, Augmentation(mask=0.0, swap=1.0))
    assert swapped[0] == 1 and swapped[-1] == 2
    assert all(s in neighbours[r].tolist() for r, s in zip(row[1:-1], swapped[1:-1]))
    changed = [
        sum(a != b for a, b in zip(row, augment(row, rng, neighbours, mask_id, special, Augmentation())))
        for _ in range(200)
    ]
    assert 0.12 < sum(changed) / (200 * 38) < 0.3


def test_transfer_set_is_the_rows_then_their_copies_labelled_by_the_teacher(teacher):
    model, tok = teacher
    labels = [0, 1, 2, 3]
    transfer = build_transfer_set(model, tok, TRAIN_TEXTS, labels, copies=2, seed=0)
    n = len(TRAIN_TEXTS)
    assert transfer.originals == n and len(transfer.ids) == 3 * n and transfer.labels == labels * 3
    assert transfer.ids[:n] == tok(TRAIN_TEXTS, truncation=True, max_length=model.cfg.max_len)["input_ids"]
    assert transfer.ids[n:] != transfer.ids[:n] * 2  # the copies are augmented
    assert all(len(a) == len(b) for a, b in zip(transfer.ids[n:], transfer.ids[:n] * 2))
    enc = tok(TRAIN_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        direct = model(enc["input_ids"], enc["attention_mask"].bool())
    assert torch.allclose(transfer.teacher_logits[:n], direct, atol=1e-5)
    # Labelling batched by length gives each row its own logits.
    assert torch.allclose(teacher_logits(model, transfer.ids, "cpu", batch_size=3), transfer.teacher_logits, atol=1e-5)


def test_an_ensemble_labels_each_row_with_the_mean_of_its_teachers_logits(teacher, bert_folder):
    model, tok = teacher
    torch.manual_seed(1)  # another run of the recipe: other routers
    other, _ = start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "copy")
    other.eval()
    labels = [0, 1, 2, 3]
    alone = build_transfer_set(model, tok, TRAIN_TEXTS, labels, copies=1, seed=0)
    both = build_transfer_set([model, other], tok, TRAIN_TEXTS, labels, copies=1, seed=0)
    assert both.ids == alone.ids  # the first teacher's neighbours make the copies
    mean = (alone.teacher_logits + teacher_logits(other, alone.ids, "cpu")) / 2
    assert torch.allclose(both.teacher_logits, mean, atol=1e-5)
    assert not torch.allclose(both.teacher_logits, alone.teacher_logits, atol=1e-3)


def test_an_ensemble_needs_one_tokenizer(tmp_path, teacher):
    model, tok = teacher
    save_checkpoint(tmp_path / "a", model, tok.backend_tokenizer.to_str(), {})
    own = train_tokenizer(TRAIN_TEXTS * 5, 200, 24)
    save_checkpoint(tmp_path / "b", MoEClassifier(preset("tiny")), own.to_str(), {})
    models, shared = load_teachers([tmp_path / "a", tmp_path / "a"])
    assert len(models) == 2 and vocabulary_digest(shared) == vocabulary_digest(tok)
    with pytest.raises(MoEError, match="different tokenizers"):
        load_teachers([tmp_path / "a", tmp_path / "b"])


def test_a_student_with_another_tokenizer_gets_the_rows_as_text(teacher):
    model, tok = teacher
    transfer = build_transfer_set(model, tok, TRAIN_TEXTS, [0, 1, 2, 3], copies=1, seed=0)
    assert student_rows(transfer, None, tok, 24) is transfer.ids  # the same tokenizer: ids as they are
    own = load_fast_tokenizer(train_tokenizer(TRAIN_TEXTS * 5, 200, 24))
    assert vocabulary_digest(own) != transfer.vocabulary
    rows = student_rows(transfer, tok, own, 24)
    # Texts 1 and 3 hold only subwords the teacher knows: decoded, they are the texts again.
    for i in (1, 3):
        assert rows[i] == own(TRAIN_TEXTS[i], truncation=True, max_length=24)["input_ids"]
    assert len(rows) == len(transfer.ids)
    with pytest.raises(MoEError, match="teacher's tokenizer"):
        student_rows(transfer, None, own, 24)


def test_augmented_copies_need_a_mask_token():
    tok = load_fast_tokenizer(train_tokenizer(TRAIN_TEXTS * 5, 200, 24))
    model = MoEClassifier(preset("tiny"))
    with pytest.raises(MoEError, match=r"\[MASK\]"):
        build_transfer_set(model, tok, TRAIN_TEXTS, [0, 1, 2, 3], copies=1)
    assert len(build_transfer_set(model, tok, TRAIN_TEXTS, [0, 1, 2, 3], copies=0).ids) == len(TRAIN_TEXTS)


def test_a_student_of_the_lower_layers_is_the_encoder_cut_there(bert_folder):
    full, _ = start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "slice")
    lower, _ = start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "slice", layers=1)
    assert lower.cfg.n_layers == 1 and full.cfg.n_layers == 2
    kept = lower.state_dict()
    shared = {k for k in kept if k.startswith(("embedding.", "blocks.0.")) and ".router." not in k}
    assert all(torch.equal(kept[k], full.state_dict()[k]) for k in shared)
    # Its closing norm is layer 0's LN2, which the full model's second block opens with.
    assert torch.equal(kept["classifier.norm.weight"], full.state_dict()["blocks.1.attention.input_norm.weight"])
    with pytest.raises(MoEError, match="cannot keep 3 layers"):
        start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "slice", layers=3)
