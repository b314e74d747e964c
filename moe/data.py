"""AG News: the original CSV layout from a local folder, or the hub through `datasets`."""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path

from .errors import MoEError

HUB_NAME = "ag_news"
# The AG News folder the commands read by default: $MOE_DATA, else ../shared/data/ag_news beside
# the checkout (where this project's machines keep it).
DEFAULT_DATA = Path(
    os.environ.get("MOE_DATA") or Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ag_news"
)


@dataclass
class Split:
    texts: list[str]
    labels: list[int]  # 0..3

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> Split:
        return self if n is None else Split(self.texts[:n], self.labels[:n])


def join_title_description(title: str, description: str) -> str:
    return f"{title} {description}"


def read_csv(path: Path, n_classes: int = 4) -> Split:
    """Rows `class index (1..n), title, description`, no header, as in the original release.

    Parsed with the csv module rather than `datasets`' CSV builder so that a malformed row is
    reported by file and line, not as a pandas parser error.
    """
    path = Path(path)
    if not path.is_file():
        raise MoEError(f"data file not found: {path}")
    texts, labels = [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != 3:
                raise MoEError(
                    f"{where}: malformed row, expected 3 columns (class index, title, description), got {len(row)}"
                )
            label, title, description = row
            if not label.strip().isdigit() or not 1 <= int(label) <= n_classes:
                raise MoEError(f"{where}: malformed row, class index must be 1..{n_classes}, got {label!r}")
            texts.append(join_title_description(title, description))
            labels.append(int(label) - 1)
    if not texts:
        raise MoEError(f"{path}: no rows")
    return Split(texts, labels)


def load_split(source: str | Path, split: str) -> Split:
    """`source` is a folder holding train.csv/test.csv, or "hub" for the `ag_news` dataset."""
    if split not in ("train", "test"):
        raise MoEError(f"unknown split {split!r} (train or test)")
    if str(source) == "hub":
        return _load_from_hub(split)
    folder = Path(source)
    if not folder.is_dir():
        raise MoEError(
            f"data folder not found: {folder} (expected train.csv and test.csv there; "
            f"give --data FOLDER, set MOE_DATA, or --data hub)"
        )
    return read_csv(folder / f"{split}.csv")


def _load_from_hub(split: str) -> Split:
    try:
        import datasets
    except ImportError as e:
        raise MoEError("--data hub needs the `datasets` package") from e
    try:
        ds = datasets.load_dataset(HUB_NAME, split=split)
    except Exception as e:  # network, cache, hub errors all mean the same to the user
        raise MoEError(f"could not load {HUB_NAME!r} from the hub: {e}") from e
    return Split(list(ds["text"]), [int(x) for x in ds["label"]])


def train_val_split(data: Split, val_fraction: float = 0.05, seed: int = 0) -> tuple[Split, Split]:
    """Deterministic split of the training rows; the test set is kept for the final number."""
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(data) * val_fraction)))
    val, train = order[:n_val], order[n_val:]

    def pick(idx):
        return Split([data.texts[i] for i in idx], [data.labels[i] for i in idx])

    return pick(train), pick(val)
