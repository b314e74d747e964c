"""The tokenizer model's ASCII twin gives the original tokenizer's ids on ASCII text."""

import importlib.util
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from moe.checkpoint import TOKENIZER, resolve
from moe.data import load_split

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "ascii_tokenizer", ROOT / "model_repository" / "tokenizer" / "1" / "ascii_tokenizer.py"
)
ascii_tokenizer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ascii_tokenizer)


def served_pair():
    """The bundled tokenizer as the served model sets it up, and its twin."""
    original = Tokenizer.from_file(str(resolve(None) / TOKENIZER))
    padding = original.padding
    original.enable_padding(pad_id=padding["pad_id"], pad_token=padding["pad_token"], pad_to_multiple_of=8)
    twin = ascii_tokenizer.ascii_twin(original)
    assert twin is not None
    return original, twin


ORIGINAL, TWIN = served_pair()


def ids(tokenizer, texts):
    return [(e.ids, e.attention_mask) for e in tokenizer.encode_batch_fast(texts)]


def test_every_ascii_character_alone_and_between_words():
    texts = []
    for c in map(chr, range(128)):
        texts += [c, f"a{c}b", f"Word{c}{c}Next 12{c}3", f"{c}Hello, World!{c}"]
    assert ids(TWIN, texts) == ids(ORIGINAL, texts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(max_codepoint=127), max_size=400), min_size=1, max_size=6))
def test_random_ascii_text(texts):
    assert ids(TWIN, texts) == ids(ORIGINAL, texts)


def test_the_test_set(data_dir):
    texts = load_split(data_dir, "test").texts
    assert all(t.isascii() for t in texts)
    assert ids(TWIN, texts) == ids(ORIGINAL, texts)


def test_non_ascii_text_needs_the_original():
    """Accents are stripped by the original only: why the model uses the twin for ASCII batches
    alone."""
    texts = ["Café au lait in Zürich", "naïve résumé"]
    assert ids(TWIN, texts) != ids(ORIGINAL, texts)


def test_no_twin_without_a_bert_normalizer():
    spec = json.loads(ORIGINAL.to_str())
    spec["normalizer"] = {"type": "Lowercase"}
    assert ascii_tokenizer.ascii_twin(Tokenizer.from_str(json.dumps(spec))) is None
    spec["normalizer"] = None
    assert ascii_tokenizer.ascii_twin(Tokenizer.from_str(json.dumps(spec))) is None
