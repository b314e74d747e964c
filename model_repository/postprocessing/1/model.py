"""LOGITS -> PROBS (softmax), LABEL_ID (argmax) and LABEL (class name)."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from triton_io import model_parameters


class TritonPythonModel:
    def initialize(self, args):
        labels = json.loads(model_parameters(args)["labels"])
        self.labels = np.array([l.encode("utf-8") for l in labels], dtype=object)

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy().astype(np.float32)
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
            label_id = probs.argmax(axis=1).astype(np.int64)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("PROBS", probs),
                pb_utils.Tensor("LABEL_ID", label_id.reshape(-1, 1)),
                pb_utils.Tensor("LABEL", self.labels[label_id].reshape(-1, 1)),
            ]))
        return responses
