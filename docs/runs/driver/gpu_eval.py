"""Test-set evaluation of a checkpoint on the GPU (fp32 weights), written as JSON."""

import json
import sys
import time

import torch

from moe.checkpoint import load_checkpoint
from moe.data import load_split
from moe.evaluate import evaluate
from moe.tokenizer import load_fast_tokenizer

ck, data, out = sys.argv[1:4]
model, path = load_checkpoint(ck)
dev = "cuda" if torch.cuda.is_available() else "cpu"
t = time.time()
r = evaluate(model.to(dev), load_fast_tokenizer(path / "tokenizer.json"), load_split(data, "test"), model.cfg, 256, dev)
r["device"] = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
r["seconds"] = time.time() - t
json.dump(r, open(out, "w"), indent=1)
print(f"{ck}: test acc {r['accuracy'] * 100:.2f}% max/fair {r['max_load_over_fair_share']:.2f}")
