"""The Triton model repository served by a real tritonserver: v1 == v2 == eager, sparse
expert calls, bad input, the repository index, export checks and server start-up errors."""

import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export.repository import ExportOptions, export_repository
from moe.checkpoint import load_checkpoint
from moe.data import load_split
from moe.errors import MoEError
from moe.tokenizer import encode, load_fast_tokenizer

from ..conftest import ADMIN_KEY, start_server

MODELS = [
    "tokenizer",
    "embedding",
    "attention",
    "gating",
    *[f"expert_{e}" for e in range(8)],
    "classifier",
    "attention_gating",
    "embedding_attention_gating",
    "experts",
    "moe_bls",
    "full_model",
    "postprocessing",
    "moe_v1",
    "moe_v2",
]


def text_input(texts, module=httpclient):
    inp = module.InferInput("TEXT", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t if isinstance(t, bytes) else t.encode()] for t in texts], dtype=object))
    return inp


def classify(client, model, texts, routing=False, module=httpclient):
    names = ["LABEL", "LABEL_ID", "PROBS"] + (["EXPERT_TOKENS"] if routing else [])
    result = client.infer(
        model,
        [text_input(texts, module)],
        outputs=[module.InferRequestedOutput(n) for n in names],
        parameters={"expert_tokens": True} if routing else None,
    )
    return {n: result.as_numpy(n) for n in names}


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def eager(tiny_checkpoint):
    model, path = load_checkpoint(tiny_checkpoint)
    return model, load_fast_tokenizer(path / "tokenizer.json")


def eager_probs(eager, texts):
    model, tokenizer = eager
    ids, mask = encode(tokenizer, texts, model.cfg.max_len)
    with torch.no_grad():
        return torch.softmax(model(ids, mask), -1).numpy(), mask.sum(1).numpy()


