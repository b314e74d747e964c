"""`moe`: one command-line entry point for training, evaluation, export, serving and queries."""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

import click

from .errors import MoEError

DEFAULT_DATA = "../shared/data/ag_news"


def friendly_errors(fn):
    """User mistakes become one line on stderr and exit code 2; bugs keep their traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoEError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Mixture-of-Experts Transformer on AG News, served by NVIDIA Triton Inference Server."""


@main.command()
@click.option("--preset", default="small", show_default=True, help="tiny, small or seed")
@click.option("--data", default=DEFAULT_DATA, show_default=True,
              help="folder with train.csv/test.csv (AG News layout), or 'hub'")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="checkpoint folder to write")
@click.option("--epochs", type=int)
@click.option("--max-train-rows", type=int, help="use only the first N training rows")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--label-smoothing", type=float)
@click.option("--weight-decay", type=float)
@click.option("--seed", type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--save-dtype", type=click.Choice(["float32", "float16"]))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a model hyper-parameter of the preset, e.g. --set d_ff=768")
@friendly_errors
def train(preset, data, out, overrides, **train_options):
    """Train a model and write the best checkpoint (by validation accuracy) to OUT."""
    from .config import preset as get_preset
    from .train import TRAIN_PRESETS, TrainConfig, train as run_training
    try:
        cfg = get_preset(preset)
        cfg = dataclasses.replace(cfg, **parse_overrides(cfg, overrides))
    except (ValueError, TypeError) as e:
        raise MoEError(str(e)) from e
    tc = TrainConfig(**TRAIN_PRESETS.get(preset, {}))
    tc = dataclasses.replace(tc, **{k: v for k, v in train_options.items() if v is not None})
    history = run_training(cfg, tc, data, out, log=click.echo)
    click.echo(f"best validation accuracy {history['best_val_accuracy'] * 100:.2f}% "
               f"(epoch {history['best_epoch']}), checkpoint in {out}")


def parse_overrides(cfg, overrides) -> dict:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    result = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise MoEError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        kind = type(getattr(cfg, key))
        try:
            result[key] = kind(value)
        except ValueError:
            raise MoEError(f"--set {item!r}: {value!r} is not a valid {kind.__name__}") from None
    return result


@main.command("eval")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--data", default=DEFAULT_DATA, show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a report")
@click.option("--batch-size", default=128, show_default=True)
@friendly_errors
def eval_(checkpoint, data, split, as_json, batch_size):
    """Accuracy, confusion matrix and expert load of CHECKPOINT (default: the bundled one)."""
    from .checkpoint import load_checkpoint
    from .data import load_split
    from .evaluate import evaluate, format_report
    from .tokenizer import load_fast_tokenizer
    model, path = load_checkpoint(checkpoint)
    rows = load_split(data, split)
    result = evaluate(model, load_fast_tokenizer(path / "tokenizer.json"), rows, model.cfg, batch_size)
    result["checkpoint"] = str(path)
    click.echo(json.dumps(result) if as_json else format_report(result))


if __name__ == "__main__":
    main()
