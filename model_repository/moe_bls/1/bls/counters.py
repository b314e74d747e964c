"""The Prometheus counters of the BLS, updated by a thread of their own: each increment is a
round trip to the server process, and a batch touches up to layers x experts + 6 counters, so
they are summed here and sent after the responses, not before."""

import threading
import time

from .orchestrator import STAGES


class Counters:
    """`metric_family`: pb_utils.MetricFamily (or a stand-in with its interface)."""

    def __init__(self, metric_family, n_layers: int, n_experts: int, interval_s: float = 0.05):
        counter = metric_family.COUNTER
        tokens = metric_family(
            name="moe_expert_tokens_total",
            kind=counter,
            description="Tokens routed to each expert of each layer by moe_bls (v1)",
        )
        stage = metric_family(
            name="moe_bls_stage_duration_us",
            kind=counter,
            description="Cumulative wall time of moe_bls (v1) batches per stage, microseconds",
        )
        batches = metric_family(name="moe_bls_batches_total", kind=counter, description="Batches run by moe_bls (v1)")
        self._families = (tokens, stage, batches)  # families must outlive their metrics
        self.tokens = [
            [tokens.Metric(labels={"layer": str(l), "expert": str(e)}) for e in range(n_experts)]
            for l in range(n_layers)
        ]
        self.stages = {s: stage.Metric(labels={"stage": s}) for s in STAGES}
        self.batches = batches.Metric(labels={})
        self._pending_tokens = [[0] * n_experts for _ in range(n_layers)]
        self._pending_us = dict.fromkeys(STAGES, 0.0)
        self._pending_batches = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, name="moe-bls-counters", daemon=True)
        self._thread.start()

    def record(self, tokens: list, seconds: dict) -> None:
        """tokens[l][e]: routed to expert e of layer l in one batch; seconds per stage."""
        with self._lock:
            for pending, layer in zip(self._pending_tokens, tokens):
                for e, n in enumerate(layer):
                    pending[e] += n
            for stage, s in seconds.items():
                self._pending_us[stage] += s * 1e6
            self._pending_batches += 1
        self._wake.set()

    def flush(self) -> None:
        with self._lock:
            tokens, self._pending_tokens = self._pending_tokens, [[0] * len(r) for r in self._pending_tokens]
            stage_us, self._pending_us = self._pending_us, dict.fromkeys(STAGES, 0.0)
            batches, self._pending_batches = self._pending_batches, 0
        for metrics, counts in zip(self.tokens, tokens):
            for metric, n in zip(metrics, counts):
                if n:
                    metric.increment(n)
        for stage, us in stage_us.items():
            if us:
                self.stages[stage].increment(us)
        if batches:
            self.batches.increment(batches)

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self._interval_s)  # let a burst of batches add up first
            self.flush()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
