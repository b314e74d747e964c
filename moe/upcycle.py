"""Sparse upcycling (Komatsuzaki et al., ICLR 2023): a pretrained BERT-style encoder becomes our
MoE classifier with post-norm blocks (model.py), ready to fine-tune.

The input is a Hugging Face folder (config.json, model.safetensors or its shards,
tokenizer.json), read with safetensors and tokenizers alone: no hub, no network. Each layer's
FFN becomes the layer's experts, in one of two ways:

    copy    every expert is the whole FFN. The top-k weights sum to 1, so the MoE layer computes
            exactly the dense FFN, whatever the router picks, until training sets experts apart.
            n_experts times the FFN parameters; top-k times the FFN compute.
    slice   expert e holds hidden units [e*d_ff, (e+1)*d_ff) of the FFN, d_ff = width/n_experts:
            the dense model's parameter count, top_k/n_experts of its FFN compute. Each slice's
            output projection is scaled by top_k: the top-k weights start near 1/k, so the layer
            starts as the dense FFN restricted to the hidden units of the k chosen slices, and
            is exactly the dense FFN when every slice is chosen with equal weight. (Scaling by
            n_experts instead, the unbiased estimate over a random choice of k slices, starts
            much further from the pretrained encoder: its errors compound over the layers.
            On all-MiniLM-L6-v2 with top-2, the mean-pooled embeddings of AG News texts have
            cosine 0.57 to the dense model's with top_k scaling, 0.05 with n_experts scaling.)

Each router starts as the model's usual random init, N(0, 0.02), minus its component along the
mean router input over a sample of training tokens. BERT's hidden states share one large
direction (about half of a token's norm in all-MiniLM-L6-v2): a plain random router mostly sees
that direction, so its logits nearly agree across tokens, every optimizer step moves them
together, and a few experts take most tokens. Zeros are worse: tied logits send every token to
the same k experts, and with identical (copied) experts the task loss gives the router no
gradient to leave them. Over the first 100 fine-tuning steps on AG News (all-MiniLM-L6-v2,
top-2, batch 16; busiest expert / fair share in one batch every 10 steps, mean over layers):
slice N(0, 0.001) 2.2-2.9, N(0, 0.02) 1.9-2.5, centred N(0, 0.02) 1.3-1.8; copy 1.5-2.4,
1.9-2.4, 1.2-1.9. The random logits stay small (about 0.2), so the top-k weights start near 1/k.

The classification head is new; the pooling is the masked mean that sentence encoders such as
all-MiniLM-L6-v2 are trained with.

The vocabulary is trimmed to the subwords the training texts use, plus every special token and
every single character (alone and as a continuation), renumbered in their original order, so
[PAD] keeps id 0 and the texts tokenize to the same subwords as before.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor

from .checkpoint import CONFIG, TOKENIZER, WEIGHTS
from .config import MoEConfig
from .errors import MoEError
from .model import MoEClassifier
from .tokenizer import PAD, configure

METHODS = ("copy", "slice")
CENTRING_TEXTS = 128  # training texts whose tokens give the mean router input
# A Hugging Face folder names its files as our checkpoints do, and may shard its weights.
WEIGHTS_INDEX = "model.safetensors.index.json"


@dataclass
class Pretrained:
    config: dict  # the Hugging Face config.json
    weights: dict[str, Tensor]  # BertModel names: embeddings.*, encoder.layer.N.*
    tokenizer: Tokenizer


def read_pretrained(folder: Path) -> Pretrained:
    folder = Path(folder)
    missing = [f for f in (CONFIG, TOKENIZER) if not (folder / f).is_file()]
    if not folder.is_dir() or missing:
        raise MoEError(
            f"{folder} is not a Hugging Face model folder (needs {CONFIG}, {TOKENIZER} "
            f"and {WEIGHTS} or {WEIGHTS_INDEX})"
        )
    config = json.loads((folder / CONFIG).read_text())
    expected = dict(model_type="bert", hidden_act="gelu", position_embedding_type="absolute")
    wrong = {k: config.get(k, v) for k, v in expected.items() if config.get(k, v) != v}
    if wrong:
        raise MoEError(
            f"{folder / CONFIG}: only BERT encoders with exact GELU and absolute positions can be upcycled, got {wrong}"
        )
    return Pretrained(config, read_weights(folder), Tokenizer.from_file(str(folder / TOKENIZER)))


def read_weights(folder: Path) -> dict[str, Tensor]:
    """One safetensors file, or the shards its index lists; a task model's "bert." prefix dropped."""
    if (folder / WEIGHTS).is_file():
        files = [folder / WEIGHTS]
    elif (folder / WEIGHTS_INDEX).is_file():
        index = json.loads((folder / WEIGHTS_INDEX).read_text())
        files = [folder / name for name in sorted(set(index["weight_map"].values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MoEError(f"{folder}: shards {', '.join(missing)} of {WEIGHTS_INDEX} are missing")
    else:
        raise MoEError(f"{folder}: no {WEIGHTS} or {WEIGHTS_INDEX}")
    weights = {}
    for f in files:
        weights.update(load_file(str(f)))
    return {k.removeprefix("bert."): v for k, v in weights.items()}


def trim_vocabulary(pretrained: Pretrained, texts: Iterable[str]) -> Pretrained:
    """Keep the subwords `texts` use, every special token and every single character.

    WordPiece takes the longest vocabulary entry at each position of a word; removing entries no
    text used leaves those choices unchanged, so the texts keep their segmentation (test_upcycle
    checks it). Other words still segment, at worst character by character.
    """
    spec = json.loads(pretrained.tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    prefix = spec["model"]["continuing_subword_prefix"]
    encoder = Tokenizer.from_str(pretrained.tokenizer.to_str())
    encoder.no_truncation()
    encoder.no_padding()
    keep = {i for e in encoder.encode_batch(list(texts)) for i in e.ids}
    keep |= {t["id"] for t in spec["added_tokens"]}
    keep |= {i for t, i in vocab.items() if len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1)}
    old_ids = sorted(keep)
    new_id = {old: new for new, old in enumerate(old_ids)}

    spec["model"]["vocab"] = {t: new_id[i] for t, i in vocab.items() if i in new_id}
    for token in spec["added_tokens"]:
        token["id"] = new_id[token["id"]]
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    remap_post_processor(spec.get("post_processor"), new_id)

    weights = dict(pretrained.weights)
    table = weights["embeddings.word_embeddings.weight"]
    weights["embeddings.word_embeddings.weight"] = table[torch.tensor(old_ids)]
    config = dict(pretrained.config, vocab_size=len(old_ids))
    return Pretrained(config, weights, Tokenizer.from_str(json.dumps(spec)))


def remap_post_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    """Renumber the special-token ids that BERT's post-processors ([CLS] text [SEP]) store."""
    if processor is None:
        return
    if processor["type"] == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif processor["type"] == "BertProcessing":
        for key in ("cls", "sep"):
            processor[key][1] = new_id[processor[key][1]]
    else:
        raise MoEError(f"tokenizer post-processor {processor['type']!r} is not BERT's")


def lower_layers(pretrained: Pretrained, n: int) -> Pretrained:
    """The embeddings and the first n layers: a compact student that starts where the
    pretrained encoder's lower layers are (Turc et al., 2019); the weights of the layers above
    are simply never read."""
    total = pretrained.config["num_hidden_layers"]
    if not 1 <= n <= total:
        raise MoEError(f"cannot keep {n} layers of a {total}-layer encoder")
    return Pretrained(dict(pretrained.config, num_hidden_layers=n), pretrained.weights, pretrained.tokenizer)


def moe_config(pretrained: Pretrained, base: MoEConfig, method: str) -> MoEConfig:
    """The pretrained architecture; routing, max_len, dropout and loss weights from `base`."""
    c = pretrained.config
    if method not in METHODS:
        raise MoEError(f"unknown upcycling method {method!r}; choose one of: {', '.join(METHODS)}")
    width = c["intermediate_size"]
    if method == "slice" and width % base.n_experts:
        raise MoEError(f"FFN width {width} does not split into {base.n_experts} equal slices")
    pad_id = pretrained.tokenizer.token_to_id(PAD)
    if pad_id is None:
        raise MoEError(f"the pretrained tokenizer has no {PAD} token")
    return dataclasses.replace(
        base,
        vocab_size=c["vocab_size"],
        d_model=c["hidden_size"],
        n_heads=c["num_attention_heads"],
        n_layers=c["num_hidden_layers"],
        d_ff=width if method == "copy" else width // base.n_experts,
        max_len=min(base.max_len, c["max_position_embeddings"]),
        pad_id=pad_id,
        norm_position="post",
        layer_norm_eps=c["layer_norm_eps"],
    )


def upcycled_state(weights: dict[str, Tensor], cfg: MoEConfig, method: str) -> dict[str, Tensor]:
    """Our state dict from BertModel weights (model.py's docstring shows where each LN lands)."""
    w = {k: v.float() for k, v in weights.items()}
    state = {
        "embedding.token.weight": w["embeddings.word_embeddings.weight"],
        # A single text is all segment 0: its token-type vector is a constant added at every
        # position, so it folds into the position table.
        "embedding.position.weight": (
            w["embeddings.position_embeddings.weight"][: cfg.max_len] + w["embeddings.token_type_embeddings.weight"][0]
        ),
        "embedding.norm.weight": w["embeddings.LayerNorm.weight"],
        "embedding.norm.bias": w["embeddings.LayerNorm.bias"],
    }
    for l in range(cfg.n_layers):
        bert, ours = f"encoder.layer.{l}.", f"blocks.{l}."
        for kind in ("weight", "bias"):
            state[f"{ours}attention.qkv.{kind}"] = torch.cat(
                [w[f"{bert}attention.self.{p}.{kind}"] for p in ("query", "key", "value")]
            )
            state[f"{ours}attention.out.{kind}"] = w[f"{bert}attention.output.dense.{kind}"]
            state[f"{ours}attention.norm.{kind}"] = w[f"{bert}attention.output.LayerNorm.{kind}"]
            # LN2 closes layer l in BERT; here it opens the next piece.
            closing = f"blocks.{l + 1}.attention.input_norm" if l + 1 < cfg.n_layers else "classifier.norm"
            state[f"{closing}.{kind}"] = w[f"{bert}output.LayerNorm.{kind}"]
        fc1_w, fc1_b = w[f"{bert}intermediate.dense.weight"], w[f"{bert}intermediate.dense.bias"]
        fc2_w, fc2_b = w[f"{bert}output.dense.weight"], w[f"{bert}output.dense.bias"]
        for e in range(cfg.n_experts):
            if method == "copy":
                expert = (fc1_w, fc1_b, fc2_w, fc2_b)
            else:
                units = slice(e * cfg.d_ff, (e + 1) * cfg.d_ff)
                expert = (fc1_w[units], fc1_b[units], fc2_w[:, units] * cfg.top_k, fc2_b)
            for name, tensor in zip(("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"), expert):
                state[f"{ours}moe.experts.{e}.{name}"] = tensor
    return state


def upcycle(pretrained: Pretrained, base: MoEConfig, method: str) -> MoEClassifier:
    """The MoE with the pretrained weights; routers and head keep their random init."""
    cfg = moe_config(pretrained, base, method)
    model = MoEClassifier(cfg)
    try:
        state = upcycled_state(pretrained.weights, cfg, method)
    except KeyError as e:
        raise MoEError(f"the pretrained weights have no {e.args[0]}: not a BertModel checkpoint?") from None
    result = model.load_state_dict(state, strict=False)
    fresh = sorted(result.missing_keys)
    expected = sorted(
        [f"blocks.{l}.moe.router.proj.weight" for l in range(cfg.n_layers)]
        + ["classifier.head.weight", "classifier.head.bias"]
    )
    if fresh != expected or result.unexpected_keys:
        raise MoEError(f"upcycling left {fresh} untouched and produced unknown {result.unexpected_keys}")
    return model


@torch.no_grad()
def centre_routers(model: MoEClassifier, tokenizer: Tokenizer, texts: list[str]) -> None:
    """Remove from each router the direction of its mean input over the tokens of `texts`
    (layer by layer, so each layer sees the inputs that the centred layers below it give)."""
    was_training = model.training
    model.eval()
    encodings = tokenizer.encode_batch(texts[:CENTRING_TEXTS])
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
    x, real = model.embed(ids, mask)
    for block in model.blocks:
        _, h = block.attention(x, mask, real)
        mean = h.mean(0)
        direction = mean / mean.norm()
        weight = block.moe.router.proj.weight
        weight.sub_(torch.outer(weight @ direction, direction))
        x, _, _ = block(x, mask, real)
    model.train(was_training)


def start_from_pretrained(
    folder: Path, texts: list[str], base: MoEConfig, method: str, layers: int | None = None
) -> tuple[MoEClassifier, Tokenizer]:
    """The upcycled model and its tokenizer (vocabulary trimmed to `texts`, truncating to
    max_len and padding with [PAD]), on the first `layers` layers if given: what
    `moe train --init` fine-tunes."""
    pretrained = trim_vocabulary(read_pretrained(folder), texts)
    if layers is not None:
        pretrained = lower_layers(pretrained, layers)
    model = upcycle(pretrained, base, method)
    configure(pretrained.tokenizer, model.cfg.max_len)
    centre_routers(model, pretrained.tokenizer, texts)
    return model, pretrained.tokenizer
