"""Closed-loop load with answer checking: every response is compared with the eager model's
label for its texts, so a lost, swapped or wrong answer is counted, not just an error."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    requests: int = 0
    texts: int = 0
    errors: dict = field(default_factory=dict)        # message -> count
    wrong: int = 0                                    # answers that differ from the eager label
    latencies_ms: list = field(default_factory=list)        # answered requests
    error_latencies_ms: list = field(default_factory=list)  # rejected/failed requests
    seconds: float = 0.0

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        rejected = np.array(self.error_latencies_ms) if self.error_latencies_ms else np.zeros(1)
        return dict(error_p99_ms=round(float(np.percentile(rejected, 99)), 2),requests=self.requests, texts=self.texts, errors=sum(self.errors.values()),
                    error_messages=self.errors, wrong_answers=self.wrong, seconds=round(self.seconds, 2),
                    texts_per_second=round(self.texts / max(self.seconds, 1e-9), 1),
                    p50_ms=round(float(np.percentile(lat, 50)), 2),
                    p95_ms=round(float(np.percentile(lat, 95)), 2),
                    p99_ms=round(float(np.percentile(lat, 99)), 2))


async def run_load(url: str, texts: list[str], labels: list[str], requests: int, concurrency: int,
                   workflows=("moe_v1", "moe_v2"), batch_sizes=(1, 2, 4, 8, 16), seed: int = 0,
                   timeout_s: float = 60.0, progress=None) -> LoadResult:
    """`requests` requests from `concurrency` workers, each of a random workflow and batch size."""
    import tritonclient.grpc as grpc
    import tritonclient.grpc.aio as grpc_aio
    rng = random.Random(seed)
    plan = [(rng.choice(workflows), rng.sample(range(len(texts)), rng.choice(batch_sizes)))
            for _ in range(requests)]
    result = LoadResult()
    client = grpc_aio.InferenceServerClient(url)
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def worker():
        while True:
            try:
                model, rows = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            inp = grpc.InferInput("TEXT", [len(rows), 1], "BYTES")
            inp.set_data_from_numpy(np.array([[texts[i].encode()] for i in rows], dtype=object))
            start = time.perf_counter()
            try:
                answer = await client.infer(model, [inp], outputs=[grpc.InferRequestedOutput("LABEL")],
                                            client_timeout=timeout_s)
                got = [b.decode() for b in answer.as_numpy("LABEL").reshape(-1)]
                result.wrong += sum(g != labels[i] for g, i in zip(got, rows)) + abs(len(got) - len(rows))
                result.latencies_ms.append((time.perf_counter() - start) * 1e3)
            except Exception as e:  # noqa: BLE001 - counted and reported, never swallowed
                result.error_latencies_ms.append((time.perf_counter() - start) * 1e3)
                key = str(e).splitlines()[0][:200]
                result.errors[key] = result.errors.get(key, 0) + 1
            result.requests += 1
            result.texts += len(rows)
            if progress:
                progress(1)

    started = time.perf_counter()
    try:
        await asyncio.gather(*[worker() for _ in range(concurrency)])
    finally:
        await client.close()
    result.seconds = time.perf_counter() - started
    return result


def eager_labels(checkpoint, texts: list[str], batch_size: int = 256) -> list[str]:
    """The in-process model's label for each text: the reference answers are checked against."""
    from .checkpoint import load_checkpoint
    from .evaluate import predict
    from .tokenizer import load_fast_tokenizer
    model, path = load_checkpoint(checkpoint)
    tokenizer = load_fast_tokenizer(path / "tokenizer.json")
    ids = [int(i) for probs, _ in predict(model, tokenizer, texts, model.cfg, batch_size)
           for i in probs.argmax(-1)]
    return [model.cfg.labels[i] for i in ids]
