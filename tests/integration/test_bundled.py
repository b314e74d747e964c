"""The shipped checkpoint: its model card's test accuracy reproduces on this CPU, experts are
balanced, and it fits the shipping budget and the specified 8 experts."""

import json
import re

from moe.checkpoint import BUNDLED

from ..conftest import run_cli


def test_bundled_checkpoint_reproduces_its_model_card(data_dir):
    card = (BUNDLED / "README.md").read_text()
    stated = float(re.search(r"Test accuracy: \*\*([0-9.]+) %\*\*", card).group(1)) / 100
    result = run_cli("eval", "--data", data_dir, "--json", timeout=900)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured["checkpoint"] == str(BUNDLED)
    assert measured["rows"] == 7600
    assert abs(measured["accuracy"] - stated) <= 0.001, (measured["accuracy"], stated)
    # Routing stays balanced: no expert of any layer gets 1.5 times its fair share of the test
    # set's tokens.
    assert measured["max_load_over_fair_share"] <= 1.5


def test_bundled_checkpoint_fits_the_budget():
    assert (BUNDLED / "model.safetensors").stat().st_size <= 50_000_000
    # The product is specified as 8 experts per layer with top-2 gating.
    config = json.loads((BUNDLED / "config.json").read_text())
    assert (config["n_experts"], config["top_k"]) == (8, 2), config
