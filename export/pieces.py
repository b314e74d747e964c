"""TorchScript entry points for each Triton model, wrapping the very modules the eager model uses.

v1's pieces hand each other padded batches, [B, T, D] with the [B, T] mask; the modules inside
compute on the real tokens alone, as the eager model does (moe/model.py), so each piece takes its
real tokens out and lays its answer out padded again, zeros at padding.

Inputs and outputs follow NVIDIA's pytorch_libtorch convention: forward's arguments are
INPUT__0, INPUT__1, ... and its returned tuple is OUTPUT__0, OUTPUT__1, ... in that order. A piece
that is per layer holds that piece of every layer and takes the layer as an INT64 [1] tensor.
"""

from typing import List, Tuple

import torch
from torch import Tensor, nn

from moe.model import MoEClassifier
from moe.routing import add_to_real_tokens, pad_real_tokens, real_token_index, real_tokens


def _layer(layer: Tensor, n_layers: int) -> int:
    index = int(layer.reshape(-1)[0].item())
    if index < 0 or index >= n_layers:
        raise ValueError(f"layer {index} out of range: the model has {n_layers} layers")
    return index


class EmbeddingPiece(nn.Module):
    def __init__(self, model: MoEClassifier):
        super().__init__()
        self.embedding = model.embedding

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding(ids, torch.arange(ids.shape[1], device=ids.device).expand_as(ids))


class AttentionPiece(nn.Module):
    def __init__(self, model: MoEClassifier):
        super().__init__()
        self.layers = nn.ModuleList([b.attention for b in model.blocks])
        self.n_layers = len(self.layers)

    def forward(self, x: Tensor, mask: Tensor, layer: Tensor) -> Tuple[Tensor, Tensor]:
        index = _layer(layer, self.n_layers)
        B, T = mask.shape
        real = real_token_index(mask)
        x_real = real_tokens(x, real)
        result = (x_real, x_real)
        for i, attention in enumerate(self.layers):
            if i == index:
                result = attention(x_real, mask, real)
        return pad_real_tokens(result[0], real, B, T), pad_real_tokens(result[1], real, B, T)


class GatingPiece(nn.Module):
    """Router of one layer over the real tokens of a padded batch, as the eager block routes
    them: it takes the attention piece's h [B, T, D] as it is, so the two run as one ensemble."""

    def __init__(self, model: MoEClassifier):
        super().__init__()
        self.layers = nn.ModuleList([b.moe.router for b in model.blocks])
        self.n_layers = len(self.layers)

    def forward(self, h: Tensor, mask: Tensor, layer: Tensor) -> Tuple[Tensor, Tensor]:
        index = _layer(layer, self.n_layers)
        h_real = real_tokens(h, real_token_index(mask))
        ids, weights = torch.empty(0), torch.empty(0)
        for i, router in enumerate(self.layers):
            if i == index:
                ids, weights, _ = router(h_real)
        return ids, weights


class ExpertPiece(nn.Module):
    """Expert e of every layer: one Triton model per expert (expert parallelism)."""

    def __init__(self, model: MoEClassifier, expert: int):
        super().__init__()
        self.layers = nn.ModuleList([b.moe.experts[expert] for b in model.blocks])
        self.n_layers = len(self.layers)

    def forward(self, h: Tensor, layer: Tensor) -> Tensor:
        index = _layer(layer, self.n_layers)
        out = h
        for i, expert in enumerate(self.layers):
            if i == index:
                out = expert(h)
        return out


class ClassifierPiece(nn.Module):
    def __init__(self, model: MoEClassifier):
        super().__init__()
        self.classifier = model.classifier

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        real = real_token_index(mask)
        return self.classifier(real_tokens(x, real), mask, real)


class Postprocessing(nn.Module):
    """logits -> class probabilities, the most likely class's id and its name: the answer of
    v1 and v2 alike."""

    def __init__(self, labels: List[str]):
        super().__init__()
        self.labels = list(labels)

    def forward(self, logits: Tensor) -> Tuple[Tensor, Tensor, List[str]]:
        probs, label_id = self.probabilities(logits)
        return self.named(probs, label_id)

    @torch.jit.export
    def probabilities(self, logits: Tensor) -> Tuple[Tensor, Tensor]:
        """logits [B, C] -> probabilities [B, C] and the most likely class id [B, 1]."""
        probs = torch.softmax(logits.float(), dim=-1)
        return probs, probs.argmax(dim=-1, keepdim=True)

    @torch.jit.export
    def named(self, probs: Tensor, label_id: Tensor) -> Tuple[Tensor, Tensor, List[str]]:
        """The answer with each class id's name: the host reads the ids."""
        ids: List[int] = label_id.reshape(-1).tolist()
        return probs, label_id, [self.labels[i] for i in ids]


