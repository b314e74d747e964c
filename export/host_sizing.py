"""How many instances each host-side stage gets, and how many threads each tokenizer instance.

On a GPU the model is cheap and the host is the bound: every Python stage (tokenizer, BLS) is a
process of its own, and every instance whose thread pool is the size of the machine competes with
the thread that launches full_model's kernels. So on a GPU host the stages share the cores out:
most of them to single-threaded tokenizer instances (the costliest step per text until its ASCII
fast path; not re-sized since), five sixteenths to BLS instances taking batches of up to 512
texts, and three eighths to full_model instances per GPU, each of which is one host thread
launching kernels one after another (on an H200 with 16 cores, 6 full_model instances served
v2's batches of 32 1.3-1.4x faster than 4, and 5 BLS instances v1's 1.25x faster than 4; as
the default export on H100s, v2 105,000-133,000 texts/s and v1 32,847; docs/gpu_serving.md). full_model
takes batches of up to 256 texts, since its time per execution grows far slower than its texts
(on the H200: 3.7 ms for 32 texts, 14.6 ms for 254). On the CPU the stages keep the layout
measured best on two cores (docs/benchmarks.md): one tokenizer with the library's own thread
pool, one BLS, two single-threaded full_model instances.

The counts are for the machine that serves; `moe export` sizes for the machine it runs on unless
told `--host-cores`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class HostStages:
    tokenizer_instances: int
    tokenizer_threads: int  # 0: the tokenizers library's default pool (one thread per core)
    postprocessing_instances: int
    bls_instances: int
    # Texts per BLS execution: 512 on a GPU. Each of v1's round trips costs the BLS about the
    # same however many texts it carries, so larger batches pay fewer of them per text: 256
    # doubled v1's throughput against 64, and on an H100 512 served batches of 32 1.13x (64
    # connections) and 1.44x (256) faster than 256 (docs/gpu_serving.md).
    bls_max_batch: int
    full_model_instances: int  # per GPU on a GPU
    full_model_max_batch: int  # texts per full_model execution
    # Threads of Triton's HTTP front end, which parse every request and write every answer: on a
    # GPU host twice the cores (on an H100's 16 cores, 32 served single texts 14-17 % faster than
    # Triton's default of 8; docs/gpu_serving.md); 0 keeps Triton's default (the CPU).
    http_threads: int


def host_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def size_host_stages(device: str, cores: int, max_batch_size: int) -> HostStages:
    if device == "cpu":
        return HostStages(
            tokenizer_instances=1,
            tokenizer_threads=0,
            postprocessing_instances=1,
            bls_instances=1,
            bls_max_batch=max_batch_size,
            full_model_instances=2,
            full_model_max_batch=max_batch_size,
            http_threads=0,
        )
    return HostStages(
        tokenizer_instances=max(1, cores * 3 // 4),
        tokenizer_threads=1,
        postprocessing_instances=max(1, cores // 8),
        bls_instances=max(1, cores * 5 // 16),
        bls_max_batch=max(max_batch_size, 512),
        full_model_instances=max(2, cores * 3 // 8),
        full_model_max_batch=max(max_batch_size, 256),
        http_threads=2 * cores,
    )
