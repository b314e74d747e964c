"""bench/trace.py on a hand-written Triton trace: fragments merged per id, each step's hand-over
counted from the previous step's answer, the entry request's HTTP segments."""

import json

import pytest

from bench.trace import load_traces, summarize, trace_files


def fragments(trace_id, model, parent, stamps):
    head = {"id": trace_id, "model_name": model, "model_version": 1}
    if parent is not None:
        head["parent_id"] = parent
    return [head] + [{"id": trace_id, "timestamps": [{"name": n, "ns": ns}]} for n, ns in stamps]


def step(start_us):
    """A step's events, in microseconds from start_us: queue 10, inputs 5, infer 100, outputs 20."""
    names = ("REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START")
    at = [0, 0, 10, 15, 115]
    stamps = [(n, (start_us + t) * 1000) for n, t in zip(names, at)]
    return stamps + [("COMPUTE_END", (start_us + 135) * 1000), ("REQUEST_END", (start_us + 140) * 1000)]


def test_an_ensemble_request_is_split_into_http_hand_overs_queues_and_compute(tmp_path):
    entry = [("HTTP_RECV_START", 0), ("HTTP_RECV_END", 4_000), ("REQUEST_START", 50_000), ("QUEUE_START", 51_000)]
    # The tokenizer starts 30 us after the ensemble; the model 7 us after the tokenizer's answer.
    entry += [("INFER_RESPONSE_COMPLETE", 330_000), ("HTTP_SEND_START", 400_000), ("HTTP_SEND_END", 410_000)]
    entry += [("REQUEST_END", 420_000)]
    raw = fragments(1, "moe_v2", None, entry)
    raw += fragments(2, "tokenizer", 1, step(80)) + fragments(3, "full_model", 1, step(80 + 115 + 7))
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(raw))

    traces = load_traces(path)
    assert {t.model for t in traces.values()} == {"moe_v2", "tokenizer", "full_model"}
    rows = summarize(traces)["moe_v2"]
    mean = {name: r["mean_ms"] for name, r in rows.items()}
    assert mean["HTTP: read the request"] == 0.004
    assert mean["HTTP: parse it, build the request"] == 0.046
    assert mean["HTTP: answer to JSON"] == 0.07
    assert mean["server: first byte read to last byte written"] == 0.41
    assert mean["tokenizer: hand-over before it"] == 0.03
    assert mean["full_model: hand-over before it"] == 0.007
    assert mean["full_model: queue"] == 0.01 and mean["full_model: compute: infer"] == 0.1
    # The model's answer at 202 + 115 = 317 us; the ensemble completes at 330.
    assert mean["ensemble: after its last step"] == 0.013
    assert rows["tokenizer: queue"]["n"] == 1


def test_requests_outside_any_ensemble_still_get_their_http_segments(tmp_path):
    raw = fragments(7, "full_model", None, [("HTTP_RECV_START", 0), ("HTTP_RECV_END", 2_000)] + step(10))
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(raw))
    rows = summarize(load_traces(path))["full_model"]
    assert rows["HTTP: read the request"]["mean_ms"] == 0.002
    assert not any("hand-over" in name for name in rows)


def test_traces_written_while_the_server_ran_are_read_with_the_rest(tmp_path):
    """With log-frequency Triton writes trace.json.0, .1, ... as it goes and the remainder to
    trace.json at a clean shutdown; a killed server leaves the numbered files only."""
    path = tmp_path / "trace.json"
    with pytest.raises(FileNotFoundError, match="no trace at"):
        load_traces(path)
    http = [("HTTP_RECV_START", 0), ("HTTP_RECV_END", 1_000)]
    for index, trace_id in ((0, 1), (2, 2), (10, 3)):
        (tmp_path / f"trace.json.{index}").write_text(json.dumps(fragments(trace_id, "full_model", None, http)))
    (tmp_path / "trace.json.gz").write_text("not a trace")
    assert [p.name for p in trace_files(path)] == ["trace.json.0", "trace.json.2", "trace.json.10"]
    assert sorted(load_traces(path)) == [1, 2, 3]
    path.write_text(json.dumps(fragments(4, "full_model", None, http)))
    assert sorted(load_traces(path)) == [1, 2, 3, 4]
