"""MoEClient: blocking calls over tritonclient.http or tritonclient.grpc."""

from __future__ import annotations

import time
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


class MoEClient(ClientBase):
    """Classify news texts with the MoE model served by Triton.

    url is host:port of the server's HTTP (default 8000) or gRPC (8001) endpoint; workflow
    'v2' is the monolith, 'v1' the distributed pipeline (the only one that reports routing).
    Not thread-safe: use one client per thread, or AsyncMoEClient for concurrency.
    """

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
        if protocol == "http":
            self._client = self._module.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        else:
            self._client = self._module.InferenceServerClient(url, channel_args=GRPC_CHANNEL_ARGS)

    def classify(
        self, text_or_texts: str | Iterable[str], workflow: str | None = None, return_routing: bool = False
    ) -> Prediction | list[Prediction]:
        """One Prediction for a str, a list of them for a list of str (sent in chunks of the
        model's max batch size). return_routing=True adds expert_tokens (workflow 'v1')."""
        texts, single = as_texts(text_or_texts)
        spec = self._spec(workflow or self.workflow)
        check_routing(spec, return_routing)
        labels = self._class_names()
        predictions = []
        for offset, part in chunks(texts, spec.max_batch_size):
            request = build_request(self._module, part, return_routing)
            result = self._call("infer", spec.name, **request, offset=offset)
            predictions += parse_result(result, part, labels, return_routing)
        return predictions[0] if single else predictions

    def ready(self, workflow: str | None = None) -> bool:
        """Whether the server and the workflow's model are ready (False when unreachable)."""
        try:
            name = model_name(workflow or self.workflow)
            return bool(self._call("is_server_ready") and self._call("is_model_ready", name))
        except (ServerUnreachable, RequestTimeout):
            return False

    def models(self) -> list[ModelInfo]:
        """Every model of the server's repository index: name, version, state. `moe serve`
        keeps the index for admins: make the client with admin_key= (else AccessDenied)."""
        return parse_index(self._call("get_model_repository_index", **self._json, **self._admin))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MoEClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, workflow: str) -> ModelSpec:
        name = model_name(workflow)
        if name not in self._specs:
            self._specs[name] = parse_spec(name, self._call("get_model_config", name, **self._json))
        return self._specs[name]

    def _class_names(self) -> list[str]:
        if self._labels is None:
            self._labels = parse_labels(self._call("get_model_config", LABELS_MODEL, **self._json))
        return self._labels

    def _call(self, method: str, *args, offset: int = 0, **kwargs):
        """A tritonclient call with its errors mapped; unreachable servers are retried."""
        for attempt in range(self.retries + 1):
            try:
                return getattr(self._client, method)(*args, **kwargs, **self._call_kwargs)
            except Exception as e:
                error, retry = self._error(e, attempt, offset)
                if error is None:
                    raise
                if not retry:
                    raise error from e
            time.sleep(backoff(attempt))
