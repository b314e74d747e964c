"""Training, `moe train` / `moe eval` end to end, and one-line errors about trained checkpoints."""

import json
import shutil

import torch

from moe.config import preset

from ..conftest import run_cli
from ..unit.test_cli_errors import assert_one_line_error
from ..unit.test_upcycle import VOCAB, save_tiny_bert


def test_train_then_eval_cli(tmp_path, data_dir):
    out = tmp_path / "ck"
    # Two epochs on 4,000 rows: one epoch on fewer rows can still predict one class for
    # everything (25 %), which says nothing about whether the pipeline learns.
    r = run_cli("train", "--preset", "tiny", "--data", data_dir, "--out", out, "--epochs", 2, "--max-train-rows", 4000)
    assert r.returncode == 0, r.stderr
    assert "val acc" in r.stdout
    for f in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json"):
        assert (out / f).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and "expert_load_train" in metrics["epochs"][0]
    r = run_cli("eval", out, "--data", data_dir, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["rows"] == 7600
    assert sum(map(sum, result["confusion_matrix"])) == 7600
    assert 0.5 < result["accuracy"] <= 1.0, result["accuracy"]
    assert len(result["expert_load"]) == preset("tiny").n_layers
    r = run_cli("eval", out, "--data", data_dir)
    assert "test accuracy" in r.stdout and "confusion matrix" in r.stdout


def test_checkpoint_from_another_config(tmp_path, tiny_checkpoint, data_dir):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["d_model"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    r = run_cli("eval", bad, "--data", data_dir)
    assert_one_line_error(r, "another config")


def test_export_refuses_corrupt_weights(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    r = run_cli("export", bad, "--out", tmp_path / "out")
    assert_one_line_error(r, "model.safetensors", "unreadable")
    assert not (tmp_path / "out").exists()


def test_tiny_trains_and_loss_falls(data_dir, tmp_path):
    from moe.train import TrainConfig, train

    tc = TrainConfig(epochs=3, lr=3e-3, batch_size=32, label_smoothing=0.0, max_train_rows=600)
    history = train(preset("tiny"), tc, data_dir, tmp_path / "ck", log=lambda *_: None)
    losses = [e["train_loss"] for e in history["epochs"]]
    assert losses[-1] < losses[0] - 0.05, losses
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    load = torch.tensor(history["epochs"][-1]["expert_load_train"])
    assert load.shape == (preset("tiny").n_layers, preset("tiny").n_experts) and load.sum() > 0


def test_train_from_a_pretrained_bert_writes_an_upcycled_checkpoint(tmp_path, data_dir):
    from moe.checkpoint import load_checkpoint
    from moe.train import TRAIN_PRESETS

    bert = save_tiny_bert(tmp_path / "bert")
    out = tmp_path / "ck"
    r = run_cli(
        "train",
        "--init",
        bert,
        "--upcycle",
        "slice",
        "--preset",
        "tiny",
        "--data",
        data_dir,
        "--out",
        out,
        "--epochs",
        1,
        "--max-train-rows",
        200,
        "--ema-decay",
        0.99,
    )
    assert r.returncode == 0, r.stderr
    assert "upcycled" in r.stdout and "post-norm" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["upcycled_from"] == {"folder": str(bert), "method": "slice", "layers": 2}
    # With --init the training defaults are the fine-tuning schedule, fp16 weights included.
    assert metrics["train"]["lr"] == TRAIN_PRESETS["upcycle"]["lr"] and metrics["train"]["save_dtype"] == "float16"
    assert metrics["train"]["ema_decay"] == 0.99
    model, path = load_checkpoint(out)
    cfg = model.cfg
    assert (cfg.norm_position, cfg.layer_norm_eps, cfg.d_model, cfg.n_experts, cfg.d_ff) == ("post", 1e-12, 32, 8, 8)
    spec = json.loads((path / "tokenizer.json").read_text())
    processor = spec["post_processor"]
    assert [s["SpecialToken"]["id"] for s in processor["single"] if "SpecialToken" in s] == ["[CLS]", "[SEP]"]
    # The template's ids are the trimmed vocabulary's, not the pretrained one's.
    vocab = spec["model"]["vocab"]
    assert processor["special_tokens"]["[SEP]"]["ids"] == [vocab["[SEP]"]] != [VOCAB.index("[SEP]")]


def test_distil_a_student_from_a_trained_teacher(tmp_path, data_dir, tiny_checkpoint):
    out = tmp_path / "student"
    common = ("train", "--preset", "tiny", "--data", data_dir, "--max-train-rows", 4000, "--epochs", 1)
    # The teacher's from-scratch tokenizer has no [MASK]: augmented copies are refused, clearly.
    r = run_cli(*common, "--out", out, "--distill", tiny_checkpoint, "--augment-copies", 1)
    assert_one_line_error(r, "[MASK]")
    r = run_cli(
        *common,
        "--out",
        out,
        "--distill",
        tiny_checkpoint,
        "--augment-copies",
        0,
        "--distill-weight",
        0.5,
        "--distill-temperature",
        3,
    )
    assert r.returncode == 0, r.stderr
    assert "transfer set: 3800 rows" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    distilled = metrics["distilled_from"]
    assert distilled["teacher"] == str(tiny_checkpoint) and distilled["transfer_rows"] == metrics["train_rows"] == 3800
    assert (distilled["weight"], distilled["temperature"], distilled["augmented_rows"]) == (0.5, 3.0, 0)
    # The teacher agrees with the labels of its own training rows far above chance.
    assert 0.5 < distilled["teacher_train_accuracy"] <= 1.0
    assert metrics["best_val_accuracy"] > 0.4
