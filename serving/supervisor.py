"""Triton's Python backend does not restart a stub that died (OOM kill, crash): its model
answers every request with "Stub process ... is not healthy". A thread here reloads such a
model through the repository API, which the admin key opens."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

from moe_client import ADMIN_HEADER

from .processes import children, cmdline


def python_stubs(server_pid: int) -> dict[str, int]:
    """Model name -> pid of its Python backend stub (one instance per Python model here)."""
    found = {}
    for pid in children(server_pid):
        args = cmdline(pid)
        if args and args[0].endswith("triton_python_backend_stub"):
            found[Path(args[1]).parent.parent.name] = pid
    return found


class StubSupervisor:
    def __init__(self, process, http_url: str, admin_key: str, interval: float = 0.5):
        self.process, self.http_url, self.admin_key, self.interval = process, http_url, admin_key, interval
        self.restarts: list[str] = []  # models reloaded after their stub died
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-supervisor", daemon=True)

    def start(self) -> StubSupervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=130)

    def _repository_call(self, model: str, action: str) -> None:
        request = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/models/{model}/{action}",
            data=b"{}",
            method="POST",
            headers={ADMIN_HEADER: self.admin_key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()

    def reload(self, model: str) -> None:
        # A load of an unchanged, loaded model is a no-op in Triton: unload it first.
        self._repository_call(model, "unload")
        self._repository_call(model, "load")

    def _run(self) -> None:
        known = python_stubs(self.process.pid)
        while not self._stopping.wait(self.interval):
            if self.process.poll() is not None:
                return
            alive = python_stubs(self.process.pid)
            for model in sorted(set(known) - set(alive)):
                if self._stopping.is_set():
                    return
                try:
                    self.reload(model)
                    self.restarts.append(model)
                except OSError:
                    continue  # retried at the next pass
            known = python_stubs(self.process.pid)
