"""The BLS's own code (model_repository/moe_bls/1) without tritonserver: a stand-in for
triton_python_backend_utils whose requests run pieces in this process, the TorchScript pieces
of an export or the eager modules they are scripted from. Ensembles run the steps their config
files list, so the chaining the server does is the chaining the files say."""

import asyncio
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

import moe.routing
from export.repository import MODEL_TEMPLATES

ROOT = Path(__file__).resolve().parents[2]
BLS_FOLDER = ROOT / "model_repository" / "moe_bls" / "1"
SHARED_FOLDER = ROOT / "model_repository" / "lib"
ENSEMBLES = ("embedding_attention_gating", "attention_gating", "experts")


class Tensor:
    def __init__(self, name: str, value: torch.Tensor):
        self._name, self.value = name, value

    @classmethod
    def from_dlpack(cls, name, tensor):
        return cls(name, from_dlpack(tensor))

    def name(self) -> str:
        return self._name

    def to_dlpack(self):
        return to_dlpack(self.value)


class TritonError:
    INTERNAL, UNAVAILABLE = "INTERNAL", "UNAVAILABLE"

    def __init__(self, message: str, code=INTERNAL):
        self._message, self.code = message, code

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error_ = output_tensors, error

    def has_error(self) -> bool:
        return self.error_ is not None

    def error(self):
        return self.error_


class Server:
    """Triton model name -> callable on positional tensors (INPUT__i -> OUTPUT__i), plus the
    ensembles' steps; `calls` logs every model run, in order."""

    def __init__(self, pieces: dict, ensemble_steps: dict):
        self.pieces, self.ensemble_steps, self.calls = pieces, ensemble_steps, []

    def run(self, model: str, inputs: dict) -> dict:
        self.calls.append(model)
        if model in self.ensemble_steps:
            values = dict(inputs)
            for step, input_map, output_map in self.ensemble_steps[model]:
                out = self.run(step, {key: values[value] for key, value in input_map})
                values.update({value: out[key] for key, value in output_map})
            return values
        with torch.no_grad():
            out = self.pieces[model](*(inputs[f"INPUT__{i}"] for i in range(len(inputs))))
        return {f"OUTPUT__{i}": t for i, t in enumerate(out if isinstance(out, tuple) else (out,))}


class InferenceRequest:
    def __init__(self, model_name, requested_output_names, inputs, preferred_memory=None, parameters=None):
        self.model_name, self.names, self.inputs = model_name, requested_output_names, inputs
        self._parameters = parameters or {}

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def exec(self):
        try:
            out = pb_utils.server.run(self.model_name, {t.name(): t.value for t in self.inputs})
        except Exception as e:  # noqa: BLE001 - a failing piece is an error response, as in Triton
            return InferenceResponse([], TritonError(f"{type(e).__name__}: {e}"))
        return InferenceResponse([Tensor(n, out[n]) for n in self.names])

    async def async_exec(self):
        return self.exec()


class MetricFamily:
    COUNTER = "counter"

    def __init__(self, name, kind, description):
        self.name, self.metrics = name, []

    def Metric(self, labels):  # noqa: N802 - pb_utils's spelling
        metric = types.SimpleNamespace(labels=labels, value=0)
        metric.increment = lambda n, m=metric: setattr(m, "value", m.value + n)
        self.metrics.append(metric)
        return metric


def tensor_by_name(holder, name):
    tensors = holder.inputs if isinstance(holder, InferenceRequest) else holder.output_tensors
    return next(t for t in tensors if t.name() == name)


pb_utils = types.ModuleType("triton_python_backend_utils")
pb_utils.__dict__.update(
    Tensor=Tensor,
    TritonError=TritonError,
    InferenceResponse=InferenceResponse,
    InferenceRequest=InferenceRequest,
    MetricFamily=MetricFamily,
    TritonModelException=RuntimeError,
    PreferredMemory=lambda kind, device: (kind, device),
    TRITONSERVER_MEMORY_CPU="CPU",
    TRITONSERVER_MEMORY_GPU="GPU",
    get_input_tensor_by_name=tensor_by_name,
    get_output_tensor_by_name=tensor_by_name,
    server=None,
)


def ensemble_steps(config: str) -> list:
    """(model, input_map, output_map) of each step of an ensemble's config.pbtxt."""
    steps = []
    for block in config.split("model_name:")[1:]:
        pairs = {
            kind: re.findall(kind + r' \{ key: "(\w+)" value: "(\w+)" \}', block)
            for kind in ("input_map", "output_map")
        }
        steps.append((re.match(r'\s*"(\w+)"', block).group(1), pairs["input_map"], pairs["output_map"]))
    return steps


def eager_server(pieces: dict, n_experts: int) -> Server:
    """The eager pieces (export.pieces.build_pieces) and the ensembles of the templates."""
    steps = {name: ensemble_steps((MODEL_TEMPLATES / name / "config.pbtxt").read_text()) for name in ENSEMBLES}
    assert len(steps["experts"]) == n_experts, "the experts ensemble's file has a step per expert"
    return Server(pieces, steps)


def exported_server(out: Path) -> Server:
    """The TorchScript pieces and the ensembles of an export."""
    models = out / "model_repository"
    pieces = {p.parent.parent.name: torch.jit.load(str(p)) for p in models.glob("*/1/model.pt")}
    steps = {n: ensemble_steps((models / n / "config.pbtxt").read_text()) for n in ENSEMBLES if (models / n).is_dir()}
    return Server(pieces, steps)


def load_bls_module():
    """model_repository/moe_bls/1/model.py, imported as Triton's Python backend imports it."""
    sys.modules["triton_python_backend_utils"] = pb_utils
    sys.modules["moe_routing"] = moe.routing  # `moe export` copies moe/routing.py under this name
    for folder in (BLS_FOLDER, SHARED_FOLDER):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("moe_bls_model", BLS_FOLDER / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_bls(server: Server, n_layers: int, n_experts: int, **parameters):
    """An initialized TritonPythonModel of the BLS on the CPU, its requests served by `server`."""
    pb_utils.server = server
    parameters = (
        dict(n_layers=n_layers, n_experts=n_experts, expert_models=",".join(f"expert_{e}" for e in range(n_experts)))
        | parameters
    )
    config = {"parameters": {k: {"string_value": str(v)} for k, v in parameters.items()}}
    bls = load_bls_module().TritonPythonModel()
    bls.initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    return bls


def execute(bls, batches: list, expert_tokens: bool = True) -> list:
    """The BLS's responses to one request per (ids, mask) in `batches`, batched together as the
    dynamic batcher would: [(LOGITS, EXPERT_TOKENS or None)] or the error responses."""
    requests = [
        InferenceRequest(
            "moe_bls",
            [],
            [Tensor("INPUT_IDS", ids), Tensor("ATTENTION_MASK", mask)],
            None,
            {"expert_tokens": expert_tokens},
        )
        for ids, mask in batches
    ]
    return asyncio.run(bls.execute(requests))
