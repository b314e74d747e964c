"""v2's model in half precision, allowed only where it gives the fp32 model's answers.

On an H200 full_model in fp32 was the bound of v2 once the tokenizer was cheap: 60,431 texts/s in
process with four instances' worth of threads on batches of 256, against 117,878 in fp16, with
every one of the 7,600 test labels equal to fp32's (scripts/gpu/full_model_profile.py,
docs/gpu_serving.md). Half precision moves the probabilities, so v1 (fp32) and v2 then agree on
labels, not to the last digit.

`moe export --full-model-dtype float16` (or bfloat16) runs the gate below on the export machine's
device (the GPU where the export is for one and one is present): every test text through the
fp32 model and through the half one; any label unlike fp32's, or a probability further than
TOLERANCE from it, refuses the export. What it measured goes into the manifest.

The default, "auto", asks for float16 where the export is for a GPU and runs on one (the gate then
checks the kernels that will serve), and keeps float32 where the gate fails, saying why, or where
no GPU is present to check on: a GPU export's throughput for every label of the test set kept.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F

from moe.data import DEFAULT_DATA, load_split
from moe.errors import MoEError
from moe.evaluate import predict
from moe.tokenizer import encode

from .options import FULL_MODEL_DTYPES, ExportOptions

DTYPES = {name: getattr(torch, name) for name in FULL_MODEL_DTYPES}
# Largest probability difference from fp32 that a half-precision full_model may show on the test
# set; the bundled model measured 0.083 in fp16 on an H200 (0.11 and 2 labels changed in bf16).
TOLERANCE = 0.1


def half_model(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """A copy of `model` in `dtype` (the model itself for float32)."""
    if dtype not in DTYPES:
        raise MoEError(f"--full-model-dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return model if dtype == "float32" else copy.deepcopy(model).to(DTYPES[dtype]).eval()


def probabilities(model, tokenizer, texts: list[str], device: str) -> torch.Tensor:
    return torch.cat([p for p, _ in predict(model, tokenizer, texts, model.cfg, 256, device)])


@torch.no_grad()
def padded_probabilities(model, tokenizer, texts: list[str], device: str, blocked: bool = False) -> torch.Tensor:
    """probabilities through MoEClassifier.forward_padded at max_len, the form CUDA graphs serve."""
    out = []
    for s in range(0, len(texts), 256):
        ids, mask = encode(tokenizer, texts[s : s + 256], model.cfg.max_len)
        width = model.cfg.max_len - ids.shape[1]
        ids, mask = F.pad(ids, (0, width), value=model.cfg.pad_id), F.pad(mask, (0, width), value=False)
        out.append(torch.softmax(model.forward_padded(ids.to(device), mask.to(device), blocked).float(), -1).cpu())
    return torch.cat(out)


def check_precision(
    model,
    half,
    tokenizer,
    dtype: str,
    export_device: str,
    texts: int | None = None,
    data=DEFAULT_DATA,
    log=print,
    padded: bool = False,
    blocked: bool = False,
) -> dict:
    """The gate: `half` against `model` (fp32) on the first `texts` test texts (None: all), and
    with `padded` (CUDA graphs) `half`'s padded forward as well (its experts `blocked` or dense).
    Returns what it measured; raises MoEError if a label differs or a probability moves more than
    TOLERANCE."""
    device = "cuda" if export_device == "cuda" and torch.cuda.is_available() else "cpu"
    try:
        texts = load_split(str(data), "test").texts[:texts]
    except MoEError as e:
        raise MoEError(f"--full-model-dtype {dtype} is checked on the test set, which is missing: {e}") from None
    log(f"precision check: {len(texts)} test texts in float32 and {dtype} on {device}")
    reference = probabilities(copy.deepcopy(model).to(device), tokenizer, texts, device)
    half_on_device = copy.deepcopy(half).to(device)
    forms = [probabilities(half_on_device, tokenizer, texts, device)]
    if padded:  # both forms serve: CUDA graphs the padded one, larger batches the packed one
        forms.append(padded_probabilities(half_on_device, tokenizer, texts, device, blocked))
    result = dict(
        dtype=dtype,
        device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        texts=len(texts),
        forms="packed and padded" if padded else "packed",
        labels_unlike_float32=max(int((got.argmax(1) != reference.argmax(1)).sum()) for got in forms),
        max_prob_diff=round(max(float((got - reference).abs().max()) for got in forms), 6),
        tolerance=TOLERANCE,
    )
    if result["labels_unlike_float32"] or not result["max_prob_diff"] <= TOLERANCE:
        raise MoEError(
            f"full_model in {dtype}: {result['labels_unlike_float32']} of {len(texts)} test labels unlike "
            f"float32's, probabilities up to {result['max_prob_diff']:.3g} away (tolerance {TOLERANCE}) on "
            f"{result['device']}: refusing to export; --full-model-dtype float32 keeps v2 exact"
        )
    log(f"precision check ({result['forms']}): every label equal, probabilities within {result['max_prob_diff']:.3g}")
    return result


def choose_full_model(model, tokenizer, opts: ExportOptions, log=print) -> tuple:
    """v2's model for resolved `opts`: (the model to export, its dtype, what the gate measured
    or None). An asked-for half precision that fails the gate raises; "auto" falls back to
    float32."""
    dtype = opts.full_model_dtype
    if dtype == "auto":
        if opts.device != "cuda" or not torch.cuda.is_available():
            return model, "float32", None
        try:
            return choose_full_model(model, tokenizer, replace(opts, full_model_dtype="float16"), log)
        except MoEError as e:
            log(f"auto precision: keeping float32 for v2 ({e})")
            return model, "float32", None
    half = half_model(model, dtype)
    if half is model:
        return model, dtype, None
    return (
        half,
        dtype,
        check_precision(
            model,
            half,
            tokenizer,
            dtype,
            opts.device,
            opts.precision_check_texts,
            log=log,
            padded=bool(opts.full_model_cuda_graphs),
            blocked=opts.full_model_graph_experts == "blocked",
        ),
    )
