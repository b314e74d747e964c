"""The shipped checkpoint: its model card's test accuracy reproduces on this CPU, experts are
balanced, it fits the shipping budget and the specified 8 experts, and its graphed forms answer
as it does."""

import json
import re

import torch

from export.precision import padded_probabilities, probabilities
from moe.checkpoint import BUNDLED, TOKENIZER, load_checkpoint
from moe.data import load_split
from moe.tokenizer import load_fast_tokenizer

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


def test_the_bundled_models_graphed_forms_answer_as_its_forward(data_dir):
    """Both forms a GPU's CUDA graphs may serve (every text padded to max_len, its experts dense or
    blocked) give the packed forward's probabilities on test texts, the bundled model in fp32."""
    model, ckpt = load_checkpoint(BUNDLED)
    tokenizer = load_fast_tokenizer(ckpt / TOKENIZER)
    texts = load_split(str(data_dir), "test").texts[:192]
    with torch.no_grad():
        reference = probabilities(model.eval(), tokenizer, texts, "cpu")
        for blocked in (False, True):
            got = padded_probabilities(model, tokenizer, texts, "cpu", blocked)
            assert torch.equal(got.argmax(1), reference.argmax(1)), blocked
            torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)
