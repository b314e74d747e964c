"""Experts on other Triton servers: one front server, two expert servers of four experts each."""

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from moe.errors import MoEError
from serving.server import ServerOptions, TritonServer, free_ports

from ..conftest import start_server
from .test_serving import classify

TEXTS = [
    "Stocks tumble as oil hits a record",
    "Yankees beat the Red Sox in extra innings",
    "New chip doubles battery life of laptops",
    "Rebels and army clash near the capital",
]


def expert_server(repository, experts, ports=None):
    http_port, grpc_port, metrics_port = ports or free_ports(3)
    server = TritonServer(
        ServerOptions(
            repository=repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            models=[f"expert_{e}" for e in experts],
        )
    )
    return server.start(timeout=240)


@pytest.fixture(scope="module")
def cluster(tiny_repository):
    first = expert_server(tiny_repository, range(0, 4))
    second = expert_server(tiny_repository, range(4, 8))
    front = start_server(tiny_repository, experts_at=[first.grpc_url, second.grpc_url])
    servers = {"front": front, "first": first, "second": second}
    yield servers
    for s in servers.values():
        s.stop()
        s.cleanup()


def is_ready(client, name) -> bool:
    try:
        return client.is_model_ready(name)
    except InferenceServerException:
        return False


def test_expert_servers_hold_only_their_experts(cluster):
    client = grpcclient.InferenceServerClient(cluster["first"].grpc_url)
    assert all(is_ready(client, f"expert_{e}") for e in range(4))
    assert not any(is_ready(client, name) for name in ("expert_4", "attention", "moe_v1"))
    front = grpcclient.InferenceServerClient(cluster["front"].grpc_url)
    assert is_ready(front, "moe_v1") and is_ready(front, "moe_v2")
    assert not is_ready(front, "expert_0")


def test_v1_over_remote_experts_equals_v2(cluster):
    client = grpcclient.InferenceServerClient(cluster["front"].grpc_url)
    v1 = classify(client, "moe_v1", TEXTS, routing=True, module=grpcclient)
    v2 = classify(client, "moe_v2", TEXTS, module=grpcclient)
    assert (v1["LABEL"] == v2["LABEL"]).all()
    np.testing.assert_allclose(v1["PROBS"], v2["PROBS"], atol=1e-4, rtol=0)
    # Both expert servers did work: their experts received the routed tokens.
    remote = {name: grpcclient.InferenceServerClient(cluster[name].grpc_url) for name in ("first", "second")}
    executions = {
        name: sum(
            c.get_inference_statistics(f"expert_{e}").model_stats[0].execution_count
            for e in (range(4) if name == "first" else range(4, 8))
        )
        for name, c in remote.items()
    }
    assert executions["first"] > 0 and executions["second"] > 0


def test_idle_remote_experts_are_not_called(cluster):
    """Remote experts are called one by one, and only those a layer routes tokens to."""
    front = grpcclient.InferenceServerClient(cluster["front"].grpc_url)
    remote = {e: grpcclient.InferenceServerClient(cluster["first" if e < 4 else "second"].grpc_url) for e in range(8)}

    def executions():
        return {e: c.get_inference_statistics(f"expert_{e}").model_stats[0].execution_count for e, c in remote.items()}

    before = executions()
    counts = classify(front, "moe_v1", ["Oil"], routing=True, module=grpcclient)["EXPERT_TOKENS"][0]
    after = executions()
    # "[CLS] oil": 2 tokens x top-2 = 4 slots per layer, so most experts are idle each layer.
    busy_layers = (counts > 0).sum(axis=0)
    assert busy_layers.sum() < counts.shape[0] * counts.shape[1]
    for e in range(8):
        assert after[e] - before[e] == busy_layers[e], f"expert_{e}"


def test_a_stopped_expert_server_fails_v1_fast_and_v1_recovers(cluster, tiny_repository):
    client = grpcclient.InferenceServerClient(cluster["front"].grpc_url)
    second = cluster["second"]
    ports = (second.opts.http_port, second.opts.grpc_port, second.opts.metrics_port)
    second.stop()
    second.cleanup()
    texts = TEXTS * 4  # enough tokens that experts 4-7 are busy
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        classify(client, "moe_v1", texts, module=grpcclient)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "expert_" in message and second.grpc_url in message, message
    named = {f"expert_{e}" for e in range(4, 8) if f"expert_{e}" in message}
    assert named and not any(f"expert_{e} " in message for e in range(4)), message
    assert classify(client, "moe_v2", texts, module=grpcclient)["LABEL"].shape == (len(texts), 1)

    cluster["second"] = expert_server(tiny_repository, range(4, 8), ports)
    v2 = classify(client, "moe_v2", texts, module=grpcclient)
    deadline = time.monotonic() + 30
    while True:
        try:
            v1 = classify(client, "moe_v1", texts, module=grpcclient)
            break
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    np.testing.assert_allclose(v1["PROBS"], v2["PROBS"], atol=1e-4, rtol=0)


def test_front_server_refuses_to_start_without_its_experts(tiny_repository):
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(MoEError, match="unreachable|not served"):
        start_server(tiny_repository, experts_at=[dead])
