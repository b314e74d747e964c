"""Client for the MoE AG News classifier served by Triton (KServe v2 over HTTP or gRPC).

from moe_client import MoEClient
with MoEClient("localhost:8000") as client:
    print(client.classify("Stocks rallied after the earnings report").label)
"""

from ._core import (
    ADMIN_HEADER,
    AccessDenied,
    InvalidInput,
    ModelInfo,
    ModelNotReady,
    MoEClientError,
    Prediction,
    RequestTimeout,
    ServerBusy,
    ServerUnreachable,
)
from .aio import AsyncMoEClient
from .client import MoEClient

__all__ = [
    "MoEClient",
    "AsyncMoEClient",
    "Prediction",
    "ModelInfo",
    "MoEClientError",
    "ServerUnreachable",
    "ModelNotReady",
    "InvalidInput",
    "RequestTimeout",
    "AccessDenied",
    "ServerBusy",
    "ADMIN_HEADER",
]
