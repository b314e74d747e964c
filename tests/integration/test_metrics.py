"""The BLS's Prometheus metrics on Triton's metrics endpoint: routed tokens and stage times."""

import re
import time
import urllib.request

import numpy as np
import tritonclient.http as httpclient

from .test_serving import classify

SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})?\s+([0-9.e+-]+)$")


def scrape(server) -> dict:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1).startswith("moe_"):
            labels = tuple(
                sorted(
                    kv.split("=", 1)[0] + "=" + kv.split("=", 1)[1].strip('"')
                    for kv in (m.group(2) or "").split(",")
                    if kv
                )
            )
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def tokens_by_layer_expert(samples, n_layers, n_experts) -> np.ndarray:
    counts = np.zeros((n_layers, n_experts))
    for (name, labels), value in samples.items():
        if name == "moe_expert_tokens_total":
            d = dict(l.split("=") for l in labels)
            counts[int(d["layer"]), int(d["expert"])] = value
    return counts


def test_routing_metrics_equal_expert_tokens(server):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    texts = [
        "Oil prices rise",
        "The Yankees win again at home",
        "Intel unveils a new chip for laptops",
        "Peace talks resume in the Middle East as leaders meet",
    ] * 3
    before = scrape(server)
    out = classify(client, "moe_v1", texts, routing=True)["EXPERT_TOKENS"]
    L, E = out.shape[1:]
    # The BLS sends its counters after its responses: wait for them.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(server)
        routed = tokens_by_layer_expert(after, L, E) - tokens_by_layer_expert(before, L, E)
        if np.array_equal(routed, out.sum(axis=0)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    np.testing.assert_array_equal(routed, out.sum(axis=0))
    assert routed.sum() > 0
    key = ("moe_bls_batches_total", ())
    assert after.get(key, 0) - before.get(key, 0) >= 1
    stages = {
        dict(l.split("=") for l in labels)["stage"]: after[(n, labels)] - before.get((n, labels), 0)
        for (n, labels) in after
        if n == "moe_bls_stage_duration_us"
    }
    assert set(stages) == {"embedding+attention+gating", "attention+gating", "experts", "classifier", "orchestration"}
    assert all(v > 0 for k, v in stages.items() if k != "orchestration"), stages
    client.close()


def test_triton_model_metrics_are_exported(server):
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert 'nv_inference_request_success{model="moe_v1"' in text
    assert "moe_expert_tokens_total" in text
