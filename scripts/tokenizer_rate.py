"""How many texts a second the tokenizer stage can give on this machine, outside Triton: the same
work as one tokenizer instance's execution (its ASCII fast path on a batch, or with --original
encode_batch_fast and the ids and mask to numpy), single-threaded, in 1 process and then in P
processes at once. The served tokenizer stage cannot beat the P-process rate; the share of it
that the server reaches is what Triton's Python backend and the rest of the host cost.

    python scripts/tokenizer_rate.py [--processes 1,12] [--batch 64] [--seconds 5] [--original] [--out rate.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process, as each served instance


def worker(args) -> tuple[int, float]:
    tokenizer_path, texts, batch, seconds, fast = args
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    padding = tokenizer.padding
    tokenizer.enable_padding(pad_id=padding["pad_id"], pad_token=padding["pad_token"], pad_to_multiple_of=8)
    fast_path = served_module("ascii_tokenizer").AsciiWordPiece.of(tokenizer) if fast else None

    def encode(chunk):
        if fast_path is not None and fast_path.encode(chunk) is not None:
            return
        encodings = tokenizer.encode_batch_fast(chunk)
        np.array([e.ids for e in encodings], dtype=np.int64)
        np.array([e.attention_mask for e in encodings], dtype=bool)

    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        chunk = texts[i : i + batch] if i + batch <= len(texts) else texts[:batch]
        i = (i + batch) % max(1, len(texts) - batch)
        encode(chunk)
        done += len(chunk)
    return done, time.perf_counter() - start


def served_module(name: str):
    """A module of the served tokenizer model, loaded from its template folder."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "model_repository" / "tokenizer" / "1" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    from export.host_sizing import host_cores
    from moe.checkpoint import TOKENIZER, resolve
    from moe.data import DEFAULT_DATA, load_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,12")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--original", action="store_true", help="the tokenizer itself, not its ASCII fast path")
    parser.add_argument("--out")
    args = parser.parse_args()
    texts = load_split(str(DEFAULT_DATA), "test").texts
    path = str(resolve(None) / TOKENIZER)
    result = dict(cores=host_cores(), batch=args.batch, ascii_fast_path=not args.original, runs=[])
    for p in [int(x) for x in args.processes.split(",")]:
        with mp.get_context("spawn").Pool(p) as pool:
            parts = pool.map(worker, [(path, texts, args.batch, args.seconds, not args.original)] * p)
        rate = sum(n / s for n, s in parts)
        run = dict(processes=p, texts_per_s=round(rate), us_per_text_per_process=round(1e6 * p / rate, 1))
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
