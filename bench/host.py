"""The whole machine's CPU over a span, from /proc/stat: what a benchmark level cost the host."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def host_busy_seconds() -> float:
    """CPU seconds every core of this machine has spent busy since boot (idle and I/O wait left
    out): the difference over a span, divided by the span, is the cores the whole host kept busy."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


def host_cpu(level: dict, busy_seconds: float, wall_seconds: float, requests: int) -> dict:
    """`level` with the host's CPU over it: cores kept busy (server, its stub processes and the
    load generator together) and CPU milliseconds per request answered. What a single-text level
    costs the host per request says how many requests a second its cores can serve at most."""
    return dict(
        level,
        host_busy_cores=round(busy_seconds / max(wall_seconds, 1e-9), 2),
        host_cpu_ms_per_request=round(1e3 * busy_seconds / max(requests, 1), 3),
    )
