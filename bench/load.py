"""The closed-loop load generator behind `moe bench` and `moe loadtest`.

C workers share one AsyncMoEClient; each sends its next request when its previous answer has
arrived. Every request is (workflow, texts); every answer is kept, so a caller can check it
against the eager model, and every error is counted by its message, never swallowed.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import numpy as np

Request = tuple[str, list[str]]  # (workflow "v1" | "v2", texts)


@dataclass
class LoadResult:
    requests: int = 0
    texts: int = 0
    seconds: float = 0.0
    latencies_ms: list = field(default_factory=list)  # answered requests
    error_latencies_ms: list = field(default_factory=list)  # rejected or failed requests
    errors: dict = field(default_factory=dict)  # first line of the message -> count
    answers: list = field(default_factory=list)  # labels per request; None if it failed

    def wrong_answers(self, plan: list[Request], label_of: dict[str, str]) -> int:
        """Answers that differ from `label_of[text]` (a missing or extra label counts too)."""
        wrong = 0
        for (_, texts), got in zip(plan, self.answers):
            if got is not None:
                wrong += sum(g != label_of[t] for g, t in zip(got, texts)) + abs(len(got) - len(texts))
        return wrong

    def summary(self) -> dict:
        def pct(values, q):
            return round(float(np.percentile(values, q)), 3) if values else None

        answered = sum(len(a) for a in self.answers if a is not None)
        return dict(
            requests=self.requests,
            texts=self.texts,
            seconds=round(self.seconds, 3),
            throughput=round(answered / max(self.seconds, 1e-9), 2),
            p50_ms=pct(self.latencies_ms, 50),
            p95_ms=pct(self.latencies_ms, 95),
            p99_ms=pct(self.latencies_ms, 99),
            mean_ms=round(float(np.mean(self.latencies_ms)), 3) if self.latencies_ms else None,
            errors=sum(self.errors.values()),
            error_messages=dict(self.errors),
            error_p99_ms=pct(self.error_latencies_ms, 99),
        )


async def closed_loop(client, plan: list[Request], concurrency: int, progress=None) -> LoadResult:
    """Send every request of `plan` through `client` (an AsyncMoEClient) from `concurrency`
    workers; the result keeps the answers in plan order."""
    result = LoadResult(requests=len(plan), texts=sum(len(t) for _, t in plan), answers=[None] * len(plan))
    next_request = 0

    async def worker():
        nonlocal next_request
        while next_request < len(plan):
            i, next_request = next_request, next_request + 1
            workflow, texts = plan[i]
            started = time.perf_counter()
            try:
                predictions = await client.classify(texts, workflow=workflow)
            except Exception as e:  # noqa: BLE001 - counted and reported, never swallowed
                result.error_latencies_ms.append((time.perf_counter() - started) * 1e3)
                key = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                result.errors[key] = result.errors.get(key, 0) + 1
            else:
                result.latencies_ms.append((time.perf_counter() - started) * 1e3)
                result.answers[i] = [p.label for p in predictions]
            if progress is not None:
                progress(1)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def mixed_plan(
    texts: list[str], requests: int, workflows=("v1", "v2"), batch_sizes=(1, 2, 4, 8, 16), seed: int = 0
) -> list[Request]:
    """`requests` requests of a random workflow and batch size, of random texts."""
    rng = random.Random(seed)
    return [
        (rng.choice(workflows), [texts[i] for i in rng.sample(range(len(texts)), rng.choice(batch_sizes))])
        for _ in range(requests)
    ]


def batches(texts: list[str], batch_size: int, n: int, start: int = 0) -> list[list[str]]:
    """n batches of batch_size consecutive texts, cycling through `texts`."""
    return [[texts[((start + r) * batch_size + i) % len(texts)] for i in range(batch_size)] for r in range(n)]
