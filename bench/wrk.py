"""wrk, a compiled HTTP load generator, driving the KServe v2 JSON endpoint with real test texts.

A Python load generator tops out near two thousand requests a second on one core, below what a
GPU server answers; wrk (C, LuaJIT, an event loop per thread) sends tens of thousands. Each
request is a KServe v2 JSON body of one level's texts with an `id`, which Triton echoes in its
answer; the Lua script compares every answer's LABEL_ID and LABEL with the eager model's for
that id, so every answer is checked, not a sample. Each level also measures wrk's own ceiling on
the same connections: `/v2/health/ready`, which the server answers without running a model. A
level whose rate comes near that ceiling was bounded by the client (or the HTTP front end), not
by the models.

Debian's `wrk` package; `make setup` installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.gpu import GpuSampler, gpu_busy
from bench.host import host_busy_seconds, host_cpu
from moe.errors import MoEError

# Answers within this share of the health endpoint's rate were bounded by the load generator
# and the HTTP front end rather than by the models.
CLIENT_BOUND_SHARE = 0.8
RESULT_MARK = "WRK_RESULT "

# One Lua state per wrk thread: each loads the bodies and expected answers, sends them in turn
# (threads start at different offsets) and checks every answer; done() sums the threads.
SCRIPT = r"""
local bodies, expected_ids, expected_labels, i = {}, {}, {}, 0
local threads = {}
-- Globals, so that done() reads them from each thread's state (thread:get).
checked, wrong, failed, first_wrong, first_failed = 0, 0, 0, "", ""

local function lines(path)
  local t = {}
  for line in io.lines(path) do t[#t + 1] = line end
  return t
end

function setup(thread)
  thread:set("offset", #threads * 7919)
  threads[#threads + 1] = thread
end

function init(args)
  bodies = lines(os.getenv("WRK_BODIES"))
  for n, line in ipairs(lines(os.getenv("WRK_EXPECTED"))) do
    local ids, labels = line:match("^(.-)\t(.*)$")
    expected_ids[n - 1], expected_labels[n - 1] = ids, labels
  end
  i = (offset or 0) % #bodies
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end

function response(status, headers, body)
  if status ~= 200 then
    failed = failed + 1
    if first_failed == "" then first_failed = (status .. " " .. body:sub(1, 300)):gsub("%c", " ") end
    return
  end
  checked = checked + 1
  local id = tonumber(body:match('"id":"(%d+)"'))
  local ids = body:match('"name":"LABEL_ID".-"data":(%b[])')
  local labels = body:match('"name":"LABEL".-"data":(%b[])')
  if id == nil or ids ~= expected_ids[id] or labels ~= expected_labels[id] then
    wrong = wrong + 1
    if first_wrong == "" then
      first_wrong = (tostring(id) .. "|" .. tostring(ids) .. "|" .. tostring(labels)):gsub("%c", " ")
    end
  end
end

function done(summary, latency, requests)
  local t = {checked = 0, wrong = 0, failed = 0, first_wrong = "", first_failed = ""}
  for _, thread in ipairs(threads) do
    for _, k in ipairs({"checked", "wrong", "failed"}) do t[k] = t[k] + (thread:get(k) or 0) end
    for _, k in ipairs({"first_wrong", "first_failed"}) do
      if t[k] == "" then t[k] = thread:get(k) or "" end
    end
  end
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%.0f,"duration_us":%.0f,"connect_errors":%.0f,"read_errors":%.0f,"write_errors":%.0f,' ..
    '"status_errors":%.0f,"timeouts":%.0f,"p50_us":%.0f,"p95_us":%.0f,"p99_us":%.0f,"mean_us":%.1f,"max_us":%.0f,' ..
    '"checked":%.0f,"wrong":%.0f,"failed":%.0f,"first_wrong":%q,"first_failed":%q}\n',
    "RESULT_MARK", summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.max,
    t.checked, t.wrong, t.failed, t.first_wrong, t.first_failed))
end
""".replace("RESULT_MARK", RESULT_MARK)

# The ceiling run needs no bodies and checks nothing but the status.
CEILING_SCRIPT = r"""
function done(summary, latency, requests)
  io.write(string.format('%s{"requests":%.0f,"duration_us":%.0f,"status_errors":%.0f}\n',
    "RESULT_MARK", summary.requests, summary.duration, summary.errors.status))
end
""".replace("RESULT_MARK", RESULT_MARK)


def available() -> bool:
    return shutil.which("wrk") is not None


def compact(value) -> str:
    """JSON as Triton writes it (no spaces), so the Lua script compares answers as strings."""
    return json.dumps(value, separators=(",", ":"))


def request_body(request_id: int, texts: list[str]) -> str:
    return compact(
        {
            "id": str(request_id),
            "inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}],
            "outputs": [{"name": "LABEL"}, {"name": "LABEL_ID"}],
        }
    )


def default_threads(connections: int) -> int:
    """A wrk thread per four cores (wrk shares the machine with the server), at most one per
    connection."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(connections, cores // 4))


def parse(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise MoEError(f"wrk printed no result:\n{stdout[-2000:]}")


def run_wrk(url: str, path: str, script: str, connections: int, seconds: float, threads: int, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="moe-wrk-") as tmp:
        script_file = Path(tmp) / "script.lua"
        script_file.write_text(script)
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "60s",
            "-s",
            str(script_file),
            f"http://{url}{path}",
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, **env}, timeout=seconds + 120, check=False
        )
    if done.returncode != 0:
        raise MoEError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return parse(done.stdout)


