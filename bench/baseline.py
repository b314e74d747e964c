"""In-process baselines: the checkpoint's eager model in this very process, tokenization
included (the server tokenizes too), one batch after the other, under torch.inference_mode."""

from __future__ import annotations

import time

import torch

from moe.checkpoint import TOKENIZER, load_checkpoint
from moe.tokenizer import encode, load_fast_tokenizer

from .load import LoadResult


class EagerModel:
    def __init__(self, checkpoint=None, device: str = "cpu"):
        self.model, path = load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.tokenizer = load_fast_tokenizer(path / TOKENIZER)
        self.labels = self.model.cfg.labels

    @torch.inference_mode()
    def classify(self, texts: list[str]) -> list[str]:
        ids, mask = encode(self.tokenizer, texts, self.model.cfg.max_len)
        predicted = self.model(ids.to(self.device), mask.to(self.device)).argmax(-1)
        return [self.labels[i] for i in predicted.tolist()]  # .tolist() waits for the GPU

    def run(self, batches: list[list[str]], warmup: int = 16, progress=None) -> LoadResult:
        """Every batch once, one after the other; latency per batch, labels kept."""
        for texts in batches[:warmup]:
            self.classify(texts)
        result = LoadResult(requests=len(batches), texts=sum(map(len, batches)))
        started = time.perf_counter()
        for texts in batches:
            t0 = time.perf_counter()
            result.answers.append(self.classify(texts))
            result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            if progress is not None:
                progress(1)
        result.seconds = time.perf_counter() - started
        return result


def eager_labels(checkpoint, texts: list[str], batch_size: int = 256) -> dict[str, str]:
    """The in-process model's label of each text: the reference served answers are checked against."""
    model = EagerModel(checkpoint)
    labels: dict[str, str] = {}
    for start in range(0, len(texts), batch_size):
        part = texts[start : start + batch_size]
        labels.update(zip(part, model.classify(part)))
    return labels
