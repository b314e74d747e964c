"""Where the CPU goes under load: a server on free ports, a closed loop of single texts, and the
CPU time of tritonserver, each Python stub and this client process over the timed requests.

    .venv/bin/python scripts/cpu_share.py build --workflow v2 --concurrency 64 [--torch-threads 1]
        [--load-client raw|moe_client]

What found that v2 was bound by one thread of tritonserver while the machine had a core to
spare (docs/benchmarks.md, "Choices").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from bench.load import batches, closed_loop
from bench.raw_http import RawHttpClient
from moe.data import DEFAULT_DATA, load_split
from moe_client import AsyncMoEClient
from serving.processes import cpu_seconds, process_tree
from serving.server import ServerOptions, TritonServer, free_ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path)
    parser.add_argument("--workflow", default="v2", choices=["v1", "v2"])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument(
        "--load-client", default="raw", choices=["raw", "moe_client"], help="as `moe bench --load-client`"
    )
    parser.add_argument("--data", default=DEFAULT_DATA)
    args = parser.parse_args()
    texts = load_split(args.data, "test").texts
    http_port, grpc_port, metrics_port = free_ports(3)
    server = TritonServer(
        ServerOptions(
            repository=args.repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            torch_threads=args.torch_threads,
        )
    ).start()

    async def load(n: int):
        busy = [(args.workflow, t) for t in batches(texts, 1, args.concurrency, start=n)]
        client = (
            RawHttpClient(server.http_url) if args.load_client == "raw" else AsyncMoEClient(server.http_url, retries=0)
        )
        async with client:
            return await closed_loop(
                client, [(args.workflow, t) for t in batches(texts, 1, n)], args.concurrency, keep_busy=busy
            )

    try:
        asyncio.run(load(args.warmup))
        pids = process_tree(server.process.pid)
        names = {pid: name for name, pid in server.stubs().items()} | {server.process.pid: "tritonserver"}
        before = {pid: cpu_seconds(pid) for pid in pids}
        me_before, started = sum(os.times()[:2]), time.monotonic()
        result = asyncio.run(load(args.requests)).summary()
        seconds = time.monotonic() - started
        after = {pid: cpu_seconds(pid) for pid in pids}
        me_after = sum(os.times()[:2])
    finally:
        server.stop()
        server.cleanup()
    print(
        f"{args.workflow}, concurrency {args.concurrency}, torch threads {args.torch_threads}, "
        f"{args.load_client} client: "
        f"{result['throughput']:.1f} texts/s, p50 {result['p50_ms']:.2f} ms, errors {result['errors']}"
    )
    for pid in pids:
        print(f"  {names.get(pid, str(pid)):16s} {100 * (after[pid] - before[pid]) / seconds:6.1f} % of a core")
    print(f"  {'client':16s} {100 * (me_after - me_before) / seconds:6.1f} % of a core")


if __name__ == "__main__":
    main()
