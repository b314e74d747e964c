"""AsyncMoEClient: the same calls as MoEClient, as coroutines over tritonclient's aio clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ._core import (
    GRPC_CHANNEL_ARGS,
    LABELS_MODEL,
    ClientBase,
    ModelInfo,
    ModelSpec,
    Prediction,
    RequestTimeout,
    ServerUnreachable,
    as_texts,
    backoff,
    build_request,
    check_routing,
    chunks,
    model_name,
    parse_index,
    parse_labels,
    parse_result,
    parse_spec,
)


class AsyncMoEClient(ClientBase):
    """MoEClient for asyncio: many concurrent classify() calls share one connection pool, and
    the chunks of a long list are sent concurrently. Use it inside one event loop."""

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: str = "http",
        workflow: str = "v2",
        timeout: float = 30.0,
        retries: int = 2,
        admin_key: str | None = None,
    ):
        super().__init__(url, protocol, workflow, timeout, retries, admin_key)
        self._client = None  # made in the event loop, at the first call

    async def classify(
        self, text_or_texts: str | Iterable[str], workflow: str | None = None, return_routing: bool = False
    ) -> Prediction | list[Prediction]:
        """See MoEClient.classify."""
        texts, single = as_texts(text_or_texts)
        spec = await self._spec(workflow or self.workflow)
        check_routing(spec, return_routing)
        labels = await self._class_names()

        async def send(offset, part):
            request = build_request(self._module, part, return_routing)
            result = await self._call("infer", spec.name, **request, offset=offset)
            return parse_result(result, part, labels, return_routing)

        parts = await asyncio.gather(*(send(o, p) for o, p in chunks(texts, spec.max_batch_size)))
        predictions = [p for part in parts for p in part]
        return predictions[0] if single else predictions

    async def ready(self, workflow: str | None = None) -> bool:
        """Whether the server and the workflow's model are ready (False when unreachable)."""
        try:
            name = model_name(workflow or self.workflow)
            return bool(await self._call("is_server_ready") and await self._call("is_model_ready", name))
        except (ServerUnreachable, RequestTimeout):
            return False

    async def models(self) -> list[ModelInfo]:
        """Every model of the server's repository index: name, version, state. `moe serve`
        keeps the index for admins: make the client with admin_key= (else AccessDenied)."""
        index = await self._call("get_model_repository_index", **self._json, **self._admin)
        return parse_index(index)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> AsyncMoEClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _spec(self, workflow: str) -> ModelSpec:
        name = model_name(workflow)
        if name not in self._specs:
            config = await self._call("get_model_config", name, **self._json)
            self._specs[name] = parse_spec(name, config)
        return self._specs[name]

    async def _class_names(self) -> list[str]:
        if self._labels is None:
            config = await self._call("get_model_config", LABELS_MODEL, **self._json)
            self._labels = parse_labels(config)
        return self._labels

    def _connection(self):
        if self._client is None:
            if self.protocol == "http":
                import tritonclient.http.aio as aio

                self._client = aio.InferenceServerClient(self.url, conn_timeout=self.timeout)
            else:
                import tritonclient.grpc.aio as aio

                self._client = aio.InferenceServerClient(self.url, channel_args=GRPC_CHANNEL_ARGS)
        return self._client

    async def _call(self, method: str, *args, offset: int = 0, **kwargs):
        """A tritonclient call with its errors mapped; unreachable servers are retried."""
        for attempt in range(self.retries + 1):
            try:
                call = getattr(self._connection(), method)
                return await call(*args, **kwargs, **self._call_kwargs)
            except Exception as e:
                error, retry = self._error(e, attempt, offset)
                if error is None:
                    raise
                if not retry:
                    raise error from e
            await asyncio.sleep(backoff(attempt))
