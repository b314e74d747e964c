"""The in-process runner check (scripts/runner_inprocess.py) that is run on GPU machines,
here on the CPU: the TorchScript runner gives the eager model's outputs for every piece."""
import subprocess
import sys
from pathlib import Path

import json

ROOT = Path(__file__).resolve().parent.parent


def test_runner_inprocess_on_cpu(tmp_path):
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "runner_inprocess.py"), "--device", "cpu",
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert len(report["models"]) == 13
    for name, r in report["models"].items():
        assert r["max_abs_diff"] <= 1e-5 and r["device"] == ["cpu"], (name, r)
