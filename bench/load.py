"""The closed-loop load generator behind `moe bench` and `moe loadtest`.

C workers share one client (AsyncMoEClient, or the bench's lean bench.raw_http.RawHttpClient);
each sends its next request when its previous answer has arrived. Every request is (workflow,
texts); every answer is kept, so a caller can check it against the eager model, and every error
is counted by its message, never swallowed.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import numpy as np

from bench.gpu import GpuSampler, gpu_busy
from bench.host import host_busy_seconds, host_cpu

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
    untimed: int = 0  # requests sent to keep the workers busy (closed_loop's keep_busy)

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
            untimed=self.untimed,
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


async def closed_loop(
    client, plan: list[Request], concurrency: int, progress=None, keep_busy: list[Request] | None = None
) -> LoadResult:
    """Send every request of `plan` through `client` (an AsyncMoEClient or a RawHttpClient) from
    `concurrency` workers; the result keeps the answers in plan order.

    With `keep_busy`, a worker that finds the plan taken sends these (in turn, untimed, their
    answers and errors not kept) until the plan's last answer has arrived, so the timed window
    ends with every worker still busy. Without it the load drains away at the end, which, with a
    few requests per worker, understates the throughput that concurrency sustains."""
    result = LoadResult(requests=len(plan), texts=sum(len(t) for _, t in plan), answers=[None] * len(plan))
    next_request, unanswered, next_extra = 0, len(plan), 0
    started = finished = time.perf_counter()

    async def worker():
        nonlocal next_request, unanswered, next_extra, finished
        while next_request < len(plan) or (keep_busy and unanswered > 0):
            if next_request >= len(plan):
                workflow, texts = keep_busy[next_extra % len(keep_busy)]
                next_extra += 1
                result.untimed += 1
                try:
                    await client.classify(texts, workflow=workflow)
                except Exception:  # noqa: BLE001 - background load: the timed requests report errors
                    pass
                continue
            i, next_request = next_request, next_request + 1
            workflow, texts = plan[i]
            sent = time.perf_counter()
            try:
                predictions = await client.classify(texts, workflow=workflow)
            except Exception as e:  # noqa: BLE001 - counted and reported, never swallowed
                result.error_latencies_ms.append((time.perf_counter() - sent) * 1e3)
                key = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                result.errors[key] = result.errors.get(key, 0) + 1
            else:
                result.latencies_ms.append((time.perf_counter() - sent) * 1e3)
                result.answers[i] = [p.label for p in predictions]
            unanswered -= 1
            finished = time.perf_counter()
            if progress is not None:
                progress(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = finished - started
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


async def closed_loop_level(client, workflow: str, plan, want, untimed, concurrency: int, progress) -> dict:
    """A timed level of the Python load client (bench/load.py): its summary, this process's CPU
    and how many answers differ from the eager model's."""
    with GpuSampler() as gpus:
        cpu0, host0, wall0 = time.process_time(), host_busy_seconds(), time.monotonic()
        requests = [(workflow, t) for t in plan]
        run = await closed_loop(client, requests, concurrency, progress=progress, keep_busy=untimed)
        cpu, host, wall = time.process_time() - cpu0, host_busy_seconds() - host0, time.monotonic() - wall0
    pairs = [(g, w) for got, exp in zip(run.answers, want) if got is not None for g, w in zip(got, exp)]
    disagreements = sum(g != w for g, w in pairs)
    summary = gpu_busy(host_cpu(run.summary(), host, wall, len(plan) + run.untimed), gpus.percent)
    return dict(
        **summary,
        # This process's CPU (the load generator and the memory sampler) per request sent, and as
        # a share of one core: the cores it took from the server when both share a machine.
        load_cpu_ms_per_request=round(1e3 * cpu / (len(plan) + run.untimed), 3),
        load_cpu_share=round(cpu / max(run.seconds, 1e-9), 3),
        disagreements=disagreements,
        agreement_with_eager=round(1 - disagreements / len(pairs), 4) if pairs else None,
    )
