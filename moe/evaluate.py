"""Accuracy, confusion matrix and expert load of a model on a labelled split."""

from __future__ import annotations

import torch

from .config import MoEConfig
from .data import Split
from .model import MoEClassifier, expert_load
from .tokenizer import encode


@torch.no_grad()
def predict(
    model: MoEClassifier,
    tokenizer,
    texts: list[str],
    cfg: MoEConfig,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
):
    """Yields (probabilities [B, C], expert ids per layer) batch by batch."""
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(texts), batch_size):
            ids, mask = encode(tokenizer, texts[s : s + batch_size], cfg.max_len)
            logits, expert_ids, _ = model.forward_routed(ids.to(device), mask.to(device))
            yield torch.softmax(logits.float(), -1).cpu(), expert_ids
    finally:
        model.train(was_training)


def evaluate(
    model: MoEClassifier,
    tokenizer,
    split: Split,
    cfg: MoEConfig,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> dict:
    confusion = torch.zeros(cfg.n_classes, cfg.n_classes, dtype=torch.long)
    load = torch.zeros(cfg.n_layers, cfg.n_experts, dtype=torch.long)
    preds = []
    for probs, expert_ids in predict(model, tokenizer, split.texts, cfg, batch_size, device):
        preds.append(probs.argmax(-1))
        load += expert_load(cfg, expert_ids).cpu()
    pred = torch.cat(preds)
    truth = torch.tensor(split.labels)
    confusion.index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
    fair = load.sum(1, keepdim=True).float() / cfg.n_experts
    return {
        "rows": len(split),
        "accuracy": (pred == truth).float().mean().item(),
        "labels": list(cfg.labels),
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted
        "expert_load": load.tolist(),  # [layer][expert] routed tokens
        "max_load_over_fair_share": (load.float() / fair).max().item(),
    }


def format_report(result: dict) -> str:
    labels = result["labels"]
    w = max(len(l) for l in labels) + 2
    lines = [
        f"test accuracy: {result['accuracy'] * 100:.2f}%  ({result['rows']} texts)",
        "",
        "confusion matrix (rows: true, columns: predicted)",
        " " * w + "".join(f"{l:>{w}}" for l in labels),
    ]
    for l, row in zip(labels, result["confusion_matrix"]):
        lines.append(f"{l:<{w}}" + "".join(f"{v:>{w}}" for v in row))
    lines += [
        "",
        "expert load (tokens routed to each expert)",
        "layer " + "".join(f"{'e' + str(e):>8}" for e in range(len(result["expert_load"][0]))),
    ]
    for i, row in enumerate(result["expert_load"]):
        lines.append(f"{i:>5} " + "".join(f"{v:>8}" for v in row))
    lines.append(f"busiest expert / fair share: {result['max_load_over_fair_share']:.2f}")
    return "\n".join(lines)
