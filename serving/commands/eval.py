"""`moe eval`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from moe.data import DEFAULT_DATA

from .common import friendly_errors


@click.command("eval")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--data", default=DEFAULT_DATA, show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a report")
@click.option("--batch-size", default=128, show_default=True)
@friendly_errors
def eval_(checkpoint, data, split, as_json, batch_size):
    """Accuracy, confusion matrix and expert load of CHECKPOINT (default: the bundled one)."""
    from moe.checkpoint import TOKENIZER, load_checkpoint
    from moe.data import load_split
    from moe.evaluate import evaluate, format_report
    from moe.tokenizer import load_fast_tokenizer

    model, path = load_checkpoint(checkpoint)
    rows = load_split(data, split)
    result = evaluate(model, load_fast_tokenizer(path / TOKENIZER), rows, model.cfg, batch_size)
    result["checkpoint"] = str(path)
    click.echo(json.dumps(result) if as_json else format_report(result))
