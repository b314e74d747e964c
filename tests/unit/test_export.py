"""Export without a server: the parity check refuses a drifted piece, and v2's ragged batches
(texts of different lengths concatenated, as Triton hands them over) give the padded answer."""

import dataclasses

import pytest
import torch

from export.pieces import FullModel, ragged, unflatten_ragged
from export.repository import check_parity
from moe.config import preset
from moe.errors import MoEError

from .test_model import make_model, random_batch


def test_export_refuses_a_piece_that_differs_from_eager():
    eager = torch.nn.Linear(4, 4)
    drifted = torch.nn.Linear(4, 4)
    drifted.load_state_dict(eager.state_dict())
    with torch.no_grad():
        drifted.bias[0] += 1e-3
    with pytest.raises(MoEError, match="differs from the eager module"):
        check_parity("expert_9", eager, torch.jit.script(drifted), [(torch.randn(3, 4),)])
    assert check_parity("expert_9", eager, torch.jit.script(eager), [(torch.randn(3, 4),)]) == 0.0


def test_unflatten_ragged_restores_the_padded_batch():
    ids, mask = random_batch(B=5, T=9)
    flat_ids, flat_mask, lengths = ragged(ids, mask)
    assert flat_ids.numel() == int(mask.sum()) and lengths.dtype == torch.int32
    padded_ids, padded_mask = unflatten_ragged(flat_ids, flat_mask, lengths, pad_id=0)
    width = int(mask.sum(1).max())
    assert torch.equal(padded_mask, mask[:, :width])
    assert torch.equal(padded_ids, ids[:, :width])


