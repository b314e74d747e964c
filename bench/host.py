"""The whole machine's CPU over a span, from /proc/stat: what a benchmark level cost the host."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# /proc/stat's total is a sum of per-core counters that each advance in whole ticks, so a
# difference over a span can be off by up to one tick per core. Below this many times that
# error a level's busy seconds say more about where the ticks fell than about the level.
RESOLVABLE_ERRORS = 10


def host_busy_seconds() -> float:
    """CPU seconds every core of this machine has spent busy since boot (idle and I/O wait left
    out): the difference over a span, divided by the span, is the cores the whole host kept busy."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


def host_cpu(level: dict, busy_seconds: float, wall_seconds: float, requests: int, cores: int | None = None) -> dict:
    """`level` with the host's CPU over it: cores kept busy (server, its stub processes and the
    load generator together) and CPU milliseconds per request answered. What a single-text level
    costs the host per request says how many requests a second its cores can serve at most.
    A level too short for /proc/stat's ticks to resolve gets None for both, not a wrong number."""
    if busy_seconds < RESOLVABLE_ERRORS * (cores or os.cpu_count() or 1) / CLOCK_TICKS:
        return dict(level, host_busy_cores=None, host_cpu_ms_per_request=None)
    return dict(
        level,
        host_busy_cores=round(busy_seconds / max(wall_seconds, 1e-9), 2),
        host_cpu_ms_per_request=round(1e3 * busy_seconds / max(requests, 1), 3),
    )
