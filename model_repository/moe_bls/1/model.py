"""v1: the MoE forward pass orchestrated over separate Triton models (BLS).

    embedding -> for each layer: attention -> gating -> the busy experts, concurrently,
    each with only its own tokens -> weighted combine -> ... -> classifier

Grouping tokens by expert and adding the weighted outputs back use moe_routing.py, a copy of
the package's moe/routing.py made by `moe export`: the same code the eager model runs.
"""
import asyncio
import json
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

import moe_routing as routing


class StepFailed(Exception):
    pass


def to_triton(name: str, tensor: torch.Tensor) -> "pb_utils.Tensor":
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bool:     # DLPack has no portable bool: go through numpy
        return pb_utils.Tensor(name, tensor.numpy())
    return pb_utils.Tensor.from_dlpack(name, to_dlpack(tensor))


def to_torch(tensor: "pb_utils.Tensor") -> torch.Tensor:
    if tensor.is_cpu():
        array = tensor.as_numpy()          # a view, no copy
        if array.dtype == bool:
            return torch.from_numpy(array.copy())
    return from_dlpack(tensor.to_dlpack())


def wants_expert_tokens(request) -> bool:
    """EXPERT_TOKENS is computed only for requests with the parameter expert_tokens=true.

    An ensemble asks its steps for every output it maps, whatever the client requested, so
    the client's wish reaches this model as a request parameter (which ensembles forward).
    """
    value = json.loads(request.parameters() or "{}").get("expert_tokens", False)
    return value is True or str(value).lower() in ("true", "1")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.n_layers = int(p["n_layers"])
        self.n_experts = int(p["n_experts"])
        self.experts = p["expert_models"].split(",")
        assert len(self.experts) == self.n_experts, "one expert model per expert"
        self.pad_id = int(p.get("pad_id", "0"))
        torch.set_num_threads(int(p.get("INTRA_OP_THREAD_COUNT", "1")))
        self.layer_tensors = [torch.tensor([l], dtype=torch.int64) for l in range(self.n_layers)]

    async def call(self, model: str, inputs, outputs):
        request = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=outputs,
            inputs=[to_triton(f"INPUT__{i}", t) for i, t in enumerate(inputs)])
        response = await request.async_exec()
        if response.has_error():
            raise StepFailed(f"{model}: {response.error().message()}")
        return [to_torch(pb_utils.get_output_tensor_by_name(response, name)) for name in outputs]

    async def forward(self, ids: torch.Tensor, mask: torch.Tensor, count_tokens: bool):
        """logits [B, C] and, if asked, tokens per text, layer and expert [B, L, E]."""
        B, T = ids.shape
        real = routing.real_token_index(mask)
        text_of_token = torch.div(real, T, rounding_mode="floor")
        counts = torch.zeros(B, self.n_layers, self.n_experts, dtype=torch.int64) if count_tokens else None
        (x,) = await self.call("embedding", [ids], ["OUTPUT__0"])
        for l in range(self.n_layers):
            layer = self.layer_tensors[l]
            x, h = await self.call("attention", [x, mask, layer], ["OUTPUT__0", "OUTPUT__1"])
            h_real = h.reshape(-1, h.shape[-1]).index_select(0, real)
            expert_ids, weights = await self.call("gating", [h_real, layer], ["OUTPUT__0", "OUTPUT__1"])
            token_index, slot_order, per_expert = routing.dispatch_plan(expert_ids, self.n_experts)
            chunks = h_real.index_select(0, token_index).split(per_expert)
            busy = [e for e in range(self.n_experts) if per_expert[e] > 0]
            results = await asyncio.gather(*[
                self.call(self.experts[e], [chunks[e], layer], ["OUTPUT__0"]) for e in busy])
            outputs = list(chunks)             # idle experts contribute their empty chunk
            for e, (out,) in zip(busy, results):
                outputs[e] = out
            update = routing.combine(torch.cat(outputs), weights, token_index, slot_order, h_real.shape[0])
            x = routing.add_to_real_tokens(x, real, update)
            if counts is not None:
                flat = (text_of_token.unsqueeze(1) * self.n_experts + expert_ids).reshape(-1)
                counts[:, l, :] = torch.bincount(flat, minlength=B * self.n_experts).view(B, self.n_experts)
        (logits,) = await self.call("classifier", [x, mask], ["OUTPUT__0"])
        return logits, counts

    async def execute(self, requests):
        # Requests that the dynamic batcher grouped run as one batch, padded to one length
        # (padding changes no result).
        ids_list, mask_list, sizes = [], [], []
        for request in requests:
            ids_list.append(to_torch(pb_utils.get_input_tensor_by_name(request, "INPUT_IDS")))
            mask_list.append(to_torch(pb_utils.get_input_tensor_by_name(request, "ATTENTION_MASK")).to(torch.bool))
            sizes.append(ids_list[-1].shape[0])
        T = max(i.shape[1] for i in ids_list)
        ids = torch.cat([torch.nn.functional.pad(i, (0, T - i.shape[1]), value=self.pad_id) for i in ids_list])
        mask = torch.cat([torch.nn.functional.pad(m, (0, T - m.shape[1]), value=False) for m in mask_list])
        wants_counts = [wants_expert_tokens(r) for r in requests]
        count_tokens = any(wants_counts)
        try:
            logits, counts = await self.forward(ids, mask, count_tokens)
        except StepFailed as e:
            error = pb_utils.TritonError(f"moe_bls: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n, wants in zip(sizes, wants_counts):
            outputs = [to_triton("LOGITS", logits[start:start + n])]
            if wants:
                outputs.append(to_triton("EXPERT_TOKENS", counts[start:start + n]))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start += n
        return responses
