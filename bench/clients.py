"""The load client of `moe bench`: which one a run uses, and building it. The choices and what
each is: LOAD_CLIENTS in bench/options.py."""

from __future__ import annotations

from moe.errors import MoEError

from .options import LOAD_CLIENTS, BenchOptions, Endpoint
from .raw_http import RawHttpClient


def check_load_client(opts: BenchOptions) -> None:
    if opts.load_client not in LOAD_CLIENTS:
        raise MoEError(f"--load-client must be one of {', '.join(LOAD_CLIENTS)}, not {opts.load_client!r}")
    if opts.load_client == "raw" and opts.protocol != "http":
        raise MoEError("--load-client raw speaks HTTP only: use --protocol http, or --load-client moe_client")


def load_client_kind(opts: BenchOptions) -> str:
    """ "raw" or "moe_client": what `opts.load_client` means for its protocol."""
    if opts.load_client != "auto":
        return opts.load_client
    return "raw" if opts.protocol == "http" else "moe_client"


def load_client(opts: BenchOptions, endpoint: Endpoint):
    """The client the workers share (an async context manager)."""
    from moe_client import AsyncMoEClient

    if load_client_kind(opts) == "raw":
        return RawHttpClient(endpoint.url, timeout=opts.timeout_s)
    return AsyncMoEClient(endpoint.url, protocol=opts.protocol, timeout=opts.timeout_s, retries=0)
