"""What every Python model of this repository shares: its config parameters, error responses,
and torch <-> Triton tensors without copies. `moe export` copies this file next to each
Python model's model.py (Triton puts that folder on the model's import path).

torch is imported only by the function that needs it, so a model that converts no tensors (the
tokenizer, post-processing) does not load it.
"""

import json

import triton_python_backend_utils as pb_utils


def model_parameters(args) -> dict:
    """The `parameters` of the model's config.pbtxt, as strings by key."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def error_response(message: str, code=None):
    # A TritonError of its own for every response: responses sharing one error object crash
    # tritonserver 2.51.
    code = pb_utils.TritonError.INTERNAL if code is None else code
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def error_responses(n: int, message: str, code=None) -> list:
    return [error_response(message, code) for _ in range(n)]


def to_triton(name: str, tensor):
    """A torch tensor (CPU or GPU) as a Triton tensor, sharing its memory through DLPack. Given
    the tensor itself, pb_utils has a CUDA tensor's pending work finished before handing it on."""
    return pb_utils.Tensor.from_dlpack(name, tensor.contiguous())


def to_torch(tensor):
    """A Triton tensor as a torch tensor on the device it is on, sharing its memory."""
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack())
