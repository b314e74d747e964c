#!/usr/bin/env python3
"""Where full_model's time goes on a GPU, in process: the TorchScript FullModel that v2 serves,
called as a libtorch-backend instance calls it (ragged ids and mask copied to the GPU, the answer
copied back, each thread on a stream of its own), in fp32 as exported and in the variants that
change only precision (TF32 matmuls, bf16 or fp16 weights).

A variant's name may end in `-groupsN`: FullModel's length groups, the texts run sorted by
length in groups of N, each padded only to its own longest text (what a CPU export serves).
`-padded` (any device): the exported FullModel's `device_answer`, the forward the served CUDA
graphs replay (every text padded to max_len; `+blocked`: its experts reached as
`--full-model-graph-experts blocked` exports them), run by the TorchScript interpreter without
graphs: on the CPU, what each form computes.
`-graphs` (dense or blocked variants only, a GPU only): the eager model, with no host
synchronisation left (`-dense`: every expert on every token; `-blocked`: the served graphs'
blocked dispatch, MoEFeedForward.forward_blocked), captured as CUDA graphs, one per padded shape
and calling thread (rows up to a power of two, tokens up to a multiple of GRAPH_TOKENS) and
replayed in one launch: what removing every per-operation launch and the interpreter would leave.

For each variant: every label of the 7,600 test texts and the largest probability difference
against the fp32 eager model on the same GPU; milliseconds per call and texts/s with 1 and N
threads for each batch size; and from torch.profiler, per call, the CUDA kernels launched, their
summed GPU time and the call's wall time (a call much longer than its kernels waits on the host:
launches, the interpreter, synchronisations).

    python3 scripts/gpu/full_model_profile.py --out profile.json [--batches 64,256] [--threads 1,4]
    python3 scripts/gpu/full_model_profile.py --device cpu --variants fp32,fp32-groups16 --threads 1 ...
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from export.pieces import FullModel, ragged  # noqa: E402
from moe.checkpoint import TOKENIZER, load_checkpoint  # noqa: E402
from moe.data import DEFAULT_DATA, load_split  # noqa: E402
from moe.tokenizer import encode, load_fast_tokenizer  # noqa: E402

VARIANTS = {
    "fp32": torch.float32,
    "fp32+tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32-dense": torch.float32,
    "fp16-dense": torch.float16,
    "fp32-groups64": torch.float32,
    "fp16-dense-graphs": torch.float16,
    "fp16-blocked-graphs": torch.float16,
    "fp32-padded": torch.float32,
    "fp32-padded+blocked": torch.float32,
    "fp16-padded": torch.float16,
    "fp16-padded+blocked": torch.float16,
}
# A graph is captured per padded length; texts are padded up to a multiple of this many tokens.
GRAPH_TOKENS = 32


def length_group(name: str) -> int:
    return int(name.rsplit("-groups", 1)[1]) if "-groups" in name else 0


class DenseExperts(nn.Module):
    """A measurement only, not the served model: every expert on every token as two batched
    matmuls, the top-k outputs gathered (4x the expert FLOPs of top-2 of 8, no host
    synchronisation, about 10 kernels a layer instead of 4 per expert plus the dispatch)."""

    def __init__(self, moe):
        super().__init__()
        self.router = moe.router
        self.w1 = nn.Parameter(torch.stack([e.fc1.weight.t() for e in moe.experts]))  # [E, D, F]
        self.b1 = nn.Parameter(torch.stack([e.fc1.bias for e in moe.experts]).unsqueeze(1))
        self.w2 = nn.Parameter(torch.stack([e.fc2.weight.t() for e in moe.experts]))  # [E, F, D]
        self.b2 = nn.Parameter(torch.stack([e.fc2.bias for e in moe.experts]).unsqueeze(1))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        expert_ids, weights, logits = self.router(h)
        n_experts = self.w1.shape[0]
        hidden = F.gelu(torch.baddbmm(self.b1, h.unsqueeze(0).expand(n_experts, -1, -1), self.w1))
        out = torch.baddbmm(self.b2, hidden, self.w2).transpose(0, 1)  # [N, E, D]
        picked = out.gather(1, expert_ids.unsqueeze(2).expand(-1, -1, out.shape[2]))  # [N, k, D]
        return (picked * weights.to(picked.dtype).unsqueeze(2)).sum(1), expert_ids, logits


class BlockedExperts(nn.Module):
    """A measurement: the graphed export's blocked dispatch (MoEFeedForward.forward_blocked,
    `moe export --full-model-graph-experts blocked`) where Block.forward calls its experts."""

    def __init__(self, moe):
        super().__init__()
        self.moe = moe

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        nothing = h.new_empty(0)
        return self.moe.forward_blocked(h), nothing, nothing


class PaddedAnswer(nn.Module):
    """FullModel's device_answer called as FullModel is (the served graphs' forward, not graphed)."""

    def __init__(self, full: FullModel):
        super().__init__()
        self.full = full

    def forward(self, ids: Tensor, mask: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, list[str]]:
        probs, label_id = self.full.device_answer(ids, mask, lengths)
        labels: list[str] = []
        return probs, label_id, labels


def padded_forward(model, ids: Tensor, mask: Tensor) -> Tensor:
    """The model's logits with every position of [B, T] run as a token: no packing of the real
    tokens, so no shape that depends on the data. Attention leaves padding keys out and the mean
    over each text leaves padding out, so real texts get the packed forward's answer."""
    B, T = ids.shape
    mask = mask.to(torch.bool)
    every = torch.arange(B * T, device=ids.device)
    x = model.embedding(ids.reshape(-1), torch.remainder(every, T))
    for block in model.blocks:
        x = block(x, mask, every)[0]
    h = model.classifier.norm(x).view(B, T, -1)
    h = torch.where(mask.unsqueeze(2), h, torch.zeros_like(h)).sum(1)
    return model.classifier.head(h / mask.sum(1, keepdim=True).to(h.dtype).clamp(min=1.0))