def test_v1_v2_and_eager_agree_on_1000_test_texts(server, http, eager, data_dir):
    # One batch with accented text: the tokenizer's ASCII fast path must not take it.
    texts = load_split(data_dir, "test").texts[:1000]
    texts[70:72] = ["Nestlé's profits rise in Zürich as café sales grow", "Ça va: Déjà vu for Köln fans"]
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    for start in range(0, len(texts), 64):
        batch = texts[start : start + 64]
        v1 = classify(http, "moe_v1", batch)
        v2 = classify(grpc, "moe_v2", batch, module=grpcclient)
        expected, _ = eager_probs(eager, batch)
        assert (v1["LABEL"] == v2["LABEL"]).all(), f"labels differ in batch at {start}"
        np.testing.assert_allclose(v1["PROBS"], v2["PROBS"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(v1["PROBS"], expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(v2["PROBS"], expected, atol=1e-4, rtol=0)
        assert (v1["LABEL_ID"].reshape(-1) == expected.argmax(1)).all()
        labels = [b.decode() for b in v1["LABEL"].reshape(-1)]
        assert labels == [eager[0].cfg.labels[i] for i in expected.argmax(1)]
    grpc.close()


def expert_executions(http):
    return {e: http.get_inference_statistics(f"expert_{e}")["model_stats"][0]["execution_count"] for e in range(8)}


def test_expert_tokens_count_every_routed_token(http, eager, data_dir):
    texts = load_split(data_dir, "test").texts[1000:1040] + ["Short text.", "Oil"]
    out = classify(http, "moe_v1", texts, routing=True)
    counts = out["EXPERT_TOKENS"]
    cfg = eager[0].cfg
    assert counts.shape == (len(texts), cfg.n_layers, cfg.n_experts)
    _, real_tokens = eager_probs(eager, texts)
    np.testing.assert_array_equal(counts.sum(axis=2), np.repeat(real_tokens[:, None] * cfg.top_k, cfg.n_layers, 1))


def test_every_layer_runs_its_experts_as_one_ensemble_idle_ones_on_no_tokens(http, eager):
    """On the CPU the BLS reaches a layer's experts through the experts ensemble, one round trip,
    whether or not every expert has tokens: an idle expert runs on its empty chunk, and the
    answer is still the eager model's."""

    def executions(model):
        return http.get_inference_statistics(model)["model_stats"][0]["execution_count"]

    before = executions("experts"), expert_executions(http)
    out = classify(http, "moe_v1", ["Oil"], routing=True)
    after = executions("experts"), expert_executions(http)
    counts = out["EXPERT_TOKENS"][0]  # [L, E]
    n_layers = counts.shape[0]
    # "[CLS] oil": 2 tokens x top-2 = 4 slots per layer, so most experts are idle each layer.
    assert (counts == 0).any(axis=1).all(), "every layer should have an idle expert"
    assert after[0] - before[0] == n_layers
    for e in range(8):
        assert after[1][e] - before[1][e] == n_layers, f"expert_{e}"
    expected, _ = eager_probs(eager, ["Oil"])
    np.testing.assert_allclose(out["PROBS"], expected, atol=1e-4, rtol=0)


def test_with_expert_calls_only_busy_experts_are_called(tiny_checkpoint, tmp_path, eager):
    """`moe export --expert-fanout calls`: no experts ensemble; the BLS calls each busy expert
    of a layer on its own, and never an idle one."""
    repository = export_repository(
        tiny_checkpoint, tmp_path / "calls", ExportOptions(expert_fanout="calls"), progress=False, log=lambda *_: None
    )
    assert not (repository / "model_repository" / "experts").exists()
    server = start_server(repository)
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        before = expert_executions(client)
        out = classify(client, "moe_v1", ["Oil"], routing=True)
        after = expert_executions(client)
        client.close()
    finally:
        server.stop()
        server.cleanup()
    busy_layers = (out["EXPERT_TOKENS"][0] > 0).sum(axis=0)
    assert busy_layers.sum() < out["EXPERT_TOKENS"].shape[1] * 8, "some expert should be idle"
    for e in range(8):
        assert after[e] - before[e] == busy_layers[e], f"expert_{e}"
    expected, _ = eager_probs(eager, ["Oil"])
    np.testing.assert_allclose(out["PROBS"], expected, atol=1e-4, rtol=0)


def test_expert_tokens_only_when_asked(http):
    result = http.infer("moe_v1", [text_input(["Stocks rally"])])
    assert result.as_numpy("EXPERT_TOKENS") is None
    assert result.as_numpy("LABEL") is not None


def assert_rejected(fn, *needles):
    with pytest.raises(InferenceServerException) as info:
        fn()
    message = str(info.value)
    for n in needles:
        assert n.lower() in message.lower(), message
    return message


def test_bad_input_gets_clear_errors_and_server_keeps_serving(http, server):
    good = classify(http, "moe_v2", ["Stocks rally as oil prices fall"])
    for model in ("moe_v1", "moe_v2"):
        assert_rejected(lambda model=model: classify(http, model, [""]), "TEXT[0]", "empty")
        assert_rejected(lambda model=model: classify(http, model, ["ok text", "   \n\t "]), "TEXT[1]", "whitespace")
        assert_rejected(lambda model=model: classify(http, model, [b"caf\xe9 \xff"]), "TEXT[0]", "UTF-8")
        wrong_type = httpclient.InferInput("TEXT", [1, 1], "INT32")
        wrong_type.set_data_from_numpy(np.array([[7]], dtype=np.int32))
        assert_rejected(lambda model=model, wrong_type=wrong_type: http.infer(model, [wrong_type]), "data-type", "TEXT")
        wrong_shape = httpclient.InferInput("TEXT", [1, 2], "BYTES")
        wrong_shape.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
        assert_rejected(lambda model=model, wrong_shape=wrong_shape: http.infer(model, [wrong_shape]), "shape")
        assert_rejected(lambda model=model: classify(http, model, ["text"] * 65), "batch", "64")
        huge = ("Oil prices climb as markets fall. " * 3100)[:100_000]
        assert classify(http, model, [huge])["LABEL"].shape == (1, 1)
    again = classify(http, "moe_v2", ["Stocks rally as oil prices fall"])
    np.testing.assert_array_equal(again["PROBS"], good["PROBS"])
    assert server.process.poll() is None


def test_repository_index_lists_every_model_ready(http):
    # The repository API is an operator API: closed without the admin header.
    assert_rejected(lambda: http.get_model_repository_index(), "restricted")
    index = {m["name"]: m.get("state") for m in http.get_model_repository_index(headers={"moe-admin-key": ADMIN_KEY})}
    for name in MODELS:
        assert index.get(name) == "READY", (name, index.get(name))
        assert http.is_model_ready(name)


def test_kserve_json_over_http(server):
    """The README's curl example, as JSON (no binary tensors)."""
    body = {
        "inputs": [
            {
                "name": "TEXT",
                "shape": [1, 1],
                "datatype": "BYTES",
                "data": ["NASA launches a new probe to study the Sun"],
            }
        ]
    }
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/moe_v2/infer",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        outputs = {o["name"]: o for o in json.load(r)["outputs"]}
    assert outputs["LABEL"]["data"][0] in ("World", "Sports", "Business", "Sci/Tech")
    assert abs(sum(outputs["PROBS"]["data"]) - 1) < 1e-5
    request.data = json.dumps({"inputs": [{**body["inputs"][0], "data": [""]}]}).encode()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400 and b"empty" in info.value.read()


def test_export_is_idempotent(tiny_checkpoint, tiny_repository, tmp_path):
    out = tmp_path / "again"
    for _ in range(2):
        export_repository(tiny_checkpoint, out, progress=False, log=lambda *_: None)

    def listing(root):  # the Python backend stub leaves __pycache__ next to served models
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)

    files = listing(out)
    assert files == listing(tiny_repository)
    for f in files:
        if f.suffix in (".pbtxt", ".py", ".json") and f.name != "manifest.json":
            assert (out / f).read_text() == (tiny_repository / f).read_text(), f
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_server_reports_a_model_that_fails_to_load(tiny_repository, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_repository, broken)
    (broken / "model_repository" / "expert_3" / "1" / "model.pt").write_bytes(b"not a torchscript file")
    with pytest.raises(MoEError) as info:
        start_server(broken)
    assert "expert_3" in str(info.value)


def test_moe_serve_exits_with_the_servers_error(tiny_repository, tmp_path):
    from serving.server import free_ports

    from ..conftest import run_cli

    broken = tmp_path / "broken"
    shutil.copytree(tiny_repository, broken)
    (broken / "model_repository" / "tokenizer" / "1" / "tokenizer.json").write_text("{not json")
    http_port, grpc_port, metrics_port = free_ports(3)
    result = run_cli(
        "serve",
        "--repository",
        broken,
        "--http-port",
        http_port,
        "--grpc-port",
        grpc_port,
        "--metrics-port",
        metrics_port,
        timeout=300,
    )
    assert result.returncode == 2
    assert "tokenizer" in result.stderr and "Traceback" not in result.stderr.split("error:")[0]


def test_postprocessing_batches_requests_and_each_gets_its_own_labels(tiny_checkpoint, tmp_path):
    """Requests batched together in post-processing each get their own class names: the
    vendored libtorch backend hands request r the strings of its own rows (upstream hands every
    request the batch's first ones)."""
    repository = export_repository(
        tiny_checkpoint, tmp_path / "delay", ExportOptions(queue_delay_us=200_000), progress=False, log=lambda *_: None
    )
    server = start_server(repository)
    try:
        client = httpclient.InferenceServerClient(server.http_url, concurrency=16)
        labels = json.loads(client.get_model_config("postprocessing")["parameters"]["labels"]["string_value"])
        rng = np.random.default_rng(0)
        logits = [rng.normal(size=(1 + r % 3, len(labels))).astype(np.float32) for r in range(16)]

        def request(x):
            inp = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return client.async_infer("postprocessing", [inp])

        answers = [h.get_result() for h in [request(x) for x in logits]]
        stats = client.get_inference_statistics("postprocessing")["model_stats"][0]
        client.close()
    finally:
        server.stop()
        server.cleanup()
    assert stats["execution_count"] < len(logits), "the requests should have run in shared batches"
    for x, answer in zip(logits, answers):
        expected = x.argmax(1)
        np.testing.assert_array_equal(answer.as_numpy("OUTPUT__1").reshape(-1), expected)
        names = [v.decode() for v in answer.as_numpy("OUTPUT__2").reshape(-1)]
        assert names == [labels[i] for i in expected]
        assert answer.as_numpy("OUTPUT__2").shape == (len(x), 1)


def test_v2_answers_sent_from_response_threads(tiny_checkpoint, tmp_path, eager, data_dir):
    """`--full-model-response-threads 2`: the vendored backend sends full_model's answers from
    threads of its own (RESPONSE_THREADS). Texts batched together each get their own answer,
    Triton counts every request once, and the server still stops cleanly (queued answers are sent
    before an instance goes)."""
    opts = ExportOptions(queue_delay_us=100_000, full_model_response_threads=2)
    repository = export_repository(tiny_checkpoint, tmp_path / "senders", opts, progress=False, log=lambda *_: None)
    config = (repository / "model_repository" / "full_model" / "config.pbtxt").read_text()
    assert 'key: "RESPONSE_THREADS" value: { string_value: "2" }' in config
    texts = load_split(data_dir, "test").texts[:24]
    server = start_server(repository)
    try:
        client = httpclient.InferenceServerClient(server.http_url, concurrency=len(texts))
        pending = [
            client.async_infer("moe_v2", [text_input([t])], outputs=[httpclient.InferRequestedOutput("PROBS")])
            for t in texts
        ]
        probs = np.concatenate([p.get_result().as_numpy("PROBS") for p in pending])
        stats = client.get_inference_statistics("full_model")["model_stats"][0]
        client.close()
        log = server.log_text()
    finally:
        returncode = server.stop()
        server.cleanup()
    assert "Responses are sent from 2 threads per instance" in log
    assert stats["execution_count"] < len(texts), "the texts should have run in shared batches"
    assert stats["inference_count"] == len(texts) and stats["inference_stats"]["success"]["count"] == len(texts)
    np.testing.assert_allclose(probs, eager_probs(eager, texts)[0], atol=1e-4, rtol=0)
    assert returncode == 0


def triton_on(repository):
    """A tritonserver for `repository` on free loopback ports, not started."""
    from serving.server import ServerOptions, TritonServer, free_ports

    http, grpc, metrics = free_ports(3)
    return TritonServer(ServerOptions(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics))


def load_then_stop(repository) -> None:
    """tritonserver started on `repository` (MoEError with its load errors if a model does not
    load), then stopped."""
    server = triton_on(repository)
    try:
        server.start(timeout=120)
    finally:
        server.stop()
        server.cleanup()


def test_the_vendored_backend_takes_gpu_wait_and_names_a_bad_one(tiny_repository, tmp_path):
    """GPU_WAIT (`moe export --gpu-wait`) is read by the vendored backend: a known value loads
    (on the CPU it has no GPU to apply to) and answers; an unknown one keeps the model from
    loading with an error naming the parameter and its values."""

    def postprocessing_with(wait: str):
        repository = tmp_path / wait
        shutil.copytree(tiny_repository / "model_repository" / "postprocessing", repository / "postprocessing")
        config = repository / "postprocessing" / "config.pbtxt"
        config.write_text(
            config.read_text() + f'\nparameters {{ key: "GPU_WAIT" value: {{ string_value: "{wait}" }} }}\n'
        )
        return repository

    server = triton_on(postprocessing_with("block"))
    try:
        server.start(timeout=120)
        client = httpclient.InferenceServerClient(server.http_url)
        logits = np.array([[0.0, 3.0, 1.0, 2.0]], dtype=np.float32)
        inp = httpclient.InferInput("INPUT__0", list(logits.shape), "FP32")
        inp.set_data_from_numpy(logits)
        assert client.infer("postprocessing", [inp]).as_numpy("OUTPUT__1").reshape(-1).tolist() == [1]
        client.close()
    finally:
        server.stop()
        server.cleanup()

    with pytest.raises(MoEError, match="GPU_WAIT must be auto, spin, yield or block, got 'sometimes'"):
        load_then_stop(postprocessing_with("sometimes"))


def test_the_vendored_backend_refuses_cuda_graphs_without_a_gpu_instance(tiny_repository, tmp_path):
    """CUDA_GRAPH_MAX_BATCH (`moe export --full-model-cuda-graphs`) is read by the vendored backend;
    a CPU instance cannot capture a graph, and the model does not load, saying so."""
    repository = tmp_path / "graphs"
    shutil.copytree(tiny_repository / "model_repository" / "postprocessing", repository / "postprocessing")
    config = repository / "postprocessing" / "config.pbtxt"
    config.write_text(
        config.read_text() + '\nparameters { key: "CUDA_GRAPH_MAX_BATCH" value: { string_value: "8" } }\n'
    )
    with pytest.raises(MoEError, match="CUDA_GRAPH_MAX_BATCH needs a KIND_GPU instance"):
        load_then_stop(repository)


def test_the_cuda_graph_exports_warm_up_requests_load_on_a_real_server(tiny_checkpoint, tmp_path):
    """A GPU export with CUDA graphs warms full_model up at load: one text for the graphs, then
    batches of real tokens (read from its warmup/ folder) through the eager forward. Served here on
    a CPU instance without the graphs' parameter, the server runs those requests as it loads, and
    refuses to load if one is malformed (a data file too short for its sample)."""
    opts = ExportOptions(device="cuda", full_model_cuda_graphs=8)
    built = export_repository(tiny_checkpoint, tmp_path / "gpu", opts, progress=False, log=lambda *_: None)
    repository = tmp_path / "cpu"
    shutil.copytree(built / "model_repository" / "full_model", repository / "full_model")
    config = repository / "full_model" / "config.pbtxt"
    text = config.read_text()
    assert text.count('name: "eager_forward_') == 2 and (repository / "full_model" / "warmup" / "mask_ones").exists()
    text = text.replace("KIND_GPU", "KIND_CPU").replace("gpus: [ 0 ]", "gpus: [ ]")
    config.write_text(text.replace('parameters { key: "CUDA_GRAPH_MAX_BATCH" value: { string_value: "8" } }', ""))
    load_then_stop(repository)
    (repository / "full_model" / "warmup" / "mask_ones").write_bytes(b"\x01" * 4)
    with pytest.raises(MoEError, match="warmup setting expects"):
        load_then_stop(repository)


def test_half_precision_v2_is_checked_at_export_then_served(tiny_checkpoint, tmp_path, data_dir, monkeypatch):
    """`--full-model-dtype float16`: the export runs the test texts through float32 and float16
    first; outside the tolerance it refuses and says what it measured, inside it exports v2 in
    float16, which then answers v1's labels."""
    from export import precision

    opts = ExportOptions(full_model_dtype="float16")
    monkeypatch.setattr(precision, "TOLERANCE", 0.0)
    with pytest.raises(MoEError, match=r"float16: \d+ of 7600 test labels .* \(tolerance 0.0\) .* refusing"):
        export_repository(tiny_checkpoint, tmp_path / "refused", opts, progress=False, log=lambda *_: None)
    monkeypatch.undo()
    # A barely trained tiny model has test texts so close to a tie that float16 flips a few
    # (2 of 7,600 when written): the first 256 have none.
    opts.precision_check_texts = 256
    repository = export_repository(tiny_checkpoint, tmp_path / "half", opts, progress=False, log=lambda *_: None)
    check = json.loads((repository / "manifest.json").read_text())["precision_check"]
    assert check["texts"] == 256 and check["labels_unlike_float32"] == 0
    assert 0 <= check["max_prob_diff"] <= precision.TOLERANCE
    config = (repository / "model_repository" / "full_model" / "config.pbtxt").read_text()
    assert 'key: "DISABLE_CUDNN" value: { string_value: "true" }' in config
    full_model = torch.jit.load(str(repository / "model_repository" / "full_model" / "1" / "model.pt"))
    assert {p.dtype for p in full_model.parameters()} == {torch.float16}
    texts = load_split(str(data_dir), "test").texts[:64]
    server = start_server(repository)
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        v1, v2 = (classify(client, model, texts) for model in ("moe_v1", "moe_v2"))
        client.close()
    finally:
        server.stop()
        server.cleanup()
    assert v2["PROBS"].dtype == np.float32
    np.testing.assert_array_equal(v2["LABEL_ID"], v1["LABEL_ID"])
    assert np.abs(v2["PROBS"] - v1["PROBS"]).max() <= precision.TOLERANCE
