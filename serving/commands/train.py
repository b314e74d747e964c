"""`moe train`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from moe.data import DEFAULT_DATA
from moe.errors import MoEError

from .common import friendly_errors


@click.command()
@click.option("--preset", default="small", show_default=True, help="tiny, small or seed")
@click.option(
    "--data", default=DEFAULT_DATA, show_default=True, help="folder with train.csv/test.csv (AG News layout), or 'hub'"
)
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
@click.option("--ema-decay", type=float, help="validate and save a moving average of the weights (e.g. 0.999)")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a model hyper-parameter of the preset, e.g. --set d_ff=768",
)
@click.option(
    "--init",
    type=click.Path(path_type=Path, file_okay=False),
    help="start from this pretrained BERT-style Hugging Face folder (sparse upcycling): "
    "it gives the architecture and tokenizer, the preset and --set the routing, "
    "max_len and dropout; training defaults become a fine-tuning schedule",
)
@click.option(
    "--upcycle",
    type=click.Choice(["copy", "slice"]),
    default="copy",
    show_default=True,
    help="with --init: each expert a copy of the layer's FFN, or one of n_experts slices of it",
)
@click.option("--layers", type=int, help="with --init: keep only the encoder's first N layers")
@click.option("--freeze-token-embedding", is_flag=True, default=None, help="keep the pretrained token embeddings")
@click.option(
    "--distill",
    type=click.Path(path_type=Path, file_okay=False),
    multiple=True,
    help="teacher checkpoint: train on its logits over the training rows and augmented copies; "
    "repeat it for an ensemble (the mean of their logits)",
)
@click.option("--distill-weight", type=float, help="weight of the loss on the teacher's logits (default 0.9)")
@click.option("--distill-temperature", type=float, help="softmax temperature of that loss (default 2)")
@click.option("--augment-copies", type=int, help="augmented copies of each training row (default 3)")
@friendly_errors
def train(preset, data, out, overrides, init, upcycle, layers, distill, **train_options):
    """Train a model and write the best checkpoint (by validation accuracy) to OUT."""
    from moe.config import preset as get_preset
    from moe.train import TRAIN_PRESETS, TrainConfig
    from moe.train import train as run_training

    try:
        cfg = get_preset(preset)
        cfg = dataclasses.replace(cfg, **parse_overrides(cfg, overrides))
    except (ValueError, TypeError) as e:
        raise MoEError(str(e)) from e
    tc = TrainConfig(**TRAIN_PRESETS.get("upcycle" if init else preset, {}))
    tc = dataclasses.replace(tc, **{k: v for k, v in train_options.items() if v is not None})
    history = run_training(
        cfg, tc, data, out, log=click.echo, init=init, upcycle=upcycle, layers=layers, teacher=list(distill)
    )
    click.echo(
        f"best validation accuracy {history['best_val_accuracy'] * 100:.2f}% "
        f"(epoch {history['best_epoch']}), checkpoint in {out}"
    )


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
