"""Under load, overload, faults and hostile input, and with secure defaults."""

import asyncio
import concurrent.futures
import json
import os
import signal
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from bench.baseline import eager_labels
from bench.load import closed_loop, mixed_plan
from export.repository import ExportOptions, export_repository
from moe.data import load_split
from moe_client import AsyncMoEClient

from ..conftest import ADMIN_KEY, start_server
from .test_serving import classify, text_input

LABELS = {b"World", b"Sports", b"Business", b"Sci/Tech"}
PROBE = ["Oil prices climb as the dollar weakens", "Federer reaches the final in Melbourne"]


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120, concurrency=8)
    yield client
    client.close()


def test_load_mixed_workflows_every_answer_checked(server, tiny_checkpoint, data_dir):
    texts = load_split(data_dir, "test").texts[:400]
    labels = eager_labels(tiny_checkpoint, texts)
    plan = mixed_plan(texts, requests=300)

    async def run():
        async with AsyncMoEClient(server.grpc_url, protocol="grpc", retries=0) as client:
            return await closed_loop(client, plan, concurrency=16)

    result = asyncio.run(run())
    summary = result.summary()
    assert summary["errors"] == 0, summary["error_messages"]
    assert result.wrong_answers(plan, labels) == 0
    assert summary["requests"] == 300 and summary["texts"] > 300
    assert {w for w, _ in plan} == {"v1", "v2"} and None not in result.answers


# --- faults --------------------------------------------------------------------------------


@pytest.fixture()
def own_server(tiny_repository):
    s = start_server(tiny_repository)
    yield s
    if s.process.poll() is not None:  # it died under the test: its log says why (shown on failure)
        print(f"tritonserver exited with {s.process.returncode}; its log ends:\n{s.log_text()[-4000:]}")
    s.stop()
    s.cleanup()


# The Python models are the only processes besides tritonserver (TorchScript runs inside it):
# the BLS (v1 only) and the tokenizer (both workflows).
@pytest.mark.parametrize("victim", ["moe_bls", "tokenizer"])
def test_a_killed_stub_fails_fast_then_recovers(own_server, victim):
    client = grpcclient.InferenceServerClient(own_server.grpc_url)  # thread-safe, unlike HTTP's
    expected = classify(client, "moe_v1", PROBE, module=grpcclient)["PROBS"]
    texts = PROBE * 8

    def timed(model):
        start = time.monotonic()
        try:
            return classify(client, model, texts, module=grpcclient), time.monotonic() - start
        except InferenceServerException as e:
            return e, time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        inflight = [pool.submit(timed, "moe_v1") for _ in range(4)]
        os.kill(own_server.stubs()[victim], signal.SIGKILL)
        during = [pool.submit(timed, "moe_v1") for _ in range(4)] + [f.result() for f in inflight]
        during = [d.result() if hasattr(d, "result") else d for d in during]
    for outcome, seconds in during:
        assert seconds < 15, "a request hung after the stub died"
        if isinstance(outcome, InferenceServerException):
            # The stub's death, or (while the model reloads) the pipeline being unavailable.
            clear = ("not healthy", "unavailable", "no available versions", "error when running inference")
            assert any(c in str(outcome).lower() for c in clear), str(outcome)
    if victim != "tokenizer":
        assert classify(client, "moe_v2", PROBE, module=grpcclient)["LABEL"].shape == (2, 1)
    deadline = time.monotonic() + 60
    while True:
        try:
            recovered = classify(client, "moe_v1", PROBE, module=grpcclient)["PROBS"]
            break
        except InferenceServerException:
            assert time.monotonic() < deadline, "v1 did not recover"
            time.sleep(0.5)
    np.testing.assert_allclose(recovered, expected, atol=1e-6)
    assert victim in own_server.restarts
    client.close()


# --- overload --------------------------------------------------------------------------------


def test_overload_is_rejected_fast_and_clearly(tiny_checkpoint, tmp_path):
    repo = export_repository(
        tiny_checkpoint,
        tmp_path / "small_queues",
        progress=False,
        log=lambda *_: None,
        opts=ExportOptions(max_queue_size=2, queue_timeout_us=10_000_000),
    )
    server = start_server(repo)
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        texts = [("Markets slide as investors fear higher rates. " * 6)] * 32

        def one(kwargs):
            try:
                result = client.infer("moe_v1", [text_input(texts, grpcclient)], **kwargs)
                return result.as_numpy("LABEL")
            except InferenceServerException as e:
                return e

        def burst(n, **kwargs):
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                outcomes = list(pool.map(one, [kwargs] * n))
            errors = [str(o) for o in outcomes if isinstance(o, InferenceServerException)]
            answers = [o for o in outcomes if not isinstance(o, InferenceServerException)]
            assert all(set(a.reshape(-1)) <= LABELS for a in answers)
            return errors, answers

        # A flood far past the queue's 2 places: rejected at once, the rest answered.
        errors, answers = burst(96)
        assert answers and any("queue size" in e for e in errors), errors[:3]
        assert all("queue size" in e for e in errors), errors[:3]
        # A per-request timeout of 1 us: requests that have to wait in the queue are rejected.
        timeouts = []
        for _ in range(20):
            errors, _ = burst(3, timeout=1)
            assert all("queue size" in e or "timeout" in e.lower() for e in errors), errors[:3]
            timeouts += [e for e in errors if "timeout" in e.lower()]
            if timeouts:
                break
        assert timeouts, "no request was rejected for its timeout"
        assert classify(client, "moe_v2", PROBE, module=grpcclient)["LABEL"].shape == (2, 1)
    finally:
        server.stop()
        server.cleanup()


