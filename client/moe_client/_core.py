"""The protocol-independent parts shared by MoEClient and AsyncMoEClient: results, errors,
building a request and reading its answer. Nothing here does I/O."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import InferenceServerException

PROTOCOLS = ("http", "grpc")
OUTPUTS = ("LABEL", "LABEL_ID", "PROBS")
ROUTING_OUTPUT = "EXPERT_TOKENS"
LABELS_MODEL = "postprocessing"  # its config parameter `labels` lists the class names in order
# `moe serve` keeps the repository index (and other admin APIs) behind this header; Triton
# expects it with this prefix over gRPC.
ADMIN_HEADER = "moe-admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
INT32_MAX = 2**31 - 1
# tritonclient's message sizes, and reconnects as quick as our retries: gRPC's default 1 s
# reconnect backoff would make every retry within it fail at once.
GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", INT32_MAX),
    ("grpc.max_receive_message_length", INT32_MAX),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str
    label_id: int
    confidence: float  # probability of `label`
    probabilities: dict[str, float]  # class name -> probability
    expert_tokens: list[list[int]] | None = None  # [layer][expert] tokens routed (v1 only)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    state: str


@dataclass(frozen=True)
class ModelSpec:
    """What the client needs to know about one served workflow model."""

    name: str
    max_batch_size: int
    routing: bool  # has the optional EXPERT_TOKENS output


class MoEClientError(Exception):
    """Base of every error raised by moe_client."""


class ServerUnreachable(MoEClientError):
    """No server answers at the URL (refused, unavailable), even after the retries."""


class ModelNotReady(MoEClientError):
    """The server does not serve this model (unknown workflow) or it is not ready."""


class InvalidInput(MoEClientError):
    """The server rejected the input; `server_message` is its message, unchanged."""

    def __init__(self, message: str, server_message: str | None = None):
        super().__init__(message)
        self.server_message = server_message or message


class RequestTimeout(MoEClientError):
    """The server did not answer within the client's timeout."""


class ServerBusy(MoEClientError):
    """The server refused the request: its queue was full, or the request waited past its
    timeout in it. The server is up; try again later, or with fewer requests in flight."""


class AccessDenied(MoEClientError):
    """The server keeps this API (the repository index behind models()) for admins."""


def check_options(protocol: str, retries: int, timeout: float) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, not {timeout}")


def model_name(workflow: str) -> str:
    """'v1' -> 'moe_v1'; a full model name is kept as it is."""
    return workflow if workflow.startswith("moe_") else f"moe_{workflow}"


def as_texts(text_or_texts: str | Iterable[str]) -> tuple[list[str], bool]:
    """(texts, whether a single str was given)."""
    if isinstance(text_or_texts, str):
        return [text_or_texts], True
    texts = list(text_or_texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}, expected str")
    return texts, False


def chunks(texts: Sequence[str], size: int) -> list[tuple[int, Sequence[str]]]:
    """(offset, texts) pieces of at most `size` texts: one request each."""
    size = max(1, size)
    return [(i, texts[i : i + size]) for i in range(0, len(texts), size)]


def check_routing(spec: ModelSpec, return_routing: bool) -> None:
    if return_routing and not spec.routing:
        raise ValueError(f"model {spec.name!r} does not report routing: return_routing=True needs workflow='v1'")


def build_request(protocol_module, texts: Sequence[str], routing: bool) -> dict:
    """infer() keyword arguments for `texts`; `protocol_module` is tritonclient.http or .grpc
    (their aio clients take the same InferInput and InferRequestedOutput)."""
    # surrogatepass: a str that is not valid Unicode reaches the server, which says what is wrong.
    data = np.array([t.encode("utf-8", "surrogatepass") for t in texts], dtype=np.object_)
    data = data.reshape(-1, 1)
    text = protocol_module.InferInput("TEXT", list(data.shape), "BYTES")
    text.set_data_from_numpy(data)
    names = OUTPUTS + ((ROUTING_OUTPUT,) if routing else ())
    return {
        "inputs": [text],
        "outputs": [protocol_module.InferRequestedOutput(n) for n in names],
        # The server computes EXPERT_TOKENS only when a request asks for it this way.
        "parameters": {"expert_tokens": True} if routing else None,
    }


def parse_result(result, texts: Sequence[str], labels: Sequence[str], routing: bool) -> list[Prediction]:
    probs = result.as_numpy("PROBS")
    ids = result.as_numpy("LABEL_ID").reshape(-1)
    names = result.as_numpy("LABEL").reshape(-1)
    tokens = result.as_numpy(ROUTING_OUTPUT) if routing else None
    if routing and tokens is None:
        raise MoEClientError(f"the server sent no {ROUTING_OUTPUT} though the request asked for it")
    predictions = []
    for i, text in enumerate(texts):
        label = names[i].decode("utf-8") if isinstance(names[i], bytes) else str(names[i])
        predictions.append(
            Prediction(
                text=text,
                label=label,
                label_id=int(ids[i]),
                confidence=float(probs[i, ids[i]]),
                probabilities={name: float(p) for name, p in zip(labels, probs[i])},
                expert_tokens=tokens[i].tolist() if routing else None,
            )
        )
    return predictions


