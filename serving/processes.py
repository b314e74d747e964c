"""Accounting of a process tree from /proc and nvidia-smi: which processes, their memory and CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(path: Path) -> tuple[str, list[str]]:
    """A /proc/.../stat file as its name and the fields after it: `pid (comm) state ppid ...`,
    comm may hold spaces and parentheses. Raises OSError once the process or thread is gone."""
    text = path.read_text()
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def _cpu(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process; 0 once it is gone."""
    try:
        return _cpu(stat_fields(Path(f"/proc/{pid}/stat"))[1])
    except OSError:
        return 0.0


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of a process: its name and CPU seconds so far (threads gone meanwhile left out)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, fields = stat_fields(task / "stat")
        except OSError:
            continue
        out[int(task.name)] = (name, _cpu(fields))
    return out


def _proc_stat_parent(pid: int) -> int | None:
    try:
        return int(stat_fields(Path(f"/proc/{pid}/stat"))[1][1])
    except (OSError, IndexError, ValueError):
        return None


def parents() -> dict[int, int | None]:
    """pid -> parent pid of every process now."""
    return {int(p.name): _proc_stat_parent(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    # The kernel's list of each thread's children: a few reads, where scanning every process of
    # the machine twice a second cost the supervising process 1-2 % of a core. The scan remains
    # for kernels without the list.
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return [child for child, parent in parents().items() if parent == pid]


def process_tree(root: int) -> list[int]:
    """root and every process below it."""
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children(pid))
    return tree


def cmdline(pid: int) -> list[str]:
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def gpu_memory_mb(pids: list[int]) -> dict[int, float] | None:
    """GPU memory used by each of `pids` (nvidia-smi); None without a GPU driver."""
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        return None
    used: dict[int, float] = {}
    for line in result.stdout.splitlines():
        pid, _, mb = line.partition(",")
        if pid.strip().isdigit() and int(pid) in pids:
            used[int(pid)] = used.get(int(pid), 0.0) + float(mb)
    return used


def tree_memory(root: int, names: dict[int, str]) -> dict:
    """Resident memory of `root` and every process below it, in MB: RSS, and PSS (pages shared
    between processes counted once); per named process (`names`: pid -> name) its RSS; GPU
    memory per process where nvidia-smi answers."""
    pids = process_tree(root)
    result = dict(
        processes=len(pids),
        rss_mb=round(sum(status_kb(p, "VmRSS") for p in pids) / 1024, 1),
        pss_mb=round(sum(pss_kb(p) for p in pids) / 1024, 1),
    )
    gpu = gpu_memory_mb(pids)
    if gpu is not None:
        result["gpu_mb"] = {names.get(pid, str(pid)): mb for pid, mb in gpu.items()}
    return result


def tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and every process below it, in MB: a few small reads, where
    tree_memory also reads each process's page map for PSS (tens of ms)."""
    return round(sum(status_kb(p, "VmRSS") for p in process_tree(root)) / 1024, 1)
