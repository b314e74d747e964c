"""The GPUs' utilisation over a span, sampled by nvidia-smi: what a benchmark level kept them busy.

nvidia-smi's `utilization.gpu` is the share of the sample period in which some kernel ran, so a
level whose GPUs stay well under 100 % is bound elsewhere (the host, a queue, launches). The
sampler's own CPU, a query every 200 ms, is part of what the level's host reading counts."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict

QUERY = ["--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits"]


def mean_utilisation(text: str) -> list[float] | None:
    """Each GPU's mean utilisation (%) from nvidia-smi's `index, utilization.gpu` lines, in index
    order; None when no line could be read."""
    samples: dict[int, list[float]] = defaultdict(list)
    for line in text.splitlines():
        index, _, percent = line.partition(",")
        try:
            samples[int(index)].append(float(percent))
        except ValueError:  # a partial line where sampling stopped, or "[N/A]"
            continue
    return [round(sum(v) / len(v), 1) for _, v in sorted(samples.items())] or None


class GpuSampler:
    """Samples every GPU's utilisation every `interval_ms` from entering the block to leaving it;
    `percent` is then each GPU's mean, or None where there is no nvidia-smi or it read nothing."""

    def __init__(self, interval_ms: int = 200):
        self.interval_ms = interval_ms
        self.process: subprocess.Popen | None = None
        self.percent: list[float] | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", *QUERY, f"--loop-ms={self.interval_ms}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        self.percent = mean_utilisation(out)


def gpu_busy(level: dict, percent: list[float] | None) -> dict:
    """`level` with its GPUs' mean utilisation (%), one value per GPU, where it was measured."""
    return level if percent is None else dict(level, gpu_busy_percent=percent)
