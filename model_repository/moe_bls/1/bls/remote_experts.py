"""expert_N models on other Triton servers (`moe serve --experts-at HOST:PORT,...` lists them in
MOE_REMOTE_EXPERTS), reached with tritonclient's asyncio gRPC client."""

import torch

from .orchestrator import StepFailed


class ExpertsUnreachable(Exception):
    """A listed server cannot be reached, or no listed server serves some expert."""


class RemoteExperts:
    def __init__(self, endpoints, expert_names, timeout_s):
        import tritonclient.grpc as grpc_sync

        self.timeout_s = timeout_s
        self.where = {}
        for url in endpoints:
            client = grpc_sync.InferenceServerClient(url)
            try:
                for name in expert_names:
                    if name not in self.where and client.is_model_ready(name):
                        self.where[name] = url
            except Exception as e:  # noqa: BLE001 - any failure means the server is unusable
                raise ExpertsUnreachable(f"expert server {url} is unreachable: {e}") from None
            finally:
                client.close()
        missing = [n for n in expert_names if n not in self.where]
        if missing:
            raise ExpertsUnreachable(f"{', '.join(missing)} not served by any of {', '.join(endpoints)}")
        self.clients = {}

    def client(self, url):
        if url not in self.clients:
            import tritonclient.grpc.aio as grpc_aio

            self.clients[url] = grpc_aio.InferenceServerClient(url)
        return self.clients[url]

    async def call(self, name, inputs) -> list:
        """Expert `name` on its tensors [h, layer] -> [its output], on the CPU."""
        import tritonclient.grpc as grpc_sync
        from tritonclient.utils import np_to_triton_dtype

        url = self.where[name]
        tensors = []
        for i, t in enumerate(inputs):
            array = t.contiguous().cpu().numpy()
            tensors.append(grpc_sync.InferInput(f"INPUT__{i}", list(array.shape), np_to_triton_dtype(array.dtype)))
            tensors[-1].set_data_from_numpy(array)
        try:
            result = await self.client(url).infer(
                name, tensors, outputs=[grpc_sync.InferRequestedOutput("OUTPUT__0")], client_timeout=self.timeout_s
            )
        except Exception as e:  # noqa: BLE001 - whatever broke, the step failed and says where
            # A fresh channel next time: gRPC's reconnect back-off would delay recovery.
            client = self.clients.pop(url, None)
            if client is not None:
                await client.close()
            raise StepFailed(f"{name} at {url}: {str(e).splitlines()[0]}") from None
        return [torch.from_numpy(result.as_numpy("OUTPUT__0").copy())]
