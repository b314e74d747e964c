"""Kill a model's Python stub under steady v1 and v2 traffic and record what clients see.

    .venv/bin/python scripts/fault_drill.py [--repository build] [--victims moe_bls,tokenizer]

For each victim: a fresh server, 4 client threads (2 on moe_v1, 2 on moe_v2) sending batches of
8 real texts for `--seconds`, the victim's stub SIGKILLed after 3 s. Prints (and writes with
--json-out) per workflow: requests, errors, the slowest failed request, the first and last error
after the kill, when v1 answered correctly again, and the error messages seen.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpc

from export.repository import DEFAULT_OUT
from moe.data import DEFAULT_DATA, load_split
from serving.server import ServerOptions, TritonServer, free_ports


def drill(repository: Path, victim: str, texts: list[str], seconds: float) -> dict:
    http_port, grpc_port, metrics_port = free_ports(3)
    server = TritonServer(
        ServerOptions(repository=repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    ).start()
    client = grpc.InferenceServerClient(server.grpc_url)
    batch = np.array([[t.encode()] for t in texts[:8]], dtype=object)
    events, stop = [], threading.Event()

    def traffic(model):
        while not stop.is_set():
            inp = grpc.InferInput("TEXT", [len(batch), 1], "BYTES")
            inp.set_data_from_numpy(batch)
            start = time.monotonic()
            try:
                client.infer(model, [inp], client_timeout=60)
                error = None
            except Exception as e:  # noqa: BLE001 - recorded
                error = str(e).splitlines()[0][:160]
            events.append((model, start, time.monotonic(), error))

    threads = [threading.Thread(target=traffic, args=(m,)) for m in ("moe_v1", "moe_v1", "moe_v2", "moe_v2")]
    for t in threads:
        t.start()
    time.sleep(3)
    killed_at = time.monotonic()
    os.kill(server.stubs()[victim], signal.SIGKILL)
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    client.close()
    restarts = list(server.restarts)
    server.stop()
    server.cleanup()
    report = {"victim": victim, "reloaded_by_supervisor": victim in restarts}
    for model in ("moe_v1", "moe_v2"):
        mine = [e for e in events if e[0] == model]
        after = [e for e in mine if e[2] >= killed_at]
        failed = [e for e in after if e[3]]
        last_error_end = max((e[2] for e in failed), default=None)
        recovered = min((e[2] for e in after if not e[3] and last_error_end and e[1] > last_error_end), default=None)
        report[model] = {
            "requests_after_kill": len(after),
            "errors": len(failed),
            "slowest_failed_request_s": round(max((e[2] - e[1] for e in failed), default=0.0), 3),
            "first_error_after_kill_s": round(min(e[2] for e in failed) - killed_at, 3) if failed else None,
            "answering_again_after_kill_s": round(recovered - killed_at, 3) if recovered else None,
            "messages": sorted({e[3] for e in failed}),
        }
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--victims", default="moe_bls,tokenizer")
    parser.add_argument("--seconds", type=float, default=12.0, help="traffic after the kill")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    texts = load_split(args.data, "test").texts
    reports = [drill(args.repository, v, texts, args.seconds) for v in args.victims.split(",")]
    text = json.dumps(reports, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
