"""`moe train` / `moe eval` end to end, and their one-line errors on bad input."""
import json
import shutil

from moe.config import preset

from .conftest import run_cli


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_train_then_eval_cli(tmp_path, data_dir):
    out = tmp_path / "ck"
    r = run_cli("train", "--preset", "tiny", "--data", data_dir, "--out", out, "--epochs", 1,
                "--max-train-rows", 1500)
    assert r.returncode == 0, r.stderr
    assert "val acc" in r.stdout
    for f in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json"):
        assert (out / f).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and "expert_load_train" in metrics["epochs"][0]
    r = run_cli("eval", out, "--data", data_dir, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["rows"] == 7600
    assert sum(map(sum, result["confusion_matrix"])) == 7600
    assert 0.25 < result["accuracy"] <= 1.0
    assert len(result["expert_load"]) == preset("tiny").n_layers
    r = run_cli("eval", out, "--data", data_dir)
    assert "test accuracy" in r.stdout and "confusion matrix" in r.stdout


def test_missing_data_folder(tmp_path):
    r = run_cli("train", "--preset", "tiny", "--data", tmp_path / "nope", "--out", tmp_path / "o")
    assert_one_line_error(r, "data folder not found", "nope")


def test_malformed_csv_row(tmp_path, data_dir):
    (tmp_path / "train.csv").write_text('"1","a title","a text"\n"7","bad","label"\n')
    r = run_cli("train", "--preset", "tiny", "--data", tmp_path, "--out", tmp_path / "o")
    assert_one_line_error(r, "train.csv:2", "class index")
    (tmp_path / "train.csv").write_text('"1","only two columns"\n')
    r = run_cli("train", "--preset", "tiny", "--data", tmp_path, "--out", tmp_path / "o")
    assert_one_line_error(r, "train.csv:1", "3 columns")


def test_unknown_preset(tmp_path, data_dir):
    r = run_cli("train", "--preset", "huge", "--data", data_dir, "--out", tmp_path / "o")
    assert_one_line_error(r, "unknown preset", "huge")


def test_checkpoint_from_another_config(tmp_path, tiny_checkpoint, data_dir):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["d_model"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    r = run_cli("eval", bad, "--data", data_dir)
    assert_one_line_error(r, "another config")


def test_not_a_checkpoint(tmp_path, data_dir):
    r = run_cli("eval", tmp_path, "--data", data_dir)
    assert_one_line_error(r, "not a checkpoint", "model.safetensors")


def test_export_refuses_corrupt_weights(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    r = run_cli("export", bad, "--out", tmp_path / "out")
    assert_one_line_error(r, "model.safetensors", "unreadable")
    assert not (tmp_path / "out").exists()
