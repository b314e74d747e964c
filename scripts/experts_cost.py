"""What one layer's experts cost, served and in process: the eight expert models of an exported
repository on chunks of a single text's size, one after the other on one thread in this
process, and served through the `experts` ensemble (and alone) from a client at concurrency 1.

    .venv/bin/python scripts/experts_cost.py build/bench/repository [--tokens 12,8,10,6,14,9,11,10]

What showed that v1's experts stage at concurrency 1 is the experts' compute, not the ensemble
(docs/benchmarks.md, "Why the missed targets are missed").
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import tritonclient.http as http

from serving.server import ServerOptions, TritonServer, free_ports


def p50_ms(fn, repeats: int = 300, warmup: int = 30) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path, help="an exported repository (moe export --out)")
    parser.add_argument("--tokens", default="12,8,10,6,14,9,11,10", help="tokens per expert")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    models = args.repository / "model_repository"
    sizes = [int(n) for n in args.tokens.split(",")]
    experts = [torch.jit.load(str(models / f"expert_{e}" / "1" / "model.pt")) for e in range(len(sizes))]
    d_model = next(experts[0].parameters()).shape[1]  # fc1's weight: [d_ff, d_model]
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((n, d_model)).astype(np.float32) for n in sizes]
    layer = np.zeros(1, dtype=np.int64)

    torch.set_num_threads(1)
    torch._C._jit_set_profiling_executor(False)  # as served: ENABLE_JIT_PROFILING false

    def in_process():
        with torch.inference_mode():
            for expert, chunk in zip(experts, chunks):
                expert(torch.from_numpy(chunk), torch.from_numpy(layer))

    http_port, grpc_port, metrics_port = free_ports(3)
    server = TritonServer(
        ServerOptions(repository=args.repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    ).start()
    try:
        client = http.InferenceServerClient(server.http_url)

        def tensor(name, array, datatype):
            t = http.InferInput(name, list(array.shape), datatype)
            t.set_data_from_numpy(array, binary_data=True)
            return t

        def ensemble(parts):
            inputs = [tensor(f"H_{e}", a, "FP32") for e, a in enumerate(parts)] + [tensor("LAYER", layer, "INT64")]
            outputs = [http.InferRequestedOutput(f"OUT_{e}", binary_data=True) for e in range(len(parts))]
            client.infer("experts", inputs, outputs=outputs)

        def one(e):
            inputs = [tensor("INPUT__0", chunks[e], "FP32"), tensor("INPUT__1", layer, "INT64")]
            client.infer(f"expert_{e}", inputs, outputs=[http.InferRequestedOutput("OUTPUT__0", binary_data=True)])

        empty = [np.zeros((0, d_model), np.float32) for _ in sizes]
        cases = {
            "in process, one thread, the experts one after the other": in_process,
            "served: the experts ensemble, every expert busy": lambda: ensemble(chunks),
            "served: the experts ensemble, every chunk empty": lambda: ensemble(empty),
            f"served: expert_0 alone on {sizes[0]} tokens": lambda: one(0),
        }
        for r in range(args.rounds):
            for name, fn in cases.items():
                print(f"round {r + 1}  {name}: p50 {p50_ms(fn):.3f} ms", flush=True)
    finally:
        server.stop()
        server.cleanup()


if __name__ == "__main__":
    main()
