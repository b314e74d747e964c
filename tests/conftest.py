import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MOE_DATA", ROOT.parent / "shared" / "data" / "ag_news"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "train.csv").is_file():
        pytest.fail(f"AG News not found at {DATA} (set MOE_DATA)")
    return DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, data_dir) -> Path:
    """A tiny model really trained on AG News rows (seconds on CPU), shared by the suite."""
    from moe.config import preset
    from moe.train import TrainConfig, train
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    tc = TrainConfig(epochs=2, lr=2e-3, batch_size=64, label_smoothing=0.0, max_train_rows=4000)
    train(preset("tiny"), tc, data_dir, out, log=lambda *_: None)
    return out


def run_cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moe.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, **kw)
