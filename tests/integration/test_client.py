"""moe_client (sync and async, HTTP and gRPC) and `moe classify` against a real tritonserver."""

import asyncio
import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from moe_client import (
    AccessDenied,
    AsyncMoEClient,
    InvalidInput,
    ModelNotReady,
    MoEClient,
    MoEClientError,
    Prediction,
    RequestTimeout,
    ServerUnreachable,
)
from serving.server import free_ports

from ..conftest import ADMIN_KEY, ROOT, run_cli, start_server

PROTOCOLS = ["http", "grpc"]


def url_of(server, protocol):
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.fixture(scope="module")
def texts(data_dir):
    """70 real AG News texts (more than max_batch_size), some longer than max_len tokens."""
    with open(data_dir / "test.csv", newline="", encoding="utf-8") as f:
        rows = [row for _, row in zip(range(70), csv.reader(f))]
    return [f"{title} {body}" for _, title, body in rows]


@pytest.fixture(scope="module")
def checkpoint_config(tiny_checkpoint):
    return json.loads((tiny_checkpoint / "config.json").read_text())


@pytest.fixture(scope="module")
def max_batch_size(server):
    import tritonclient.http as http

    config = http.InferenceServerClient(server.http_url).get_model_config("moe_v2")
    return config["max_batch_size"]


def run(coro):
    return asyncio.run(coro)


def async_classify(url, protocol, *args, client_options=None, **kwargs):
    """One AsyncMoEClient.classify call in its own event loop, closing the client after."""

    async def main():
        async with AsyncMoEClient(url, protocol=protocol, **(client_options or {})) as client:
            return await client.classify(*args, **kwargs)

    return asyncio.run(main())


def assert_same(a: list[Prediction], b: list[Prediction], tol=1e-4):
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.label for p in a] == [p.label for p in b]
    for p, q in zip(a, b):
        assert p.probabilities.keys() == q.probabilities.keys()
        for k in p.probabilities:
            assert abs(p.probabilities[k] - q.probabilities[k]) <= tol, (p, q)


def check_prediction(p: Prediction, text: str, labels: list[str]):
    assert isinstance(p, Prediction)
    assert p.text == text
    assert list(p.probabilities) == labels
    assert abs(sum(p.probabilities.values()) - 1) < 1e-4
    assert p.label == labels[p.label_id]
    assert p.confidence == p.probabilities[p.label] == max(p.probabilities.values())


# --- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_single_text_and_a_batch_larger_than_max_batch_size(server, protocol, texts, checkpoint_config, max_batch_size):
    assert len(texts) > max_batch_size  # one request with all of them would be refused
    labels = checkpoint_config["labels"]
    with MoEClient(url_of(server, protocol), protocol=protocol) as client:
        one = client.classify(texts[66])
        many = client.classify(texts)
    check_prediction(one, texts[66], labels)
    assert one.expert_tokens is None
    assert isinstance(many, list) and len(many) == len(texts)
    for p, t in zip(many, texts):
        check_prediction(p, t, labels)
    assert_same([many[66]], [one])  # results come back in the order of the texts
    assert len({p.label for p in many}) > 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_client_matches_the_sync_one(server, protocol, texts):
    url = url_of(server, protocol)
    with MoEClient(url, protocol=protocol) as client:
        expected = client.classify(texts)

    async def main():
        async with AsyncMoEClient(url, protocol=protocol) as client:
            assert await client.ready()
            # Many concurrent requests from one loop: the long list plus single texts.
            return await asyncio.gather(client.classify(texts), *(client.classify(t) for t in texts[:10]))

    many, *singles = run(main())
    assert_same(many, expected)
    assert_same(singles, expected[:10])