def ceiling(url: str, connections: int, seconds: float = 3.0, threads: int | None = None) -> float:
    """Requests per second wrk gets from /v2/health/ready on these connections."""
    threads = threads or default_threads(connections)
    out = run_wrk(url, "/v2/health/ready", CEILING_SCRIPT, connections, seconds, threads, {})
    if out["status_errors"]:
        raise MoEError(f"{url}/v2/health/ready answered {out['status_errors']} errors: is the server ready?")
    return out["requests"] / max(out["duration_us"] / 1e6, 1e-9)


def run_level(
    url: str,
    model: str,
    requests: list[list[str]],
    expected: list[tuple[list[int], list[str]]],
    connections: int,
    seconds: float,
    threads: int | None = None,
) -> dict:
    """Send `requests` (texts per request, in turn, for `seconds`) to `model` from `connections`
    keep-alive connections; every answer checked against `expected` (label ids, labels).

    Returns the summary `moe bench` keeps per level (rates, latency percentiles, errors) and
    `disagreements`: answers whose labels differ from the expected ones."""
    if len(requests) != len(expected):
        raise MoEError("wrk: one expected answer per request")
    threads = threads or default_threads(connections)
    with tempfile.TemporaryDirectory(prefix="moe-wrk-") as tmp:
        bodies, answers = Path(tmp) / "bodies.txt", Path(tmp) / "expected.txt"
        bodies.write_text("".join(request_body(i, texts) + "\n" for i, texts in enumerate(requests)))
        answers.write_text("".join(f"{compact(ids)}\t{compact(labels)}\n" for ids, labels in expected))
        env = {"WRK_BODIES": str(bodies), "WRK_EXPECTED": str(answers)}
        out = run_wrk(url, f"/v2/models/{model}/infer", SCRIPT, connections, seconds, threads, env)
    texts_per_request = sum(map(len, requests)) / len(requests)
    elapsed = out["duration_us"] / 1e6
    answered = out["checked"]
    errors = out["failed"] + out["connect_errors"] + out["read_errors"] + out["write_errors"] + out["timeouts"]
    messages = {}
    if out["failed"]:
        messages[first_line(out["first_failed"])] = out["failed"]
    for kind in ("connect_errors", "read_errors", "write_errors", "timeouts"):
        if out[kind]:
            messages[f"wrk: {kind}"] = out[kind]
    return dict(
        requests=out["requests"],
        texts=round(out["requests"] * texts_per_request),
        seconds=round(elapsed, 3),
        requests_per_s=round(answered / max(elapsed, 1e-9), 2),
        throughput=round(answered * texts_per_request / max(elapsed, 1e-9), 2),
        p50_ms=round(out["p50_us"] / 1e3, 3),
        p95_ms=round(out["p95_us"] / 1e3, 3),
        p99_ms=round(out["p99_us"] / 1e3, 3),
        mean_ms=round(out["mean_us"] / 1e3, 3),
        errors=errors,
        error_messages=messages,
        checked=answered,
        untimed=0,
        disagreements=out["wrong"],
        agreement_with_eager=round(1 - out["wrong"] / answered, 4) if answered else None,
        first_disagreement=describe_disagreement(out["first_wrong"], requests, expected),
        threads=threads,
    )


