"""TEXT (UTF-8 bytes) -> INPUT_IDS, ATTENTION_MASK with the checkpoint's tokenizer.json.

Uses the `tokenizers` library directly (what transformers' fast tokenizer wraps): the [CLS]
template and truncation are stored in tokenizer.json, so the ids equal those of training.
"""

import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from ascii_tokenizer import AsciiWordPiece
from tokenizers import Tokenizer
from triton_io import error_response, model_parameters


class BadText(ValueError):
    pass


def decode(raw, index: int, max_chars: int) -> str:
    if not isinstance(raw, (bytes, np.bytes_)):
        raw = str(raw).encode("utf-8")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadText(f"TEXT[{index}] is not valid UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    if not text.strip():
        raise BadText(f"TEXT[{index}] is empty or whitespace only")
    # Tokens past max_len are truncated anyway; cutting megabyte texts first keeps the
    # tokenizer's time bounded without changing the result for real text.
    return text[:max_chars]


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        # The Rust thread pool is sized on first use; many instances on a GPU host each take one
        # thread (a pool the size of the machine in every instance starves the other stages).
        threads = int(params.get("threads", "0"))
        if threads == 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        elif threads > 1:
            os.environ["RAYON_NUM_THREADS"] = str(threads)
        folder = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.max_chars = int(params["max_text_chars"])
        padding = self.tokenizer.padding
        multiple = int(params.get("pad_to_multiple_of", "0")) or None
        # Requests of one execute are padded to one length (a multiple of 8), so the
        # dynamic batcher of the next model can merge them.
        self.tokenizer.enable_padding(
            pad_id=padding["pad_id"], pad_token=padding["pad_token"], pad_to_multiple_of=multiple
        )
        # The same ids for ASCII text at a fraction of the CPU (ascii_tokenizer.py).
        self.fast_path = AsciiWordPiece.of(self.tokenizer)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = self.fast_path.encode(texts) if self.fast_path else None
        if encoded is not None:
            return encoded
        # encode_batch_fast: no character offsets, which nothing here reads.
        encodings = self.tokenizer.encode_batch_fast(texts)
        return (
            np.array([e.ids for e in encodings], dtype=np.int64),
            np.array([e.attention_mask for e in encodings], dtype=bool),
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, spans = [], []  # spans: (request, first row, end row) of each valid request
        for r, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                decoded = [decode(t, i, self.max_chars) for i, t in enumerate(raw)]
            except BadText as e:
                responses[r] = error_response(str(e), pb_utils.TritonError.INVALID_ARG)
                continue
            spans.append((r, len(texts), len(texts) + len(decoded)))
            texts.extend(decoded)
        if texts:
            ids, mask = self.encode(texts)
            for r, start, end in spans:
                responses[r] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("INPUT_IDS", ids[start:end]),
                        pb_utils.Tensor("ATTENTION_MASK", mask[start:end]),
                    ]
                )
        return responses