def unflatten_ragged(ids: Tensor, mask: Tensor, lengths: Tensor, pad_id: int) -> Tuple[Tensor, Tensor]:
    """Texts of different lengths, concatenated ([sum of lengths]), back to [B, T] with padding.

    Row-major order of the kept positions is the order of concatenation, so one masked
    scatter places every token."""
    lengths = lengths.reshape(-1).to(torch.int64)
    keep = torch.arange(int(lengths.max()), device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)
    padded_ids = torch.full(keep.shape, pad_id, dtype=ids.dtype, device=ids.device).masked_scatter(keep, ids)
    padded_mask = torch.zeros(keep.shape, dtype=torch.bool, device=ids.device).masked_scatter(keep, mask)
    return padded_ids, padded_mask


def unflatten_fixed(ids: Tensor, mask: Tensor, lengths: Tensor, T: int, pad_id: int) -> Tuple[Tensor, Tensor]:
    """unflatten_ragged to a width T given, not read from the data: gathers only, so no host
    synchronisation. Every text must be at most T long. A row of length 0 (a row of zeros that
    pads a batch) gets one masked-in padding token, so attention has a key in every row."""
    lengths = lengths.reshape(-1).to(torch.int64)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(T, device=ids.device).unsqueeze(0)
    keep = positions < lengths.unsqueeze(1)
    source = (starts.unsqueeze(1) + positions).clamp(max=ids.shape[0] - 1)
    padded_ids = torch.where(keep, ids[source], torch.full_like(source, pad_id).to(ids.dtype))
    padded_mask = (keep & mask[source].to(torch.bool)) | ((positions == 0) & (lengths == 0).unsqueeze(1))
    return padded_ids, padded_mask


