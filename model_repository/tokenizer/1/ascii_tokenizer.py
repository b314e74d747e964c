"""A fast path for a BERT-style WordPiece tokenizer on ASCII text: the same ids, a fraction of
the CPU.

The `tokenizers` pipeline spends most of its time per text on bookkeeping that serving never
reads: every normalized string and every pre-token carries its alignments to the original
characters, and BERT's normalizer looks up the Unicode category of every character. On ASCII
text the steps reduce to string operations Python runs in C:

- BertNormalizer: drop the ASCII control characters other than tab, newline and carriage return
  (DEL included), turn those three into spaces, lowercase (accent stripping and Chinese
  characters leave ASCII as it is); `Replace` with a literal pattern and `Lowercase` as written;
- BertPreTokenizer: split on whitespace, and each ASCII punctuation character is a word of its own;
- WordPiece: each distinct word is tokenized once by the tokenizer's own model and cached;
- the template's special tokens around the text, truncation to `max_length` (special tokens
  included) and padding to the batch's longest row (to a multiple, if set), as tokenizer.json says.

`AsciiWordPiece.of(tokenizer)` returns None for any other pipeline, and `encode` returns None for
a batch the fast path does not cover (a non-ASCII text, or one that holds an added token such as
"[MASK]", which the library matches before normalizing): the caller then runs the tokenizer.
tests/unit/test_ascii_tokenizer.py checks the ids against the tokenizer's on every ASCII character,
on random ASCII strings, on the test set and on both kinds of tokenizer this project writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import chain

import numpy as np
from tokenizers import Tokenizer

# What BERT's clean_text drops from ASCII (control characters but \t, \n, \r) and what it spaces.
ASCII_CONTROL = "".join(map(chr, [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]))
CLEAN_TEXT = str.maketrans({**{c: None for c in ASCII_CONTROL}, "\t": " ", "\n": " ", "\r": " "})
# BertPreTokenizer on ASCII: Rust's char::is_whitespace splits, char::is_ascii_punctuation isolates.
PUNCTUATION = r"!-/:-@\[-`{-~"
WORDS = re.compile(rf"[^\t\n\x0b\x0c\r {PUNCTUATION}]+|[{PUNCTUATION}]")
# Distinct words remembered per instance; past it the cache starts again, so hostile input
# cannot grow it without bound.
CACHE_WORDS = 200_000


def normalizer_steps(spec: dict | None) -> list[Callable[[str], str]] | None:
    """Python steps doing to ASCII text what normalizer `spec` (its JSON) does, or None."""
    if spec is None:
        return []
    steps = []
    for step in spec["normalizers"] if spec["type"] == "Sequence" else [spec]:
        kind = step["type"]
        if kind == "BertNormalizer":
            if step.get("clean_text", True):
                steps.append(lambda t: t.translate(CLEAN_TEXT))
            if step.get("lowercase", True):
                steps.append(str.lower)
        elif kind == "Lowercase":
            steps.append(str.lower)
        elif kind == "Replace" and "String" in step["pattern"]:
            old, new = step["pattern"]["String"], step["content"]
            steps.append(lambda t, old=old, new=new: t.replace(old, new))
        else:
            return None
    return steps


def template_ids(spec: dict) -> tuple[list[int], list[int]] | None:
    """The special-token ids a TemplateProcessing puts before and after a single text."""
    if spec is None or spec["type"] != "TemplateProcessing":
        return None
    before, after, seen_text = [], [], False
    for piece in spec["single"]:
        if "Sequence" in piece:
            seen_text = True
        else:
            (after if seen_text else before).extend(spec["special_tokens"][piece["SpecialToken"]["id"]]["ids"])
    return before, after


class WordCache(dict):
    """word -> its WordPiece ids; a word not seen yet is tokenized by the model (the lookups of
    seen words then run in C)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def __missing__(self, word: str) -> list[int]:
        if len(self) >= CACHE_WORDS:
            self.clear()
        ids = self[word] = [token.id for token in self.model.tokenize(word)]
        return ids


class AsciiWordPiece:
    def __init__(self, tokenizer: Tokenizer, normalize, before: list[int], after: list[int], added: list[str]):
        self.normalize = normalize
        self.before, self.after = before, after
        truncation = tokenizer.truncation
        # Truncation counts the special tokens in: this many of the text's own are kept.
        self.max_text_tokens = None if truncation is None else truncation["max_length"] - len(before) - len(after)
        padding = tokenizer.padding
        self.pad_id = padding["pad_id"]
        self.multiple = padding["pad_to_multiple_of"] or 1
        self.added = re.compile("|".join(re.escape(a) for a in added), re.IGNORECASE) if added else None
        self.cache = WordCache(tokenizer.model)

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> AsciiWordPiece | None:
        """The fast path of `tokenizer`, or None where its pipeline is not one this covers."""
        spec = json.loads(tokenizer.to_str())
        steps = normalizer_steps(spec.get("normalizer"))
        template = template_ids(spec.get("post_processor"))
        truncation, padding = spec.get("truncation"), spec.get("padding")
        if (
            steps is None
            or template is None
            or spec["model"]["type"] != "WordPiece"
            or (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer"
            or (truncation and (truncation["direction"] != "Right" or truncation["strategy"] == "OnlySecond"))
            or (truncation and truncation["max_length"] < len(template[0]) + len(template[1]))
            or not padding
            or padding["direction"] != "Right"
            or padding["strategy"] != "BatchLongest"
        ):
            return None

        def normalize(text: str) -> str:
            for step in steps:
                text = step(text)
            return text

        added = [t["content"] for t in spec.get("added_tokens", []) if t["content"]]
        return cls(tokenizer, normalize, *template, added)

    def row(self, text: str) -> list[int] | None:
        if not text.isascii() or (self.added is not None and self.added.search(text)):
            return None
        normalized = self.normalize(text)
        if self.added is not None and self.added.search(normalized):
            return None
        ids = list(chain.from_iterable(map(self.cache.__getitem__, WORDS.findall(normalized))))
        if self.max_text_tokens is not None:
            del ids[self.max_text_tokens :]
        return self.before + ids + self.after

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """ids [B, T] int64 and attention mask [B, T] bool, or None if any text needs the tokenizer."""
        rows = []
        for text in texts:
            row = self.row(text)
            if row is None:
                return None
            rows.append(row)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        width = -(-int(lengths.max(initial=0)) // self.multiple) * self.multiple
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = row
        return ids, np.arange(width) < lengths[:, None]
