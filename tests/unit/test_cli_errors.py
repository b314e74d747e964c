"""One-line errors of the CLI on bad input: no traceback, the problem named."""

from ..conftest import run_cli


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    for n in needles:
        assert n in lines[0], lines[0]


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


def test_not_a_checkpoint(tmp_path, data_dir):
    r = run_cli("eval", tmp_path, "--data", data_dir)
    assert_one_line_error(r, "not a checkpoint", "model.safetensors")


def test_bench_refuses_zero_requests(tmp_path):
    r = run_cli("bench", "--requests", "0", "--url", "127.0.0.1:9", "--out", tmp_path / "b")
    assert_one_line_error(r, "--requests", ">= 1")