# --- hostile input ---------------------------------------------------------------------------

hostile_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "So", "Lo"]), max_size=200),
    st.binary(max_size=300),  # mostly invalid UTF-8
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=8), st.integers(1, 150_000)),
    st.just("\x00" * 1000),
    st.just("a\x00b"),
    st.just(""),
)


def check_answer_or_client_error(call, n):
    try:
        out = call()
    except InferenceServerException as e:
        status = str(e.status())
        assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (status, str(e))
        assert "TEXT[" in str(e) or "batch" in str(e).lower() or "shape" in str(e).lower(), str(e)
        return
    assert out["LABEL"].shape == (n, 1) and set(out["LABEL"].reshape(-1)) <= LABELS
    np.testing.assert_allclose(out["PROBS"].sum(1), 1.0, atol=1e-5)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(hostile_text, min_size=1, max_size=4), workflow=st.sampled_from(["moe_v1", "moe_v2"]))
def test_fuzz_http(server, texts, workflow):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    check_answer_or_client_error(lambda: classify(client, workflow, texts), len(texts))
    client.close()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(hostile_text, min_size=1, max_size=4), workflow=st.sampled_from(["moe_v1", "moe_v2"]))
def test_fuzz_grpc(server, texts, workflow):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    check_answer_or_client_error(lambda: classify(client, workflow, texts, module=grpcclient), len(texts))
    client.close()


def test_empty_batch_is_refused(http):
    empty = httpclient.InferInput("TEXT", [0, 1], "BYTES")
    empty.set_data_from_numpy(np.zeros((0, 1), dtype=object))
    with pytest.raises(InferenceServerException):
        http.infer("moe_v2", [empty])


def test_server_answers_correctly_after_the_fuzzing(server, http, tiny_checkpoint):
    labels = eager_labels(tiny_checkpoint, PROBE)
    for workflow in ("moe_v1", "moe_v2"):
        got = [b.decode() for b in classify(http, workflow, PROBE)["LABEL"].reshape(-1)]
        assert got == [labels[t] for t in PROBE]
    assert server.process.poll() is None


# --- security defaults -----------------------------------------------------------------------


def listening_addresses(port: int) -> set:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def test_binds_loopback_only(server):
    for port in (server.opts.http_port, server.opts.grpc_port, server.opts.metrics_port):
        # 127.0.0.1 as /proc writes it, in IPv4 or IPv4-mapped IPv6 form: loopback only.
        assert listening_addresses(port) <= {"0100007F", "0000000000000000FFFF00000100007F"}, port
        assert listening_addresses(port), port


def http_status(url, method="GET", headers=None, body=None):
    request = urllib.request.Request(
        url, method=method, headers=headers or {}, data=json.dumps(body).encode() if body is not None else None
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_operator_apis_closed_without_the_admin_header(server):
    base = f"http://{server.http_url}"
    closed = [
        ("POST", "/v2/repository/index", {}),
        ("POST", "/v2/repository/models/moe_v1/unload", {}),
        ("GET", "/v2/logging", None),
        ("POST", "/v2/logging", {"log_verbose_level": 1}),
        ("GET", "/v2/trace/setting", None),
        ("POST", "/v2/systemsharedmemory/region/x/register", {"key": "/x", "offset": 0, "byte_size": 8}),
    ]
    for method, path, body in closed:
        assert http_status(base + path, method, body=body) == 403, path
    admin = {"moe-admin-key": ADMIN_KEY}
    assert http_status(base + "/v2/repository/index", "POST", admin, {}) == 200
    assert http_status(base + "/v2/logging", "GET", admin) == 200
    assert http_status(base + "/v2/models/moe_v2/ready") == 200  # inference stays open
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException):
        grpc.get_model_repository_index()
    with pytest.raises(InferenceServerException):
        grpc.unload_model("moe_v1")
    assert grpc.is_model_ready("moe_v1")


def test_admin_key_never_reaches_the_log(server):
    assert ADMIN_KEY not in server.log_text()
    assert server.admin_key not in server.log_text()