def test_v1_and_v2_agree(server, texts):
    with MoEClient(server.http_url) as client:
        v1 = client.classify(texts, workflow="v1")
        v2 = client.classify(texts, workflow="v2")
        assert client.workflow == "v2"
        default = client.classify(texts[:5])
    assert_same(v1, v2)
    assert_same(default, v2[:5], tol=1e-4)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_routing_counts_top_k_tokens_per_layer(server, protocol, texts, tiny_checkpoint, checkpoint_config):
    from moe.tokenizer import encode, load_fast_tokenizer

    tokenizer = load_fast_tokenizer(tiny_checkpoint / "tokenizer.json")
    cfg = checkpoint_config
    sample = ["Hi", *texts]  # lengths from 2 tokens to truncated at max_len
    with MoEClient(url_of(server, protocol), protocol=protocol, workflow="v1") as client:
        routed = client.classify(sample, return_routing=True)
        plain = client.classify(sample)
        single = client.classify(texts[3], return_routing=True)

    in_async = async_classify(url_of(server, protocol), protocol, texts[3], workflow="v1", return_routing=True)
    assert single.expert_tokens == in_async.expert_tokens
    assert_same(routed, plain)  # asking for routing changes no answer
    assert plain[0].expert_tokens is None
    lengths = set()
    for p in [*routed, single]:
        _, mask = encode(tokenizer, [p.text], cfg["max_len"])
        n_tokens = int(mask.sum())
        lengths.add(n_tokens)
        assert len(p.expert_tokens) == cfg["n_layers"]
        for layer in p.expert_tokens:
            assert len(layer) == cfg["n_experts"] and min(layer) >= 0
            assert sum(layer) == cfg["top_k"] * n_tokens, (p.text, p.expert_tokens)
    assert len(lengths) > 5 and cfg["max_len"] in lengths


def test_return_routing_needs_v1(server):
    with MoEClient(server.http_url) as client:
        with pytest.raises(ValueError, match="workflow='v1'"):
            client.classify("some text", return_routing=True)
    with pytest.raises(ValueError, match="workflow='v1'"):
        async_classify(server.grpc_url, "grpc", "x", return_routing=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ready_and_models(server, protocol):
    url = url_of(server, protocol)
    with MoEClient(url, protocol=protocol) as client:
        assert client.ready() and client.ready("v1")
        assert not client.ready("v9")
        with pytest.raises(AccessDenied, match="moe-admin-key"):  # the index is for admins
            client.models()
    with MoEClient(url, protocol=protocol, admin_key=ADMIN_KEY) as client:
        models = {m.name: m for m in client.models()}
    for name in ("moe_v1", "moe_v2", "tokenizer", "postprocessing"):
        assert models[name].state == "READY" and models[name].version == "1"

    async def main():
        async with AsyncMoEClient(url, protocol=protocol, admin_key=ADMIN_KEY) as client:
            return await client.ready("v9"), await client.models()

    ready, async_models = run(main())
    assert not ready and {m.name for m in async_models} == set(models)


# --- errors in their real situations ---------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_server(tiny_repository):
    """A server of our own that answered, then was stopped (the shared one keeps running)."""
    s = start_server(tiny_repository)
    try:
        for protocol in PROTOCOLS:
            with MoEClient(url_of(s, protocol), protocol=protocol) as client:
                assert client.classify("answers while it runs").label
    finally:
        s.stop()
        s.cleanup()
    return s


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stopped_server_is_unreachable(stopped_server, protocol):
    url = url_of(stopped_server, protocol)
    client = MoEClient(url, protocol=protocol, retries=2)
    assert not client.ready()
    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="after 3 attempts") as e:
        client.classify("hello")
    assert time.monotonic() - started < 5
    assert url in str(e.value) and isinstance(e.value, MoEClientError)
    with pytest.raises(ServerUnreachable):
        async_classify(url, protocol, "hello", client_options={"retries": 0})


