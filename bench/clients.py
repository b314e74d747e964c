"""The load client of `moe bench`: which one a run uses, and building it. The choices and what
each is: LOAD_CLIENTS in bench/options.py."""

from __future__ import annotations

from moe.errors import MoEError

from . import wrk
from .options import LOAD_CLIENTS, BenchOptions, Endpoint
from .raw_http import RawHttpClient


def check_load_client(opts: BenchOptions) -> None:
    if opts.load_client not in LOAD_CLIENTS:
        raise MoEError(f"--load-client must be one of {', '.join(LOAD_CLIENTS)}, not {opts.load_client!r}")
    if opts.load_client in ("raw", "wrk") and opts.protocol != "http":
        raise MoEError(
            f"--load-client {opts.load_client} speaks HTTP only: use --protocol http, or --load-client moe_client"
        )
    if opts.load_client == "wrk" and not wrk.available():
        raise MoEError("--load-client wrk: wrk is not installed (Debian's `wrk`; `make setup` installs it)")


def load_client_kind(opts: BenchOptions) -> str:
    """ "wrk", "raw" or "moe_client": what `opts.load_client` means for its protocol."""
    if opts.load_client != "auto":
        return opts.load_client
    if opts.protocol != "http":
        return "moe_client"
    return "wrk" if wrk.available() else "raw"


def load_client(opts: BenchOptions, endpoint: Endpoint):
    """The client the workers share (an async context manager). A run with wrk opens the lean
    HTTP client too but sends nothing through it: wrk sends every request of its levels."""
    from moe_client import AsyncMoEClient

    if load_client_kind(opts) in ("raw", "wrk"):
        return RawHttpClient(endpoint.url, timeout=opts.timeout_s)
    return AsyncMoEClient(endpoint.url, protocol=opts.protocol, timeout=opts.timeout_s, retries=0)
