"""A lean KServe v2 HTTP client for load generation: the request of `moe_client`, sent and read
with asyncio's streams and nothing else.

On this 2-core machine the load generator shares the cores with the server it measures. Sending
single texts to v2 at concurrency 64, the product's AsyncMoEClient (tritonclient over aiohttp, a
Prediction per text) spent 0.67-0.71 ms of CPU per request, a quarter of a core; this client
0.23-0.26 ms, and the same server answered 3-21 % more texts per second (docs/benchmarks.md).
NVIDIA's perf_analyzer, a C++ load generator, is what Triton is usually measured with; it is not
installable here.

It sends what `moe_client` sends for a list of texts (TEXT as binary BYTES; LABEL, LABEL_ID and
PROBS asked as binary outputs), one keep-alive connection per request in flight, and reads back
the labels alone: what the bench compares with the eager model.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass

from moe_client._core import OUTPUTS, model_name


class RequestFailed(Exception):
    """The server answered with an error status; the message is the server's."""


@dataclass(frozen=True)
class Answer:
    label: str


def encode_bytes(items: list[bytes]) -> bytes:
    """A BYTES tensor's binary form: each element as a little-endian uint32 length and its bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_bytes(raw: bytes) -> list[bytes]:
    items, i = [], 0
    while i < len(raw):
        (n,) = struct.unpack_from("<I", raw, i)
        items.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    return items


def infer_request(host: str, workflow: str, texts: list[str]) -> bytes:
    """The whole HTTP/1.1 request: a JSON header, then the binary TEXT tensor."""
    payload = encode_bytes([t.encode("utf-8", "surrogatepass") for t in texts])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "TEXT",
                    "shape": [len(texts), 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload)},
                }
            ],
            "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in OUTPUTS],
        }
    ).encode()
    return (
        (
            f"POST /v2/models/{model_name(workflow)}/infer HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + len(payload)}\r\n\r\n"
        ).encode()
        + header
        + payload
    )


def parse_labels(headers: dict[str, str], body: bytes) -> list[str]:
    """The LABEL output of an inference response (binary outputs after a JSON header)."""
    json_size = int(headers.get("inference-header-content-length", len(body)))
    meta = json.loads(body[:json_size])
    offset = json_size
    for output in meta["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if output["name"] == "LABEL":
            if size is None:
                return [str(x) for x in output["data"]]
            return [b.decode("utf-8") for b in decode_bytes(body[offset : offset + size])]
        offset += size or 0
    raise RequestFailed("the response has no LABEL output")


class RawHttpClient:
    """`await client.classify(texts, workflow)` -> [Answer(label), ...], as AsyncMoEClient's
    classify returns predictions: what bench.load.closed_loop needs. Use it in one event loop."""

    def __init__(self, url: str, timeout: float = 60.0):
        host, _, port = url.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"url must be host:port, not {url!r}")
        self.host, self.port, self.url, self.timeout = host, int(port), url, timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def classify(self, texts: list[str], workflow: str = "v2") -> list[Answer]:
        request = infer_request(self.url, workflow, list(texts))
        status, headers, body = await asyncio.wait_for(self._exchange(request), self.timeout)
        if status != 200:
            try:
                message = json.loads(body).get("error", "")
            except ValueError:
                message = body[:200].decode("utf-8", "replace")
            raise RequestFailed(f"HTTP {status}: {message}")
        return [Answer(label) for label in parse_labels(headers, body)]

    async def _exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        reused = bool(self._idle)
        reader, writer = self._idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            if not reused:
                raise
            # A kept-alive connection the server had closed: send again on another (an inference
            # changes nothing on the server, so a request it may have read is safe to repeat).
            return await self._exchange(request)
        except BaseException:
            writer.close()  # a timeout or cancellation leaves the connection mid-answer
            raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        try:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, headers, body

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()

    async def __aenter__(self) -> RawHttpClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
