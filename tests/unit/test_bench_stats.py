"""The bench's v1 breakdown: what each Triton model cost a request, and which stage it served."""

from bench.triton_stats import breakdown, stage_table


def stats_row(executions, requests, busy_ms, per_request_compute_ms, queue_ms=0.0, io_ms=0.0, per_request_io_ms=0.0):
    return dict(
        success_ns=0,
        fail_ns=0,
        queue_ns=int(queue_ms * 1e6),
        compute_input_ns=int(per_request_io_ms * 1e6),
        compute_infer_ns=int(per_request_compute_ms * 1e6),
        compute_output_ns=0,
        busy_ns=int(busy_ms * 1e6),
        io_ns=int(io_ms * 1e6),
        success_count=requests,
        execution_count=executions,
        inference_count=requests,
    )


def test_a_batching_model_costs_each_request_its_share_of_the_batch():
    # 10 requests in 2 batches of 5, each batch computing for 4 ms and moving its tensors for 1 ms:
    # Triton's inference statistics give every request its batch's 4 ms and 1 ms (40 and 10 ms in
    # all); the model was busy 8 ms and 2 ms.
    row = stats_row(2, 10, busy_ms=8, per_request_compute_ms=40, io_ms=2, per_request_io_ms=10)
    bd = breakdown({"tokenizer": row}, None, n_requests=10)
    assert bd["models"]["tokenizer"]["compute_infer_ms_per_request"] == 0.8
    assert bd["models"]["tokenizer"]["compute_infer_ms_per_execution"] == 4.0
    assert bd["models"]["tokenizer"]["compute_io_ms_per_request"] == 0.2


def test_attention_and_gating_are_split_between_the_first_layer_and_the_others():
    # 3 layers, 10 requests one at a time: the embedding runs 10 times, attention 30 times.
    stats = {
        "embedding": stats_row(10, 10, busy_ms=1, per_request_compute_ms=1),
        "attention": stats_row(30, 30, busy_ms=30, per_request_compute_ms=30, queue_ms=3),
        "gating": stats_row(30, 30, busy_ms=6, per_request_compute_ms=6),
    }
    bd = breakdown(stats, None, n_requests=10)
    rows = {
        r["stage"]: r
        for r in stage_table(
            bd,
            {
                "embedding+attention+gating": ["embedding", "attention", "gating"],
                "attention+gating": ["attention", "gating"],
            },
        )
    }
    # Per request: embedding 0.1 ms, attention 3 ms and gating 0.6 ms over three layers.
    assert abs(rows["embedding+attention+gating"]["triton_compute_ms"] - (0.1 + 1.0 + 0.2)) < 1e-3
    assert abs(rows["attention+gating"]["triton_compute_ms"] - (2.0 + 0.4)) < 1e-3
    assert abs(rows["attention+gating"]["triton_queue_ms"] - 0.2) < 1e-3