def parse_config(config: dict) -> dict:
    """A model config from either protocol as a dict (gRPC's JSON nests it under 'config')."""
    return config.get("config", config)


def parse_spec(name: str, config: dict) -> ModelSpec:
    config = parse_config(config)
    outputs = {o["name"] for o in config.get("output", [])}
    return ModelSpec(name, int(config.get("max_batch_size", 0)), ROUTING_OUTPUT in outputs)


def parse_labels(config: dict) -> list[str]:
    config = parse_config(config)
    try:
        return json.loads(config["parameters"]["labels"]["string_value"])
    except (KeyError, ValueError) as e:
        raise MoEClientError(f"model {LABELS_MODEL!r} has no valid 'labels' parameter") from e


def parse_index(index) -> list[ModelInfo]:
    rows = index.get("models", []) if isinstance(index, dict) else index
    return [ModelInfo(r["name"], str(r.get("version", "")), r.get("state", "")) for r in rows]


# Triton's statuses (HTTP code, or gRPC code as tritonclient spells it) -> our errors.
STATUS_ERRORS = {
    "400": InvalidInput,
    "StatusCode.INVALID_ARGUMENT": InvalidInput,
    "403": AccessDenied,
    "StatusCode.PERMISSION_DENIED": AccessDenied,
    "404": ModelNotReady,
    "StatusCode.NOT_FOUND": ModelNotReady,
    "StatusCode.DEADLINE_EXCEEDED": RequestTimeout,
    "StatusCode.UNAVAILABLE": ServerUnreachable,
}


def map_error(exc: BaseException, where: str, offset: int = 0) -> MoEClientError | None:
    """The moe_client error for an exception of tritonclient or of the network below it;
    None for anything else (a bug, which keeps its own traceback). `offset`: index of the
    request's first text in the caller's list (the server counts TEXT[i] from its request)."""
    if isinstance(exc, MoEClientError):
        return exc
    if isinstance(exc, InferenceServerException):
        status, msg = str(exc.status() or ""), exc.message() or str(exc)
        kind = STATUS_ERRORS.get(status)
        # Over gRPC, Triton 2.51 refuses a restricted API with UNAVAILABLE, the code of an
        # unreachable server: only its message tells them apart.
        if kind is AccessDenied or (kind is ServerUnreachable and "is restricted, expecting header" in msg):
            return AccessDenied(f"{msg}: give the client the server's admin_key")
        if kind is RequestTimeout:
            return RequestTimeout(f"no answer from {where} in time: {msg}")
        # A full queue and a queue timeout come with the unreachable server's code too.
        if kind is ServerUnreachable and ("Exceeds maximum queue size" in msg or "Request timeout expired" in msg):
            return ServerBusy(f"{where} is busy: {msg}")
        if kind is ServerUnreachable:
            return ServerUnreachable(f"cannot reach {where}: {msg}")
        if kind is ModelNotReady:
            return ModelNotReady(msg)
        if kind is InvalidInput:
            note = f" (TEXT[i] is texts[{offset} + i])" if offset else ""
            return InvalidInput(msg + note, server_message=msg)
        return MoEClientError(f"{where}: {msg}")
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "Timeout":  # gevent.Timeout too
        return RequestTimeout(f"no answer from {where} in time")
    try:
        from aiohttp import ClientConnectionError
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        ClientConnectionError = OSError
    if isinstance(exc, (OSError, ClientConnectionError)):
        return ServerUnreachable(f"cannot reach {where}: {exc or type(exc).__name__}")
    return None


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0, 1, ...)."""
    return min(0.1 * 2**attempt, 1.0)


class ClientBase:
    """Options and per-server facts shared by the sync and async clients."""

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: str = "http",
        workflow: str = "v2",
        timeout: float = 30.0,
        retries: int = 2,
        admin_key: str | None = None,
    ):
        check_options(protocol, retries, timeout)
        self.url, self.protocol, self.workflow = url, protocol, workflow
        self.timeout, self.retries = timeout, retries
        grpc = protocol == "grpc"
        # tritonclient.http or tritonclient.grpc: its InferInput and friends build the requests.
        self._module = importlib.import_module("tritonclient.grpc" if grpc else "tritonclient.http")
        # HTTP clients take the timeout once, when made; gRPC calls take it each time.
        self._call_kwargs = {"client_timeout": timeout} if grpc else {}
        self._json = {"as_json": True} if grpc else {}
        header = (GRPC_HEADER_PREFIX if grpc else "") + ADMIN_HEADER
        self._admin = {"headers": {header: admin_key}} if admin_key else {}
        self._specs: dict[str, ModelSpec] = {}
        self._labels: list[str] | None = None

    @property
    def _where(self) -> str:
        return f"{self.protocol} server at {self.url}"

    def _error(self, exc: BaseException, attempt: int, offset: int = 0) -> tuple[MoEClientError | None, bool]:
        """(the error to raise, whether to retry instead)."""
        error = map_error(exc, self._where, offset)
        if isinstance(error, ServerUnreachable):
            if attempt < self.retries:
                return error, True
            if self.retries:
                error = ServerUnreachable(f"{error} (after {attempt + 1} attempts)")
        return error, False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, protocol={self.protocol!r}, workflow={self.workflow!r})"
