#!/usr/bin/env python3
"""Where a process's CPU goes, by thread: samples /proc/PID/task/*/stat of the newest process
named NAME every INTERVAL seconds and writes, per window, the cores each thread name used
(numbered siblings summed), the busiest threads one by one and how many are busy, beside the
whole host's busy cores. `top` shows the process at 700 %; this says which
of its threads spend it.

    python3 scripts/gpu/thread_cpu.py --name tritonserver --interval 4 --out thread_cpu.json &

Runs until killed (SIGTERM writes the file) or for --seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

from bench.host import host_busy_seconds
from serving.processes import thread_cpu_seconds


def newest_pid(name: str) -> int | None:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append((entry.stat().st_mtime, int(entry.name)))
            except OSError:
                continue
    return max(found)[1] if found else None


def window(before: dict, after: dict, seconds: float) -> dict:
    """Cores used per thread name between two samples, busiest first, and per thread."""
    # A thread new since `before` counts all its seconds.
    used = {tid: (cpu - (before[tid][1] if tid in before else 0.0)) / seconds for tid, (_, cpu) in after.items()}
    by_name: dict[str, float] = defaultdict(float)
    threads: dict[str, int] = defaultdict(int)
    for tid, (name, _) in after.items():
        group = re.sub(r"[0-9]+$", "#", name)  # numbered siblings (a pool's "worker-3") are one group
        by_name[group] += used[tid]
        threads[group] += 1
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1])
    # Where threads share one name (tritonserver names none of its own), how the load spreads
    # over them tells a few saturated threads (a serial stage, a spin-wait) from many light ones.
    per_thread = sorted(used.values(), reverse=True)
    return {
        "process_cores": round(sum(used.values()), 3),
        "by_thread_name": [{"name": n, "threads": threads[n], "cores": round(c, 3)} for n, c in ranked if c >= 0.005],
        "busiest_threads": [round(c, 3) for c in per_thread[:16]],
        "threads_over": {f">={x}": sum(c >= x for c in per_thread) for x in (0.05, 0.25, 0.5, 0.9)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="tritonserver", help="the process's name (/proc/PID/comm)")
    ap.add_argument("--interval", type=float, default=4.0)
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default: when killed)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    windows: list[dict] = []

    def write(*_: object) -> None:
        args.out.write_text(json.dumps({"name": args.name, "cores": os.cpu_count(), "windows": windows}, indent=1))
        sys.exit(0)

    signal.signal(signal.SIGTERM, write)
    start = time.monotonic()
    pid, before, host_before, t_before = None, {}, host_busy_seconds(), time.monotonic()
    while args.seconds is None or time.monotonic() - start < args.seconds:
        time.sleep(args.interval)
        now_pid = newest_pid(args.name)
        if now_pid != pid:  # a new server (the bench starts one per run): start over on it
            pid, before = now_pid, thread_cpu_seconds(now_pid) if now_pid else {}
            host_before, t_before = host_busy_seconds(), time.monotonic()
            continue
        try:
            after = thread_cpu_seconds(pid)
        except OSError:
            pid = None
            continue
        host_after, t_after = host_busy_seconds(), time.monotonic()
        seconds = t_after - t_before
        record = window(before, after, seconds)
        record["at"] = time.strftime("%H:%M:%S")
        record["host_busy_cores"] = round((host_after - host_before) / seconds, 2)
        windows.append(record)
        before, host_before, t_before = after, host_after, t_after
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
