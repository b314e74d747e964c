"""bench/gpu.py: nvidia-smi's samples become each GPU's mean utilisation over a level."""

import shutil

from bench.gpu import GpuSampler, gpu_busy, mean_utilisation


def test_each_gpus_samples_are_averaged_in_index_order_and_broken_lines_skipped():
    # What `nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader,nounits --loop-ms=N`
    # prints: one line per GPU per sample; the last one cut where sampling was stopped.
    text = "0, 40\n1, 90\n0, 44\n1, [N/A]\n0, 42\n1, 80\n0"
    assert mean_utilisation(text) == [42.0, 85.0]
    assert mean_utilisation("") is None


def test_a_level_gets_the_gpus_busy_share_only_where_it_was_measured():
    level = {"throughput": 10.0}
    assert gpu_busy(level, None) == level
    assert gpu_busy(level, [41.0, 3.5]) == {"throughput": 10.0, "gpu_busy_percent": [41.0, 3.5]}


def test_the_sampler_reads_every_gpu_nvidia_smi_sees_or_nothing_without_it():
    with GpuSampler(interval_ms=100) as gpus:
        pass
    if shutil.which("nvidia-smi") is None:
        assert gpus.process is None and gpus.percent is None
    else:
        assert gpus.percent is not None and all(0 <= p <= 100 for p in gpus.percent)
