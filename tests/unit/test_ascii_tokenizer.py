"""The tokenizer model's ASCII fast path gives the tokenizer's own ids on ASCII text."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from moe.checkpoint import TOKENIZER, resolve
from moe.data import load_split
from moe.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "ascii_tokenizer", ROOT / "model_repository" / "tokenizer" / "1" / "ascii_tokenizer.py"
)
ascii_tokenizer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ascii_tokenizer)
AsciiWordPiece = ascii_tokenizer.AsciiWordPiece


def served(tokenizer: Tokenizer, multiple: int | None = 8) -> Tokenizer:
    """The tokenizer as the served model sets it up."""
    padding = tokenizer.padding
    tokenizer.enable_padding(pad_id=padding["pad_id"], pad_token=padding["pad_token"], pad_to_multiple_of=multiple)
    return tokenizer


def pretrained() -> Tokenizer:
    """The bundled checkpoint's: MiniLM's BERT pipeline, "[CLS] text [SEP]", 128 tokens."""
    return served(Tokenizer.from_file(str(resolve(None) / TOKENIZER)))


def own(max_len: int = 32) -> Tokenizer:
    """One this project trains: a literal Replace before BERT's normalizer, "[CLS] text"."""
    texts = ["Stocks fall as oil prices rise", "Wall St. Bears Claw Back Into the Black (Reuters)"] * 20
    return served(train_tokenizer(texts, vocab_size=200, max_len=max_len), multiple=None)


TOKENIZERS = {"pretrained": pretrained(), "own": own()}


def expected(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encodings = tokenizer.encode_batch_fast(texts)
    return np.array([e.ids for e in encodings], dtype=np.int64), np.array([e.attention_mask for e in encodings], bool)


def assert_same(tokenizer: Tokenizer, texts: list[str]) -> None:
    fast = AsciiWordPiece.of(tokenizer)
    assert fast is not None
    got = fast.encode(texts)
    assert got is not None, "the fast path declined ASCII text without added tokens"
    want = expected(tokenizer, texts)
    assert got[0].dtype == np.int64 and got[1].dtype == bool
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("name", TOKENIZERS)
def test_every_ascii_character_alone_and_between_words(name):
    texts = []
    for c in map(chr, range(128)):
        texts += [c, f"a{c}b", f"Word{c}{c}Next 12{c}3", f"{c}Hello, World!{c}", f"back\\{c}slash"]
    assert_same(TOKENIZERS[name], texts)


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.characters(max_codepoint=127), max_size=400), min_size=1, max_size=6))
def test_random_ascii_text(name, texts):
    tokenizer = TOKENIZERS[name]
    fast = AsciiWordPiece.of(tokenizer)
    got = fast.encode(texts)
    if got is None:  # only for text that holds an added token, which the library matches first
        assert any(fast.added.search(t) for t in texts)
        return
    want = expected(tokenizer, texts)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_the_test_set(data_dir):
    texts = load_split(data_dir, "test").texts
    assert all(t.isascii() for t in texts)
    tokenizer = TOKENIZERS["pretrained"]
    for start in range(0, len(texts), 256):
        assert_same(tokenizer, texts[start : start + 256])


@pytest.mark.parametrize("name", TOKENIZERS)
def test_truncation_long_words_and_empty_text(name):
    tokenizer = TOKENIZERS[name]
    assert_same(tokenizer, ["word " * 300, "x" * 99, "y" * 100, "z" * 101 + " tail", "", "   "])
    assert_same(tokenizer, ["one"])


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(ascii_tokenizer, "CACHE_WORDS", 3)
    tokenizer = TOKENIZERS["pretrained"]
    fast = AsciiWordPiece.of(tokenizer)
    texts = ["alpha beta gamma delta epsilon", "alpha zeta"]
    got = fast.encode(texts)
    assert len(fast.cache) <= 3
    np.testing.assert_array_equal(got[0], expected(tokenizer, texts)[0])


def test_text_the_fast_path_leaves_to_the_tokenizer():
    """Accents are stripped and added tokens matched by the library alone: such a batch is
    declined as a whole, and the model runs the tokenizer on it."""
    fast = AsciiWordPiece.of(TOKENIZERS["pretrained"])
    assert fast.encode(["plain text", "Café au lait in Zürich"]) is None
    assert fast.encode(["plain text", "a [MASK] here"]) is None
    assert fast.encode(["plain text", "a [mask] here"]) is None
    assert fast.encode(["plain text"]) is not None


def test_no_fast_path_for_other_pipelines():
    spec = json.loads(TOKENIZERS["pretrained"].to_str())
    for key, value in [
        ("normalizer", {"type": "NFKC"}),
        ("pre_tokenizer", {"type": "Whitespace"}),
        ("post_processor", None),
        ("padding", None),
    ]:
        changed = dict(spec, **{key: value})
        assert AsciiWordPiece.of(Tokenizer.from_str(json.dumps(changed))) is None, key
    no_normalizer = Tokenizer.from_str(json.dumps(dict(spec, normalizer=None)))
    assert AsciiWordPiece.of(no_normalizer) is not None
    assert_same(no_normalizer, ["Case Kept, as the pipeline says", "MiXeD"])
