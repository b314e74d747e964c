"""Fixtures of both layers. tests/unit: no server, no training, well under a minute;
tests/integration: real tritonserver processes on free loopback ports, a tiny model trained on
AG News rows. `pytest -m unit` / `pytest -m integration` (or the folder) runs one layer."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serving.server import local_server

# Two cores shared with tritonserver's processes: OpenMP threads spinning against each other
# slow in-process training by 10x or more, so the test process uses one.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MOE_DATA", ROOT.parent / "shared" / "data" / "ag_news"))


def pytest_collection_modifyitems(items):
    for item in items:
        layer = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        item.add_marker(getattr(pytest.mark, layer))


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
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kw,
    )


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint exported to a Triton model repository (TorchScript pieces)."""
    from export.repository import export_repository

    out = tmp_path_factory.mktemp("repo") / "build"
    export_repository(tiny_checkpoint, out, progress=False, log=lambda *_: None)
    return out


ADMIN_KEY = "test-admin-key"


def start_server(repository: Path, **kw):
    """A started tritonserver on free loopback ports, as `moe bench` and `moe loadtest` start
    theirs; the caller stops it (or uses local_server's context manager)."""
    return local_server(repository, ready_timeout_s=240, **kw).start()


@pytest.fixture(scope="session")
def server(tiny_repository):
    """A real tritonserver on free loopback ports serving the tiny model, v1 and v2."""
    with local_server(tiny_repository, admin_key=ADMIN_KEY, ready_timeout_s=240) as s:
        yield s
