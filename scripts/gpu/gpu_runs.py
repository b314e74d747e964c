"""What the GPU experiment scripts (upcycle_run.py, distill_run.py) share: training runs as
processes waited for until a deadline, and each run's checkpoint tested once on the test set."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path


def test_on(checkpoint: Path, data: Path, out: Path, rows: int | None) -> dict:
    """Test-set accuracy and expert load of a saved checkpoint (fp32), written to `out`."""
    import torch

    from moe.checkpoint import TOKENIZER, load_checkpoint
    from moe.data import load_split
    from moe.evaluate import evaluate
    from moe.tokenizer import load_fast_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, path = load_checkpoint(checkpoint)
    started = time.time()
    split = load_split(data, "test").head(rows)
    result = evaluate(model.to(device), load_fast_tokenizer(path / TOKENIZER), split, model.cfg, 256, device)
    result["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result["seconds"] = time.time() - started
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def wait_all(procs: dict[str, subprocess.Popen], deadline: float, log) -> dict[str, str]:
    """name -> status of every run, each waited for until `deadline`, then stopped."""
    status = {}
    for name, proc in procs.items():
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.time()))
            status[name] = "finished" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            status[name] = "stopped at the time limit"
        log(f"{name}: {status[name]}")
    return status


def metrics_and_test(folder: Path, data: Path, test_file: Path, rows: int | None) -> tuple[dict, dict]:
    """A run's metrics.json and test result; a run stopped before its test has its best epoch so
    far on disk, tested once here."""
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    if metrics.get("best_epoch") and not test_file.is_file():
        test_on(folder, data, test_file, rows)
    test = json.loads(test_file.read_text()) if test_file.is_file() else {}
    return metrics, test
