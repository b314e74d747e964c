"""A twin of a WordPiece tokenizer for ASCII text: the same ids, a third less work.

BERT's normalizer spends most of its time on Unicode: it decomposes every character to strip
accents and looks up each one's category to drop control characters and to space out Chinese
ones. On ASCII text these steps reduce to removing the ASCII control characters other than tab,
newline and carriage return (DEL included), turning those three into spaces, and lowercasing: a
regex and a lowercase pass, which is what the twin runs in the BERT normalizer's place. Every
other step of the pipeline (other normalizers, pre-tokenizer, WordPiece, template, truncation,
padding) is the original's. AG News is ASCII throughout, so served text almost always takes the
twin; a batch with any other character takes the original.

tests/unit/test_ascii_tokenizer.py checks the twin against the original on every ASCII character,
on random ASCII strings and on the test set.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer

# What BERT's clean_text drops from ASCII (control characters but \t, \n, \r) and what it spaces.
ASCII_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
ASCII_SPACE = r"[\t\n\r]"


def ascii_normalizers(bert: dict) -> list[dict]:
    """The steps that do to ASCII text what BertNormalizer `bert` (its JSON) does."""
    steps = []
    if bert.get("clean_text", True):
        steps.append({"type": "Replace", "pattern": {"Regex": ASCII_CONTROL}, "content": ""})
        steps.append({"type": "Replace", "pattern": {"Regex": ASCII_SPACE}, "content": " "})
    # handle_chinese_chars and strip_accents leave ASCII text as it is.
    if bert.get("lowercase", True):
        steps.append({"type": "Lowercase"})
    return steps


def ascii_twin(tokenizer: Tokenizer) -> Tokenizer | None:
    """The twin of `tokenizer`, or None if its normalizer has no BertNormalizer to replace or has
    one inside a nested sequence (then nothing is gained, or it is not known to be the same)."""
    spec = json.loads(tokenizer.to_str())
    normalizer = spec.get("normalizer")
    if normalizer is None:
        return None
    steps = normalizer["normalizers"] if normalizer["type"] == "Sequence" else [normalizer]
    if not any(step["type"] == "BertNormalizer" for step in steps):
        return None
    if any(step["type"] == "Sequence" for step in steps):
        return None
    twin_steps = []
    for step in steps:
        twin_steps.extend(ascii_normalizers(step) if step["type"] == "BertNormalizer" else [step])
    spec["normalizer"] = {"type": "Sequence", "normalizers": twin_steps}
    return Tokenizer.from_str(json.dumps(spec))
