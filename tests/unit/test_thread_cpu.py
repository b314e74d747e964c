"""thread_cpu.py's arithmetic: CPU seconds per thread become cores per thread name."""

import importlib.util
import os
import threading
import time
from pathlib import Path

from bench.host import host_busy_seconds
from serving.processes import thread_cpu_seconds

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu" / "thread_cpu.py"
spec = importlib.util.spec_from_file_location("thread_cpu", SCRIPT)
thread_cpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(thread_cpu)


def test_numbered_threads_are_one_group_and_a_new_thread_counts_all_its_seconds():
    before = {1: ("tritonserver", 0.0), 2: ("worker-1", 10.0), 3: ("worker-2", 0.0)}
    after = {1: ("tritonserver", 1.0), 2: ("worker-1", 12.0), 3: ("worker-2", 2.0)}
    after[4] = ("worker-3", 2.0)  # started between the samples
    record = thread_cpu.window(before, after, seconds=2.0)
    groups = {g["name"]: g for g in record["by_thread_name"]}
    assert groups["worker-#"] == {"name": "worker-#", "threads": 3, "cores": 3.0}
    assert groups["tritonserver"]["cores"] == 0.5
    assert record["process_cores"] == 3.5
    assert record["by_thread_name"][0]["name"] == "worker-#"


def spin_until(stop: float) -> None:
    while time.monotonic() < stop:
        pass


def test_a_spinning_thread_of_this_process_is_seen_busy():
    worker = threading.Thread(target=spin_until, args=(time.monotonic() + 2.0,), name="spinner")
    worker.start()
    before, t0 = thread_cpu_seconds(os.getpid()), time.monotonic()
    time.sleep(1.0)  # sampled while it runs: a finished thread leaves /proc with its seconds
    record = thread_cpu.window(before, thread_cpu_seconds(os.getpid()), time.monotonic() - t0)
    worker.join()
    assert record["process_cores"] > 0.5, record


def test_the_host_counts_a_spinning_thread_busy():
    worker = threading.Thread(target=spin_until, args=(time.monotonic() + 1.5,))
    worker.start()
    busy0, t0 = host_busy_seconds(), time.monotonic()
    time.sleep(1.0)
    cores = (host_busy_seconds() - busy0) / (time.monotonic() - t0)
    worker.join()
    assert 0.5 < cores <= 1.05 * os.cpu_count()
