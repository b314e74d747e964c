"""A Python-based Triton backend that runs a TorchScript `1/model.pt`.

Same contract as NVIDIA's pytorch_libtorch backend (inputs INPUT__0.., outputs OUTPUT__0..,
parameters INTRA_OP_THREAD_COUNT / INTER_OP_THREAD_COUNT), so one model repository serves in
NVIDIA's container with `backend: "pytorch"` and here, where the bundled tritonserver has only
the Python backend, with `backend: "torchscript"`.
"""
import json
import re
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack


def _ordered(entries, prefix):
    names = [e["name"] for e in entries]
    for n in names:
        if not re.fullmatch(prefix + r"__\d+", n):
            raise pb_utils.TritonModelException(f"tensor {n!r} does not follow the {prefix}__<index> convention")
    return sorted(names, key=lambda n: int(n.rsplit("__", 1)[1]))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        torch.set_num_threads(int(params.get("INTRA_OP_THREAD_COUNT", "1")))
        try:
            torch.set_num_interop_threads(int(params.get("INTER_OP_THREAD_COUNT", "1")))
        except RuntimeError:
            pass  # already set in this process
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device("cuda", int(args["model_instance_device_id"]))
        else:
            self.device = torch.device("cpu")
        path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.inputs = _ordered(config["input"], "INPUT")
        self.outputs = _ordered(config["output"], "OUTPUT")
        self.batched = config.get("max_batch_size", 0) > 0
        # With allow_ragged_batch, requests of different lengths arrive together: pad them with
        # zeros along dim 1 (pad id 0, mask False: padding changes no result), run one batch.
        self.pad_ragged = params.get("PAD_RAGGED", "false").lower() in ("1", "true")

    def _join(self, column):
        if self.pad_ragged and column[0].dim() > 1:
            T = max(t.shape[1] for t in column)
            column = [t if t.shape[1] == T else torch.nn.functional.pad(
                t, (0, 0) * (t.dim() - 2) + (0, T - t.shape[1])) for t in column]
        return torch.cat(column)

    def _run(self, inputs):
        with torch.inference_mode():
            result = self.model(*inputs)
        return result if isinstance(result, tuple) else (result,)

    def _inputs(self, request):
        tensors = []
        for name in self.inputs:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t.is_cpu():
                array = t.as_numpy()
                tensor = torch.from_numpy(array.copy()) if array.dtype == bool else from_dlpack(t.to_dlpack())
            else:
                tensor = from_dlpack(t.to_dlpack())
            tensors.append(tensor.to(self.device))
        return tensors

    def _response(self, outputs):
        tensors = []
        for name, t in zip(self.outputs, outputs):
            t = t.contiguous()
            tensors.append(pb_utils.Tensor(name, t.cpu().numpy()) if t.dtype == torch.bool
                           else pb_utils.Tensor.from_dlpack(name, to_dlpack(t)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, e):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
            f"{self.name}: {str(e).strip().splitlines()[-1]}"))

    def execute(self, requests):
        inputs = [self._inputs(r) for r in requests]
        # Requests the dynamic batcher grouped run as one batch.
        if self.batched and len(requests) > 1:
            try:
                outputs = self._run([self._join(column) for column in zip(*inputs)])
                responses, start = [], 0
                for request_inputs in inputs:
                    n = request_inputs[0].shape[0]
                    responses.append(self._response([o[start:start + n] for o in outputs]))
                    start += n
                return responses
            except RuntimeError:
                pass  # shapes could not be joined or one request is bad: run each alone
        responses = []
        for request_inputs in inputs:
            try:
                responses.append(self._response(self._run(request_inputs)))
            except Exception as e:  # noqa: BLE001 - every request gets an answer
                responses.append(self._error(e))
        return responses
