"""What `moe bench` can be asked and what it knows of the server: the one place their defaults
live (the CLI's options read them here). Imports nothing heavy, so the CLI starts fast."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moe.data import DEFAULT_DATA

DEFAULT_OUT = Path("build") / "bench"

# What sends the bench's requests (bench/clients.py builds each).
LOAD_CLIENTS = {
    "auto": "wrk over HTTP where it is installed (else raw), moe_client over gRPC",
    "wrk": "the compiled load generator (bench/wrk.py), every answer's labels checked, each level as long "
    "as --level-seconds",
    "raw": "a lean Python HTTP client (bench/raw_http.py)",
    "moe_client": "the product's AsyncMoEClient",
}


@dataclass
class BenchOptions:
    workflows: list[str] = field(default_factory=lambda: ["v1", "v2"])
    concurrency: list[int] = field(default_factory=lambda: [1, 16, 64])
    batch_sizes: list[int] = field(default_factory=lambda: [1])  # texts per request
    requests: int | None = None  # timed requests per level (None: bench.served.level_requests)
    warmup: int | None = None  # untimed requests before each level (None: max(16, 2C))
    batched_baseline: int = 16  # texts per batch of the batched in-process baseline; 0: none
    protocol: str = "http"
    load_client: str = "auto"  # one of LOAD_CLIENTS (bench/clients.py builds it)
    level_seconds: float = 8.0  # how long each level runs with wrk (the Python clients send `requests`)
    checkpoint: Path | None = None  # the model of the baselines (default: the bundled one)
    device: str = "cpu"  # where the baselines run
    data: Path = DEFAULT_DATA  # AG News folder: test.csv texts
    out: Path = DEFAULT_OUT
    targets: str = "cpu"
    timeout_s: float = 60.0
    plots: bool = True
    progress: bool = True


@dataclass
class Endpoint:
    """The server under test, as the caller knows it."""

    url: str  # host:port of the protocol's endpoint
    http_url: str  # host:port of HTTP (statistics)
    metrics_url: str | None = None  # Prometheus endpoint
    cold_start_s: float | None = None  # launch to all models ready, if the caller launched it
    memory: Callable[[], dict] | None = None  # the server tree's memory now (serving.server)
    rss_mb: Callable[[], float] | None = None  # its RSS alone, cheaper to read
    facts: dict = field(default_factory=dict)  # anything else worth keeping (export options)