def describe_disagreement(wrong: str, requests: list[list[str]], expected) -> dict | None:
    """The first answer unlike the expected one, as the Lua script saw it ("id|label ids|labels"),
    with the texts of the request whose labels differ."""
    if not wrong:
        return None
    request_id, ids, labels = wrong.split("|", 2)
    detail = dict(request=request_id, answered_ids=ids[:2000], answered_labels=labels[:2000])
    try:
        answered, index = json.loads(ids), int(request_id)
        want_ids, want_labels = expected[index]
        detail["differing"] = [
            dict(text=requests[index][k][:200], answered=answered[k], expected=[want_ids[k], want_labels[k]])
            for k in range(min(len(answered), len(want_ids)))
            if answered[k] != want_ids[k]
        ][:10]
    except (ValueError, IndexError, TypeError):
        pass  # an answer without a readable id or label ids: the raw fields say what came back
    return detail


def first_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)[:200]


def bench_level(
    url: str,
    model: str,
    requests: list[list[str]],
    labels: list[list[str]],
    class_names: list[str],
    connections: int,
    seconds: float,
    ceilings: dict[int, float],
) -> dict:
    """One `moe bench` level, warmed up (`warm_up`): the timed run, wrk's CPU per request, and
    the ceiling of these connections (measured once per connection count, kept in `ceilings`)."""
    import resource

    expected = expected_answers(labels, class_names)
    if connections not in ceilings:
        ceilings[connections] = ceiling(url, connections)
    with GpuSampler() as gpus:
        cpu0, host0, wall0 = resource.getrusage(resource.RUSAGE_CHILDREN), host_busy_seconds(), time.monotonic()
        level = run_level(url, model, requests, expected, connections, seconds)
        cpu1, host1, wall1 = resource.getrusage(resource.RUSAGE_CHILDREN), host_busy_seconds(), time.monotonic()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    rate = level["requests_per_s"]
    level = gpu_busy(host_cpu(level, host1 - host0, wall1 - wall0, level["requests"]), gpus.percent)
    return dict(
        level,
        load_cpu_ms_per_request=round(1e3 * cpu / max(level["requests"], 1), 3),
        load_cpu_share=round(cpu / max(level["seconds"], 1e-9), 3),
        load_ceiling_requests_per_s=round(ceilings[connections], 1),
        client_bound=rate >= CLIENT_BOUND_SHARE * ceilings[connections],
    )


def expected_answers(labels: list[list[str]], class_names: list[str]) -> list[tuple[list[int], list[str]]]:
    return [([class_names.index(x) for x in want], want) for want in labels]


def warm_up(url: str, model: str, requests: list[list[str]], labels, class_names, connections: int) -> None:
    """A second of the level's own load, untimed (its answers are checked all the same)."""
    run_level(url, model, requests, expected_answers(labels, class_names), connections, 1.0)