def forward_later(target: str, delay: float) -> str:
    """A loopback port that refuses connections for `delay` seconds, then forwards them to
    `target`: a server that comes back while the client retries."""
    (port,) = free_ports(1)
    host, target_port = target.rsplit(":", 1)

    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        time.sleep(delay)
        listener = socket.create_server(("127.0.0.1", port))
        while True:
            conn, _ = listener.accept()
            upstream = socket.create_connection((host, int(target_port)))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refused_connections_are_retried(server, protocol):
    url = forward_later(url_of(server, protocol), delay=0.25)
    with MoEClient(url, protocol=protocol, retries=4) as client:
        assert client.classify("The server came back").label
    url = forward_later(url_of(server, protocol), delay=0.25)
    assert async_classify(url, protocol, "The server came back", client_options={"retries": 4}).label


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_workflow_is_model_not_ready(server, protocol):
    url = url_of(server, protocol)
    with MoEClient(url, protocol=protocol) as client:
        with pytest.raises(ModelNotReady, match="moe_v9"):
            client.classify("hello", workflow="v9")
    with pytest.raises(ModelNotReady, match="no_such_model"):
        async_classify(url, protocol, "hello", workflow="no_such_model")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invalid_input_carries_the_servers_message(server, protocol, texts, max_batch_size):
    url = url_of(server, protocol)
    with MoEClient(url, protocol=protocol) as client:
        with pytest.raises(InvalidInput, match=r"TEXT\[1\] is empty or whitespace only"):
            client.classify(["fine", " \t "])
        with pytest.raises(InvalidInput, match="not valid UTF-8"):
            client.classify("lone surrogate \udcff")
        # In the second chunk the server counts from that chunk's first text.
        with pytest.raises(InvalidInput) as e:
            client.classify([*texts[: max_batch_size + 1], ""], workflow="v1")
        assert "TEXT[1] is empty" in e.value.server_message
        assert f"texts[{max_batch_size} + i]" in str(e.value)
    with pytest.raises(InvalidInput, match=r"TEXT\[0\] is empty"):
        async_classify(url, protocol, "")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_server_that_does_not_answer_times_out(protocol):
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    url = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            MoEClient(url, protocol=protocol, timeout=0.5).classify("hello")
        assert time.monotonic() - started < 5
        with pytest.raises(RequestTimeout):
            async_classify(url, protocol, "hello", client_options={"timeout": 0.5})
    finally:
        listener.close()


# --- moe classify ----------------------------------------------------------------------------


def test_classify_cli(server, tmp_path, texts):
    result = run_cli("classify", "--json", "--url", server.http_url, texts[0], texts[1], timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    with MoEClient(server.http_url) as client:
        expected = client.classify(texts[:2])
    assert [r["text"] for r in rows] == texts[:2]
    assert [r["label"] for r in rows] == [p.label for p in expected]
    assert all(r["expert_tokens"] is None and len(r["probabilities"]) == 4 for r in rows)

    (tmp_path / "texts.txt").write_text(f"{texts[2]}\n\n{texts[3]}\n", encoding="utf-8")
    result = run_cli(
        "classify",
        "--file",
        tmp_path / "texts.txt",
        "--protocol",
        "grpc",
        "--url",
        server.grpc_url,
        "--workflow",
        "v1",
        "--routing",
        "--json",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts[2:4]  # the blank line is skipped
    assert all(len(r["expert_tokens"]) == 2 for r in rows)

    result = run_cli("classify", "--url", server.http_url, "Stocks rallied", timeout=60)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["TEXT", "LABEL", "CONFIDENCE"] and row.startswith("Stocks rallied")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["   "], "TEXT[0] is empty or whitespace only"),
        (["--workflow", "v1", "--url", "127.0.0.1:{port}", "hi"], "cannot reach http server"),
        (["hi", "--routing"], "--routing needs --workflow v1"),
        ([], "nothing to classify"),
    ],
)
def test_classify_cli_errors_are_one_line(server, args, needle):
    (port,) = free_ports(1)
    url = ["--url", server.http_url] if "--url" not in args else []
    result = run_cli("classify", *url, *(a.format(port=port) for a in args), timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


# --- the client on its own -------------------------------------------------------------------


def test_client_installs_and_answers_without_torch(server, tmp_path):
    """`pip install ./client` into a fresh venv: no torch there, and it answers the server."""
    result = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "check_client_install.sh"),
            server.http_url,
            server.grpc_url,
            str(tmp_path / "venv"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: torch is not installed" in result.stdout
    assert "over http, grpc and async" in result.stdout
    assert not list((tmp_path / "venv").glob("lib/python*/site-packages/torch*"))
