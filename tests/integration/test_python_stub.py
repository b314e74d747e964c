"""The Python backend's stub and this environment run one Python: the stub embeds the libpython
the dynamic loader finds (the system's) and takes its standard library from the environment of
the `python3` first on PATH (ours). A venv made from another patch release mixes the two, and
the standard library breaks where it reaches into the core (multiprocessing's resource tracker
calls `RLock._recursion_count`, which 3.11.2's core lacks and 3.11.7's library uses)."""

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from serving.server import ServerOptions, TritonServer, free_ports, triton_dist


def stub_libpython() -> Path:
    dist, _ = triton_dist()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    out = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name.startswith(f"libpython{version}"):
            return Path(rest.split(" (")[0]).resolve()
    raise AssertionError(f"the stub links no libpython{version}:\n{out}")


def test_the_venv_is_made_from_the_interpreter_whose_libpython_the_stub_embeds():
    # The interpreter the venv was made from and its shared library, as it was built.
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    ours = Path(libdir, soname)
    assert ours.is_file(), f"{sys._base_executable} has no shared libpython ({ours}): make setup uses /usr/bin/python3"
    assert ours.resolve() == stub_libpython(), (
        f"the stub embeds {stub_libpython()} but this venv comes from {sys._base_executable} ({ours.resolve()})"
    )


MODEL = textwrap.dedent(
    """
    import multiprocessing
    import threading
    from multiprocessing import shared_memory

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            # What PyTriton's models do at start: a shared-memory segment (registered with the
            # resource tracker, which takes an RLock's recursion count) and a process-safe lock.
            self.segment = shared_memory.SharedMemory(create=True, size=64)
            self.lock = multiprocessing.get_context("spawn").Lock()
            self.rlock = threading.RLock()

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
                with self.rlock, self.lock:
                    self.segment.buf[: x.nbytes] = x.tobytes()
                    y = np.frombuffer(bytes(self.segment.buf[: x.nbytes]), dtype=x.dtype).reshape(x.shape) * 2
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
            return responses

        def finalize(self):
            self.segment.close()
            self.segment.unlink()
    """
)

CONFIG = textwrap.dedent(
    """
    name: "uses_multiprocessing"
    backend: "python"
    max_batch_size: 0
    input [{ name: "X", data_type: TYPE_FP32, dims: [ 4 ] }]
    output [{ name: "Y", data_type: TYPE_FP32, dims: [ 4 ] }]
    instance_group [{ kind: KIND_CPU, count: 1 }]
    """
)


def test_a_python_model_using_multiprocessing_loads_and_answers(tmp_path):
    model = tmp_path / "repository" / "uses_multiprocessing"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL)
    (model / "config.pbtxt").write_text(CONFIG)
    http, grpc, metrics = free_ports(3)
    server = TritonServer(ServerOptions(repository=model.parent, http_port=http, grpc_port=grpc, metrics_port=metrics))
    try:
        # start() raises with the server's own error (the stub's traceback) if the model fails to load.
        server.start(timeout=120)
        client = httpclient.InferenceServerClient(server.http_url)
        x = np.arange(4, dtype=np.float32)
        inp = httpclient.InferInput("X", [4], "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("uses_multiprocessing", [inp]).as_numpy("Y")
        np.testing.assert_array_equal(y, x * 2)
        client.close()
        server.stop()
        # finalize() ran too: the segment was unlinked without a complaint from the tracker.
        assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
    finally:
        server.stop()
        server.cleanup()
