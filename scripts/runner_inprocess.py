"""Run the Python-side Triton runners in-process, without tritonserver, on CPU or GPUs.

The tritonserver binary is too large to carry to a GPU machine, so this drives the very files
Triton runs (backends/torchscript/model.py, and the BLS's tensor conversion) through a small
stand-in for the C++-provided `triton_python_backend_utils` module, with the configs and
model.pt files that `moe export --device cuda` writes. Every piece's output is compared with the
eager model on the CPU; on several GPUs the experts sit on GPU e mod n as exported.

    python scripts/runner_inprocess.py --device cuda [--out results.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def stand_in_backend_utils() -> types.ModuleType:
    """The subset of triton_python_backend_utils our runners use, over torch/numpy."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, data):
            self._name, self._data = name, data

        @classmethod
        def from_dlpack(cls, name, capsule):
            return cls(name, from_dlpack(capsule))

        def name(self):
            return self._name

        def is_cpu(self):
            return not (isinstance(self._data, torch.Tensor) and self._data.is_cuda)

        def as_numpy(self):
            if not self.is_cpu():
                raise RuntimeError("as_numpy() of a GPU tensor")
            return self._data.numpy() if isinstance(self._data, torch.Tensor) else self._data

        def to_dlpack(self):
            data = self._data if isinstance(self._data, torch.Tensor) else torch.from_numpy(self._data)
            return to_dlpack(data)

    class TritonError:
        INTERNAL, INVALID_ARG, UNAVAILABLE = "INTERNAL", "INVALID_ARG", "UNAVAILABLE"

        def __init__(self, message, code="INTERNAL"):
            self._message = message

        def message(self):
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class Request:
        def __init__(self, tensors):
            self.tensors = tensors

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.Request = Tensor, TritonError, InferenceResponse, Request
    pb.TritonModelException = RuntimeError
    pb.get_input_tensor_by_name = lambda request, name: next(t for t in request.tensors if t.name() == name)
    return pb


def parse_config(path: Path) -> dict:
    """The fields the runner reads, from the exported config.pbtxt (Triton gives it as JSON)."""
    text = path.read_text()
    def tensors(kind):   # `input [ ... ]` on one line or many: the block ends at a line-final ']'
        block = re.search(rf"^{kind} \[(.*?)\]$", text, re.M | re.S).group(1)
        return [{"name": n} for n in re.findall(r'name: "(\w+)"', block)]
    params = dict(re.findall(r'key: "(\w+)" value: \{ string_value: "([^"]*)" \}', text))
    return {"name": re.search(r'^name: "(\w+)"', text, re.M).group(1),
            "max_batch_size": int(re.search(r"^max_batch_size: (\d+)", text, re.M).group(1)),
            "input": tensors("input"), "output": tensors("output"),
            "parameters": {k: {"string_value": v} for k, v in params.items()},
            "gpu": int(m.group(1)) if (m := re.search(r"KIND_GPU gpus: \[ (\d+) \]", text)) else None}


def load_runner(pb, folder: Path):
    sys.modules["triton_python_backend_utils"] = pb
    spec = importlib.util.spec_from_file_location(f"runner_{folder.name}", ROOT / "backends" / "torchscript" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = parse_config(folder / "config.pbtxt")
    runner = module.TritonPythonModel()
    runner.initialize({"model_config": json.dumps(config), "model_repository": str(folder), "model_version": "1",
                       "model_instance_kind": "GPU" if config["gpu"] is not None else "CPU",
                       "model_instance_device_id": str(config["gpu"] or 0)})
    return runner, config


def check(device: str, gpus: int) -> dict:
    from export.pieces import sample_inputs
    from export.repository import ExportOptions, export_repository
    from moe.checkpoint import save_checkpoint
    from moe.config import preset
    from moe.model import MoEClassifier
    from moe.tokenizer import train_tokenizer
    pb = stand_in_backend_utils()
    torch.manual_seed(0)
    cfg = preset("tiny")
    texts = ["Stocks fall as oil rises", "The team wins the final", "A new chip for phones", "Talks in Geneva"] * 40
    tok = train_tokenizer(texts, cfg.vocab_size, cfg.max_len)
    model = MoEClassifier(cfg).eval()
    work = Path(tempfile.mkdtemp())
    save_checkpoint(work / "ckpt", model, tok.to_str(), {})
    repo = export_repository(work / "ckpt", work / "build", ExportOptions(device=device, gpus=gpus),
                             progress=False, log=lambda *_: None) / "model_repository"
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, cfg.vocab_size, (6, 20), generator=g)
    mask = torch.arange(20)[None] < torch.tensor([20, 3, 17, 9, 1, 12])[:, None]
    ids[~mask] = 0
    samples = sample_inputs(model, ids, mask)
    from export.pieces import build_pieces
    pieces = build_pieces(model)
    report = {"device": device, "gpus": gpus, "torch": torch.__version__,
              "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "models": {}}
    for name, module in pieces.items():
        runner, config = load_runner(pb, repo / name)
        worst, placed = 0.0, set()
        for args in samples[name]:
            inputs = [pb.Tensor(n["name"], a.numpy()) for n, a in zip(runner_inputs(config), args)]
            (response,) = runner.execute([pb.Request(inputs)])
            assert response.error is None, response.error and response.error.message()
            with torch.no_grad():
                expected = module(*args)
            expected = expected if isinstance(expected, tuple) else (expected,)
            for out, exp in zip(response.output_tensors, expected):
                got = from_dlpack(out.to_dlpack())
                placed.add(str(got.device))
                worst = max(worst, (got.cpu().double() - exp.double()).abs().max().item() if exp.numel() else 0.0)
        report["models"][name] = {"max_abs_diff": worst, "device": sorted(placed), "config_gpu": config["gpu"]}
        if worst > 1e-4:
            raise SystemExit(f"{name}: runner output differs from eager by {worst}")
    return report


def runner_inputs(config):
    return sorted(config["input"], key=lambda n: int(n["name"].rsplit("__", 1)[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    gpus = max(1, torch.cuda.device_count()) if args.device == "cuda" else 1
    report = check(args.device, gpus)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
