"""Subword tokenizer: trained with `tokenizers`, saved as tokenizer.json, used through
`transformers.PreTrainedTokenizerFast` in Python and through `tokenizers` alone in Triton.

Truncation, padding and the special-token template live inside tokenizer.json itself, so every
consumer of the file (training, eval, the Triton tokenizer model, NVIDIA's container) produces
the same ids. Our own tokenizers write "[CLS] text"; a pretrained BERT tokenizer keeps its
"[CLS] text [SEP]", the form its encoder was trained on (moe/upcycle.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS = [PAD, UNK, CLS]  # PAD must be id 0: MoEConfig.pad_id


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_len: int) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    # AG News writes line breaks as a literal backslash; clean_text drops control characters.
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Replace("\\", " "),
            normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Every text starts with [CLS], so even an empty one has a real token to attend to.
    tok.post_processor = processors.TemplateProcessing(single=f"{CLS} $A", special_tokens=[(CLS, tok.token_to_id(CLS))])
    configure(tok, max_len)
    return tok


def configure(tok: Tokenizer, max_len: int) -> None:
    """Truncate to max_len tokens (special tokens included) and pad with [PAD]."""
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=tok.token_to_id(PAD), pad_token=PAD)


def load_fast_tokenizer(path_or_tokenizer: Path | Tokenizer):
    """transformers' fast tokenizer over a tokenizer.json file or a `tokenizers.Tokenizer`."""
    from transformers import PreTrainedTokenizerFast

    source = (
        dict(tokenizer_object=path_or_tokenizer)
        if isinstance(path_or_tokenizer, Tokenizer)
        else dict(tokenizer_file=str(path_or_tokenizer))
    )
    return PreTrainedTokenizerFast(**source, pad_token=PAD, unk_token=UNK, cls_token=CLS)


def encode(tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] int64 and mask [B, T] bool, padded to the longest text of the batch."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.bool)