class GraphedModel:
    """A measurement only: `model` (whose forward must not synchronise with the host) called as
    FullModel is, through CUDA graphs. Each calling thread (bind) replays graphs of its own, on
    static buffers of its own; each padded shape is captured on first use (prepare: before
    anything is timed). A call's one host synchronisation is unflattening the ragged batch (its
    longest text), which a served version would avoid by taking padded inputs."""

    def __init__(self, model, pad_id: int, max_len: int):
        self.model, self.pad_id, self.max_len = model, pad_id, max_len
        self.graphs: dict = {}
        self.local = threading.local()

    def bind(self, copy_index: int) -> None:
        self.local.copy = copy_index

    def capture(self, key: tuple):
        batch, tokens = key[1:]
        # Normal tensors even when the first call of a shape comes under inference_mode: each call
        # refills them in place, in or out of it.
        with torch.inference_mode(False):
            ids = torch.full((batch, tokens), self.pad_id, dtype=torch.int64, device="cuda")
            mask = torch.zeros((batch, tokens), dtype=torch.bool, device="cuda")
            mask[:, 0] = True
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):
                padded_forward(self.model, ids, mask)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            probs = torch.softmax(padded_forward(self.model, ids, mask).float(), -1)
        return graph, ids, mask, probs

    def __call__(self, flat_ids, flat_mask, lengths):
        from export.pieces import unflatten_ragged

        ids, mask = unflatten_ragged(flat_ids, flat_mask, lengths, self.pad_id)
        batch, length = ids.shape
        # Rows up to a power of two and tokens up to a multiple of GRAPH_TOKENS: the few shapes a
        # served model would capture. A padding row holds one token, so no row is fully masked.
        rows = 1 << (batch - 1).bit_length()
        tokens = min(self.max_len, -(-length // GRAPH_TOKENS) * GRAPH_TOKENS)
        key = (getattr(self.local, "copy", 0), rows, tokens)
        if key not in self.graphs:
            self.graphs[key] = self.capture(key)
        graph, static_ids, static_mask, probs = self.graphs[key]
        static_ids.fill_(self.pad_id)
        static_mask.zero_()
        static_mask[batch:, 0] = True
        static_ids[:batch, :length].copy_(ids)
        static_mask[:batch, :length].copy_(mask)
        graph.replay()
        return probs[:batch], probs[:batch].argmax(1), []

    def prepare(self, data: list[tuple], copies: int) -> None:
        """Every shape of `data` captured for `copies` threads before anything is timed."""
        for copy_index, inputs in itertools.product(range(copies), data):
            self.bind(copy_index)
            self(*(t.to("cuda") for t in inputs))
        torch.cuda.synchronize()
        self.bind(0)


def variant_model(model, name: str):
    model = copy.deepcopy(model).to(VARIANTS[name.split("-groups")[0]]).eval()
    if "-dense" in name:
        for block in model.blocks:
            block.moe = DenseExperts(block.moe)
    if "-blocked" in name:
        for block in model.blocks:
            block.moe = BlockedExperts(block.moe)
    return model


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def batches(tokenizer, texts: list[str], size: int, max_len: int) -> list[tuple]:
    """The texts in batches of `size`, each as ragged CPU tensors (ids, mask, lengths)."""
    out = []
    for s in range(0, len(texts), size):
        ids, mask = encode(tokenizer, texts[s : s + size], max_len)
        out.append(ragged(ids, mask))
    return out


def call(module, inputs: tuple, device: str):
    ids, mask, lengths = (t.to(device, non_blocking=True) for t in inputs)
    probs, label_id, labels = module(ids, mask, lengths)
    return probs.cpu(), label_id.cpu(), labels


def agreement(module, reference: torch.Tensor, data: list[tuple], device: str) -> dict:
    with torch.inference_mode():
        probs = torch.cat([call(module, b, device)[0] for b in data])
    return dict(
        labels_unlike_fp32=int((probs.argmax(1) != reference.argmax(1)).sum()),
        max_prob_diff=float((probs - reference).abs().max()),
        texts=len(reference),
    )


def rate(module, data: list[tuple], device: str, threads: int, seconds: float) -> dict:
    """Texts/s with `threads` callers, each on its own CUDA stream, for `seconds`."""
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def work(t: int) -> None:
        stream = torch.cuda.Stream() if device == "cuda" else None
        i = t
        if hasattr(module, "bind"):
            module.bind(t)
        with torch.inference_mode(), torch.cuda.stream(stream):
            while time.perf_counter() < stop:
                call(module, data[i % len(data)], device)
                done[t] += int(data[i % len(data)][2].shape[0])
                i += threads

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return dict(threads=threads, texts_per_s=round(sum(done) / elapsed))


def kernels(module, inputs: tuple, device: str, calls: int = 10) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):
            call(module, inputs, device)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            for _ in range(calls):
                call(module, inputs, device)
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
    gpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(e.time_range.elapsed_us() for e in gpu if "memcpy" not in e.name.lower())
    top = {}
    for e in gpu:
        top[e.name[:60]] = top.get(e.name[:60], 0) + e.time_range.elapsed_us()
    return dict(
        gpu_ops_per_call=round(len(gpu) / calls, 1),
        gpu_ms_per_call=round(kernel_us / calls / 1000, 3),
        wall_ms_per_call=round(1000 * wall / calls, 3),
        top_kernels_us_per_call={k: round(v / calls, 1) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:8]},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (no kernel profile)")
    ap.add_argument("--rows", type=int, help="the first N test texts only")
    args = ap.parse_args()
    device = args.device
    if device == "cpu":
        torch.set_num_threads(1)  # as a CPU export serves: one intra-op thread per instance
    model, path = load_checkpoint(None)
    model.eval()
    tokenizer = load_fast_tokenizer(path / TOKENIZER)
    texts = load_split(DEFAULT_DATA, "test").texts[: args.rows]
    cfg = model.cfg
    set_tf32(False)
    eager = copy.deepcopy(model).to(device)
    full = batches(tokenizer, texts, 256, cfg.max_len)
    with torch.inference_mode():
        reference = torch.cat(
            [torch.softmax(eager.forward(*pad(b, cfg.pad_id, device)).float(), -1).cpu() for b in full]
        )
    result = dict(
        gpu=torch.cuda.get_device_name(0) if device == "cuda" else "none",
        torch=torch.__version__,
        checkpoint=str(path),
        variants={},
        texts=len(texts),
    )
    threads = list(map(int, args.threads.split(",")))
    for name in args.variants.split(","):
        set_tf32(name == "fp32+tf32")
        if name.endswith("-graphs"):
            if device != "cuda":
                print(f"{name}: CUDA graphs need a GPU, skipped", flush=True)
                continue
            module = GraphedModel(variant_model(model, name).to(device), cfg.pad_id, cfg.max_len)
        elif "-padded" in name:
            padded = FullModel(variant_model(model, name), blocked_experts=name.endswith("+blocked"))
            module = torch.jit.script(PaddedAnswer(padded)).to(device)
        else:
            module = torch.jit.script(FullModel(variant_model(model, name), length_group(name))).to(device)
        try:
            entry = dict(agreement=agreement(module, reference, full, device), speed=[])
        except RuntimeError as e:  # a forward that cannot be captured: say so, keep the rest of the run
            entry = dict(agreement=dict(error=repr(e)), speed=[])
        for size in map(int, args.batches.split(",")):
            data = batches(tokenizer, texts[: 32 * size], size, cfg.max_len)
            if hasattr(module, "prepare"):
                try:
                    module.prepare(data, max(threads))
                except RuntimeError as e:  # a forward that synchronises cannot be captured
                    entry["speed"].append(dict(batch=size, capture_error=repr(e)))
                    print(json.dumps({name: entry["speed"][-1]}), flush=True)
                    break
            with torch.inference_mode():
                for b in data[:5]:
                    call(module, b, device)
            row = dict(
                batch=size,
                rates=[rate(module, data, device, t, args.seconds) for t in threads],
            )
            if device == "cuda":
                try:
                    row.update(kernels(module, data[0], device))
                except (RuntimeError, AttributeError, TypeError) as e:  # a bonus: keep the rest of the run
                    row["profile_error"] = repr(e)
            entry["speed"].append(row)
            print(json.dumps({name: row}), flush=True)
        print(json.dumps({name: entry["agreement"]}), flush=True)
        result["variants"][name] = entry
    set_tf32(False)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


def pad(inputs: tuple, pad_id: int, device: str) -> tuple:
    from export.pieces import unflatten_ragged

    ids, mask, lengths = (t.to(device) for t in inputs)
    return unflatten_ragged(ids, mask, lengths, pad_id)


if __name__ == "__main__":
    main()