def test_full_model_on_a_ragged_batch_equals_the_padded_forward():
    model = make_model()
    ids, mask = random_batch(B=6, T=14)
    full = FullModel(model).eval()
    with torch.no_grad():
        expected = model(ids, mask)
        got = full.logits(*ragged(ids, mask))
        # Requests that arrive padded to their own length (the tokenizer pads per request).
        first, second = (ids[:3], mask[:3]), (ids[3:], mask[3:])
        parts = [
            (i.reshape(-1), m.reshape(-1), torch.full((i.shape[0], 1), i.shape[1], dtype=torch.int32))
            for i, m in (first, second)
        ]
        joined = full.logits(*(torch.cat(column) for column in zip(*parts)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(joined, expected, atol=1e-5, rtol=0)
    # Served, it answers as post-processing does: probabilities, class id, class name.
    probs, label_id, labels = torch.jit.script(full)(*ragged(ids, mask))
    torch.testing.assert_close(probs, torch.softmax(expected, -1), atol=1e-5, rtol=0)
    assert label_id.reshape(-1).tolist() == expected.argmax(-1).tolist()
    assert labels == [model.cfg.labels[i] for i in expected.argmax(-1).tolist()]


def test_full_model_answers_the_same_from_host_memory():
    # Where the answer lands is only observable on a GPU; the answers' equality and the choice
    # surviving scripting are checked everywhere.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = make_model().to(device)
    ids, mask = random_batch(B=5, T=12, seed=7)
    answers = {}
    for on_host in (False, True):
        scripted = torch.jit.script(FullModel(model, answer_on_host=on_host).eval())
        assert scripted.answer_on_host is on_host  # the choice survives scripting, as it is exported
        with torch.no_grad():
            answers[on_host] = scripted(*(t.to(device) for t in ragged(ids, mask)))
        expected = "cpu" if on_host else device.type
        assert answers[on_host][0].device.type == expected and answers[on_host][1].device.type == expected
    torch.testing.assert_close(answers[True][0], answers[False][0].cpu(), atol=1e-6, rtol=0)
    assert torch.equal(answers[True][1], answers[False][1].cpu()) and answers[True][2] == answers[False][2]


@pytest.mark.parametrize("blocked_experts", [False, True], ids=["dense", "blocked"])
def test_the_graphed_answer_equals_forwards_whatever_rows_of_zeros_follow(blocked_experts):
    """The CUDA_GRAPH_MAX_BATCH contract (third_party/triton/README.md): device_answer on inputs
    padded with rows of zeros to graph_rows of the batch's power of two, cut to the batch, then
    host_answer, answers as forward does, whichever way it reaches the experts."""
    model = make_model()
    ids, mask = random_batch(B=6, T=14, seed=5)
    # Two requests, each padded to its own longest text, concatenated as Triton hands them over.
    parts = [
        (i.reshape(-1), m.reshape(-1), torch.full((i.shape[0], 1), i.shape[1], dtype=torch.int32))
        for i, m in ((ids[:2, :9], mask[:2, :9]), (ids[2:], mask[2:]))
    ]
    inputs = [torch.cat(column) for column in zip(*parts)]
    assert inputs[0].shape[0] == 2 * 9 + 4 * 14 and inputs[2].shape[0] == 6  # 74 tokens, 6 rows
    scripted = torch.jit.script(FullModel(model, blocked_experts=blocked_experts).eval())
    rows = scripted.graph_rows(8)
    assert rows == [8 * model.cfg.max_len, 8 * model.cfg.max_len, 8]
    with torch.no_grad():
        probs, label_id, labels = scripted(*inputs)
        padded = [torch.cat([t, t.new_zeros((n - t.shape[0], *t.shape[1:]))]) for t, n in zip(inputs, rows)]
        graphed_probs, graphed_ids = scripted.device_answer(*padded)
        answer = scripted.host_answer(graphed_probs[:6], graphed_ids[:6])
    assert graphed_probs.shape == (8, model.cfg.n_classes) and bool(torch.isfinite(graphed_probs).all())
    torch.testing.assert_close(answer[0], probs, atol=1e-5, rtol=0)
    assert torch.equal(answer[1], label_id) and answer[2] == labels


def test_full_model_in_length_sorted_groups_equals_the_padded_forward():
    model = make_model()
    ids, mask = random_batch(B=11, T=14, seed=3)
    with torch.no_grad():
        expected = model(ids, mask)
        for group in (1, 4, 16):
            got = torch.jit.script(FullModel(model, length_group=group).eval()).logits(*ragged(ids, mask))
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_each_template_takes_exactly_its_values(tmp_path):
    """Every template of the repository is filled from its own keys; a missing or an unused
    key is refused, so a template and its values cannot drift apart."""
    from export.configs import fill, model_values
    from export.options import ExportOptions
    from export.repository import ENSEMBLE_TEMPLATES, MODEL_TEMPLATES

    cfg = preset("tiny")
    experts_file = MODEL_TEMPLATES / "experts" / "config.pbtxt"
    values = model_values(cfg, ExportOptions(device="cuda", gpus=2).resolved(), experts_file)
    for name, keys in values.items():
        folder = ENSEMBLE_TEMPLATES if name.startswith("moe_v") else MODEL_TEMPLATES
        text = fill(folder / ("expert" if name.startswith("expert_") else name) / "config.pbtxt", keys)
        assert "${" not in text, name
    expert_3 = fill(MODEL_TEMPLATES / "expert" / "config.pbtxt", values["expert_3"])
    assert "count: 1 kind: KIND_GPU gpus: [ 1 ]" in expert_3
    template = tmp_path / "config.pbtxt"
    template.write_text('name: "${name}"\n')
    with pytest.raises(MoEError, match=r"no value for \['name'\]"):
        fill(template, {})
    with pytest.raises(MoEError, match=r"never used \['extra'\]"):
        fill(template, {"name": "x", "extra": 1})


QUEUED_MODELS = ("tokenizer", "full_model", "moe_bls", "postprocessing")


@pytest.mark.parametrize("bounds", [(0, 0), (256, 10_000_000), (32, 0)])
def test_a_queue_policy_is_written_only_where_a_bound_is_asked_for(bounds):
    """No bound (the default) leaves Triton's prefetching batcher as it is; any bound writes the
    policy, with both values, into every model that queues requests."""
    from export.configs import fill, model_values
    from export.options import ExportOptions
    from export.repository import MODEL_TEMPLATES

    size, timeout = bounds
    opts = ExportOptions(max_queue_size=size, queue_timeout_us=timeout).resolved()
    values = model_values(preset("tiny"), opts, MODEL_TEMPLATES / "experts" / "config.pbtxt")
    for name in QUEUED_MODELS:
        text = fill(MODEL_TEMPLATES / name / "config.pbtxt", values[name])
        assert ("default_queue_policy" in text) == any(bounds), name
        if any(bounds):
            assert f"max_queue_size: {size}\n" in text and f"default_timeout_microseconds: {timeout}\n" in text
    assert ExportOptions().max_queue_size == 0 and ExportOptions().queue_timeout_us == 0


def test_experts_are_called_one_by_one_when_the_ensemble_file_does_not_fit_the_model():
    from export.configs import model_values
    from export.options import ExportOptions
    from export.repository import MODEL_TEMPLATES

    experts_file = MODEL_TEMPLATES / "experts" / "config.pbtxt"
    opts = ExportOptions().resolved()
    assert model_values(preset("tiny"), opts, experts_file)["moe_bls"]["expert_calls"] == "ensemble"
    four = dataclasses.replace(preset("tiny"), n_experts=4)
    assert model_values(four, opts, experts_file)["moe_bls"]["expert_calls"] == "calls"