class FullModel(nn.Module):
    """v2 over a ragged batch: Triton's dynamic batcher concatenates requests of any lengths
    (each padded by the tokenizer to its own longest text) and gives each text's length (the
    BATCH_ITEM_SHAPE batch input), so texts of different lengths share one call. It answers as
    the `postprocessing` model does (probabilities, class id, class name), so v2's ensemble has
    no third step: each step is a queue and a hand-off per request, which single texts feel most.

    With `length_group` > 0 the texts run sorted by length in groups of that many, each padded
    only to its own longest text, which is what attention, the one step that computes on padding,
    pays for (on the 2-core CPU, one thread, batches of 64 test texts: 346 texts/s in groups of
    16 against 228 as one batch; docs/runs/cpu/packing_profile_after_c97618b.json); 0 runs the
    batch as one (a GPU, where each group costs its own kernel launches).

    With `answer_on_host` the logits come to host memory in one copy per batch and the answer is
    computed there (ExportOptions.full_model_answer says why). With `blocked_experts` the graphed
    form reaches each token's experts in blocks (ExportOptions.full_model_graph_experts)."""

    def __init__(
        self, model: MoEClassifier, length_group: int = 0, answer_on_host: bool = False, blocked_experts: bool = False
    ):
        super().__init__()
        self.model = model
        self.answer = Postprocessing(list(model.cfg.labels))
        self.pad_id = model.cfg.pad_id
        self.max_len = model.cfg.max_len
        self.n_classes = model.cfg.n_classes
        self.length_group = length_group
        self.answer_on_host = answer_on_host
        self.blocked_experts = blocked_experts

    def forward(self, ids: Tensor, mask: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor, List[str]]:
        logits = self.logits(ids, mask, lengths)
        return self.answer(logits.cpu() if self.answer_on_host else logits)

    @torch.jit.export
    def graph_rows(self, batch: int) -> List[int]:
        """Rows of ids, mask and lengths that hold any batch of at most `batch` texts: the vendored
        libtorch backend's CUDA_GRAPH_MAX_BATCH captures one graph per power of two of the batch,
        so the shapes, and the captures each instance makes at load, stay few."""
        return [batch * self.max_len, batch * self.max_len, batch]

    @torch.jit.export
    def device_answer(self, ids: Tensor, mask: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """forward's probabilities and class ids, computed as a CUDA graph can capture them
        (MoEClassifier.forward_padded, every text padded to max_len): the backend replays this for
        small batches, its inputs padded with rows of zeros to graph_rows, then calls host_answer.
        A text longer than max_len, which the tokenizer never sends, is cut to it."""
        ids, mask = unflatten_fixed(ids, mask, lengths, self.max_len, self.pad_id)
        return self.answer.probabilities(self.model.forward_padded(ids, mask, self.blocked_experts))

    @torch.jit.export
    def host_answer(self, probs: Tensor, label_id: Tensor) -> Tuple[Tensor, Tensor, List[str]]:
        return self.answer.named(probs, label_id)

    @torch.jit.export
    def logits(self, ids: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        ids, mask = unflatten_ragged(ids, mask, lengths, self.pad_id)
        if self.length_group <= 0 or ids.shape[0] <= 1:
            return self.model(ids, mask)
        real = mask.sum(1)
        logits = torch.empty(ids.shape[0], self.n_classes, device=ids.device)
        for group in torch.argsort(real).split(self.length_group):
            width = int(real.index_select(0, group).max())
            out = self.model(ids.index_select(0, group)[:, :width], mask.index_select(0, group)[:, :width])
            logits.index_copy_(0, group, out.to(logits.dtype))
        return logits


def build_pieces(
    model: MoEClassifier,
    length_group: int = 0,
    full_model: MoEClassifier | None = None,
    answer_on_host: bool = False,
    blocked_experts: bool = False,
) -> dict:
    """Triton model name -> eager wrapper module (`length_group`, `answer_on_host`, `blocked_experts`: see FullModel;
    `full_model`: the model v2 runs, `model` itself unless given, e.g. in half precision)."""
    pieces = {
        "embedding": EmbeddingPiece(model),
        "attention": AttentionPiece(model),
        "gating": GatingPiece(model),
        "classifier": ClassifierPiece(model),
        "full_model": FullModel(
            model if full_model is None else full_model, length_group, answer_on_host, blocked_experts
        ),
        "postprocessing": Postprocessing(list(model.cfg.labels)),
    }
    for e in range(model.cfg.n_experts):
        pieces[f"expert_{e}"] = ExpertPiece(model, e)
    return {name: m.eval() for name, m in pieces.items()}


def ragged(ids: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The texts of a padded batch concatenated without their padding, as Triton's ragged
    batching hands them to full_model, with each text's length."""
    lengths = mask.sum(1)
    keep = torch.arange(ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    return ids[keep], mask[keep], lengths.to(torch.int32).unsqueeze(1)


def sample_inputs(model: MoEClassifier, ids: Tensor, mask: Tensor) -> dict:
    """Realistic inputs for each piece, taken from an eager run on (ids, mask): used to check
    every TorchScript piece against its eager module before anything is written."""
    cfg = model.cfg
    lengths = torch.full((ids.shape[0], 1), ids.shape[1], dtype=torch.int32)
    samples: dict = {
        "embedding": [(ids,)],
        "classifier": [],
        "full_model": [(ids.reshape(-1), mask.reshape(-1), lengths), ragged(ids, mask)],
        "attention": [],
        "gating": [],
    }
    for e in range(cfg.n_experts):
        samples[f"expert_{e}"] = []
    attention = AttentionPiece(model)
    with torch.no_grad():
        x = EmbeddingPiece(model)(ids)
        real = real_token_index(mask)
        for l, block in enumerate(model.blocks):
            layer = torch.tensor([l], dtype=torch.int64)
            samples["attention"].append((x, mask, layer))
            x, h = attention(x, mask, layer)
            h_real = real_tokens(h, real)
            samples["gating"].append((h, mask, layer))
            for e in range(cfg.n_experts):
                samples[f"expert_{e}"].append((h_real[e :: cfg.n_experts], layer))
            x = add_to_real_tokens(x, real, block.moe(h_real)[0])
        samples["classifier"].append((x, mask))
        samples["postprocessing"] = [(ClassifierPiece(model)(x, mask),)]
    return samples
