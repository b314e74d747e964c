"""Host CPU per single-text request, by serving stage: the same test texts sent by wrk, one per
request, to the health endpoint, the tokenizer, full_model (the texts' token ids) and v2's
ensemble (moe_v2), each for SECONDS from C connections, on a server started here. For each
endpoint: requests answered per second and CPU milliseconds per request of tritonserver, each
Python stub, wrk and the whole host.

    .venv/bin/python scripts/stage_cpu.py build --concurrency 4 --seconds 8 --out stage_cpu.json

moe_v2's cost less the tokenizer's and full_model's is what the ensemble adds (one more request
through tritonserver's scheduler, the hand-overs between its steps); the health endpoint's is the
HTTP front end's floor. Answers are checked for status only: `moe bench` checks labels.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

from tokenizers import Tokenizer

from bench.host import host_busy_seconds
from bench.wrk import available, compact, default_threads, run_wrk
from moe.data import DEFAULT_DATA, load_split
from moe.errors import MoEError
from serving.processes import cpu_seconds, process_tree
from serving.server import ServerOptions, TritonServer, free_ports, repositories

ENDPOINTS = ("health", "tokenizer", "full_model", "moe_v2")
# Posts the bodies in turn and counts answers that are not 200: each thread's count is summed in done().
SCRIPT = r"""
local bodies, i, threads = {}, 0, {}
failed = 0
function setup(thread) threads[#threads + 1] = thread end
function init(args)
  for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request() i = i % #bodies + 1; return wrk.format(nil, nil, nil, bodies[i]) end
function response(status, headers, body) if status ~= 200 then failed = failed + 1 end end
function done(summary, latency, requests)
  local f = 0
  for _, t in ipairs(threads) do f = f + (t:get("failed") or 0) end
  io.write(string.format('WRK_RESULT {"requests":%.0f,"duration_us":%.0f,"failed":%.0f,"p50_us":%.0f}\n',
    summary.requests, summary.duration, f, latency:percentile(50)))
end
"""
HEALTH_SCRIPT = r"""
function done(summary, latency, requests)
  io.write(string.format('WRK_RESULT {"requests":%.0f,"duration_us":%.0f,"failed":%.0f,"p50_us":%.0f}\n',
    summary.requests, summary.duration, summary.errors.status, latency:percentile(50)))
end
"""


def text_body(text: str) -> str:
    return compact({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]})


def ids_body(tokenizer: Tokenizer, text: str) -> str:
    """full_model's request for one text as the tokenizer hands it over (its own length, no padding)."""
    ids = tokenizer.encode(text).ids
    return compact(
        {
            "inputs": [
                {"name": "INPUT__0", "shape": [1, len(ids)], "datatype": "INT64", "data": ids},
                {"name": "INPUT__1", "shape": [1, len(ids)], "datatype": "BOOL", "data": [True] * len(ids)},
            ]
        }
    )


def process_cpu(server: TritonServer) -> dict[str, float]:
    """CPU seconds so far of tritonserver and of each Python stub, by model."""
    names = {pid: name for name, pid in server.stubs().items()}
    out: dict[str, float] = {}
    for pid in process_tree(server.process.pid):
        name = "tritonserver" if pid == server.process.pid else names.get(pid, "other")
        out[name] = out.get(name, 0.0) + cpu_seconds(pid)
    return out


def measure(server: TritonServer, endpoint: str, bodies: Path, connections: int, seconds: float) -> dict:
    if endpoint == "health":
        path, script = "/v2/health/ready", HEALTH_SCRIPT
    else:
        path, script = f"/v2/models/{endpoint}/infer", SCRIPT
    env = {"WRK_BODIES": str(bodies)}
    threads = default_threads(connections)
    run_wrk(server.http_url, path, script, connections, 1.0, threads, env)  # warm-up, untimed
    cpu0, host0, load0 = process_cpu(server), host_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out = run_wrk(server.http_url, path, script, connections, seconds, threads, env)
    cpu1, host1, load1 = process_cpu(server), host_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if out["failed"]:
        raise MoEError(f"{endpoint}: {out['failed']} answers were not 200")
    n = max(out["requests"], 1)
    per_request = {name: round(1e3 * (cpu1[name] - cpu0.get(name, 0.0)) / n, 3) for name in cpu1}
    load = (load1.ru_utime + load1.ru_stime) - (load0.ru_utime + load0.ru_stime)
    return dict(
        endpoint=endpoint,
        requests_per_s=round(n / (out["duration_us"] / 1e6), 1),
        p50_ms=round(out["p50_us"] / 1e3, 3),
        host_cpu_ms_per_request=round(1e3 * (host1 - host0) / n, 3),
        wrk_cpu_ms_per_request=round(1e3 * load / n, 3),
        cpu_ms_per_request={k: v for k, v in per_request.items() if v > 0},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path, help="an export (moe export --out)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--texts", type=int, default=400, help="the first N test texts, in turn")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not available():
        raise SystemExit("wrk is not installed: `make setup` installs it")
    texts = load_split(args.data, "test").texts[: args.texts]
    model_repository = next(r for r in repositories(args.repository) if (r / "tokenizer").is_dir())
    tokenizer = Tokenizer.from_file(str(model_repository / "tokenizer" / "1" / "tokenizer.json"))
    tokenizer.no_padding()
    http_port, grpc_port, metrics_port = free_ports(3)
    server = TritonServer(
        ServerOptions(repository=args.repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    ).start()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="moe-stage-") as tmp:
            for endpoint in args.endpoints.split(","):
                bodies = Path(tmp) / f"{endpoint}.txt"
                make = (lambda t: ids_body(tokenizer, t)) if endpoint == "full_model" else text_body
                bodies.write_text("".join(make(t) + "\n" for t in texts))
                rows.append(measure(server, endpoint, bodies, args.concurrency, args.seconds))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
        server.cleanup()
    if args.out:
        args.out.write_text(json.dumps(dict(concurrency=args.concurrency, seconds=args.seconds, rows=rows), indent=1))


if __name__ == "__main__":
    main()
