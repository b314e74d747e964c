"""The MoE Transformer encoder classifier.

The forward pass runs on the real tokens of a batch only: x is [N, D], the N non-padding tokens
of the [B, T] batch in row-major order. Attention, the one step that mixes a text's tokens, alone
lays them out padded and back. (A batch of 256 test texts padded to its longest text is 41 % real
tokens: every other step would otherwise compute mostly padding.)

It is cut into pure pieces, the ones Triton serves, and each LayerNorm lands in
exactly one of them. Pre-norm blocks (norm_position="pre", the
from-scratch presets):

    Embedding          ids, positions -> x = token * sqrt(d) + position
    SelfAttention[l]   x, mask -> x + Attn(LN1(x)), h = LN2(x)       (h is what the router sees)
    Router[l]          h of real tokens -> top-k expert ids, weights
    Expert[l][e]       h of the tokens routed to e -> FFN_e(h)
    combine            x = x + sum_k w_k FFN_{e_k}(h)                 (the BLS in v1)
    Classifier         LN_f(x) -> masked mean over real tokens -> logits

Post-norm blocks (norm_position="post", BERT-style, for upcycled pretrained encoders) compute
a = LN1(x + Attn(x)) and LN2(a + sum_k w_k FFN_{e_k}(a)). The closing LN2 of layer l moves into
the next piece, so the combine step stays a plain residual add:

    Embedding          ids, positions -> x = LN_emb(token + position)
    SelfAttention[l]   x, mask -> y = LN2[l-1](x) (y = x for l = 0), a = LN1(y + Attn(y));
                       returns (a, a)
    Router[l]          a of real tokens -> top-k expert ids, weights
    Expert[l][e]       a of the tokens routed to e -> FFN_e(a)
    combine            x = a + sum_k w_k FFN_{e_k}(a)                 (the BLS in v1)
    Classifier         LN2[L-1](x) -> masked mean over real tokens -> logits

`MoEClassifier.forward` calls exactly these modules, and the Triton pipeline serves each of
them as its own model, so v1 (distributed) and v2 (monolith) run the same math.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MoEConfig
from .routing import (
    balance_loss,
    blocked_dispatch_plan,
    combine,
    dispatch_plan,
    pad_real_tokens,
    real_token_index,
    real_tokens,
    router_z_loss,
    top_k_gating,
)


class Embedding(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        post_norm = cfg.norm_position == "post"
        self.token = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position = nn.Embedding(cfg.max_len, cfg.d_model)
        self.scale = 1.0 if post_norm else math.sqrt(cfg.d_model)
        # Post-norm blocks expect a normalized input, the first block's included.
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if post_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        """Token ids and each one's position in its text, of one shape -> that shape + [D]."""
        return self.dropout(self.norm(self.token(ids) * self.scale + self.position(positions)))


class SelfAttention(nn.Module):
    """Multi-head self-attention, the part that pre-norm and post-norm blocks share."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.dropout

    def attend(self, x: Tensor, mask: Tensor, real: Tensor) -> Tensor:
        """x [N, D], the real tokens of the [B, T] batch `mask` at flat positions `real`."""
        B, T = mask.shape
        D = x.shape[1]
        q, k, v = pad_real_tokens(self.qkv(x), real, B, T).split(D, dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        # Padding keys are masked out; every text has at least its [CLS] token, so no query
        # row is fully masked. Padding query rows compute garbage that nothing reads.
        keep = mask.view(B, 1, 1, T)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.dropout(self.out(real_tokens(y.transpose(1, 2).reshape(B, T, D), real)))


class PreNormAttention(SelfAttention):
    """x -> x + Attn(LN1(x)), and LN2(x), the input of the MoE sublayer."""

    def __init__(self, cfg: MoEConfig):
        super().__init__(cfg)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.moe_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor, real: Tensor) -> Tuple[Tensor, Tensor]:
        x = x + self.attend(self.norm(x), mask, real)
        return x, self.moe_norm(x)


class PostNormAttention(SelfAttention):
    """x -> a = LN1(y + Attn(y)) with y = LN2 of the previous layer applied to x, returned as
    both the residual stream and the MoE input: the MoE sublayer adds its output to a."""

    def __init__(self, cfg: MoEConfig, first: bool):
        super().__init__(cfg)
        # The first layer's input leaves the embedding already normalized.
        self.input_norm = nn.Identity() if first else nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor, real: Tensor) -> Tuple[Tensor, Tensor]:
        y = self.input_norm(x)
        a = self.norm(y + self.attend(y, mask, real))
        return a, a


class Router(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.top_k = cfg.top_k
        self.proj = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)

    def forward(self, h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """h [N, D] -> expert ids [N, k], weights [N, k], router logits [N, E]."""
        logits = self.proj(h).float()
        expert_ids, weights = top_k_gating(logits, self.top_k)
        return expert_ids, weights, logits


class Expert(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(h))))


class MoEFeedForward(nn.Module):
    """Router + experts with sparse dispatch: each expert runs on its own tokens only."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.n_experts = cfg.n_experts
        self.router = Router(cfg)
        self.experts = nn.ModuleList([Expert(cfg) for _ in range(cfg.n_experts)])

    def forward(self, h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """h [N, D] (real tokens) -> update [N, D], expert ids [N, k], router logits [N, E]."""
        expert_ids, weights, logits = self.router(h)
        token_index, slot_order, counts = dispatch_plan(expert_ids, self.n_experts)
        chunks = h.index_select(0, token_index).split(counts)
        outputs: List[Tensor] = []
        for e, expert in enumerate(self.experts):
            outputs.append(expert(chunks[e]) if counts[e] > 0 else chunks[e])
        update = combine(torch.cat(outputs), weights, slot_order)
        return update, expert_ids, logits

    def forward_dense(self, h: Tensor) -> Tensor:
        """The update of `forward`, with every expert run on every token and its top-k outputs
        picked: E/k times the experts' FLOPs, but no shape that depends on the routing and no
        host synchronisation, so CUDA graphs can capture it."""
        expert_ids, weights, _ = self.router(h)
        outputs: List[Tensor] = []
        for expert in self.experts:
            outputs.append(expert(h))
        every = torch.stack(outputs, 1)  # [N, E, D]
        picked = every.gather(1, expert_ids.unsqueeze(2).expand(-1, -1, every.shape[2]))  # [N, k, D]
        return (picked * weights.to(picked.dtype).unsqueeze(2)).sum(1)

    def forward_blocked(self, h: Tensor) -> Tensor:
        """The update of `forward` with static shapes and no host synchronisation, like
        forward_dense, at about k/E of its experts' FLOPs: the slots sorted by expert into blocks
        of one expert each (routing.blocked_dispatch_plan), every block through its expert's
        weights by one batched matmul per layer of the FFN. Blocks are sized to the slots per
        expert (8 to 128 rows), so that small batches pay little padding."""
        expert_ids, weights, _ = self.router(h)
        n_slots = expert_ids.numel()
        block = 8
        while block < 128 and block * 2 * self.n_experts <= n_slots:
            block *= 2
        token_index, slot_order, row, block_expert = blocked_dispatch_plan(expert_ids, self.n_experts, block)
        n_blocks = block_expert.shape[0]
        w1: List[Tensor] = []
        b1: List[Tensor] = []
        w2: List[Tensor] = []
        b2: List[Tensor] = []
        for expert in self.experts:
            w1.append(expert.fc1.weight)
            b1.append(expert.fc1.bias)
            w2.append(expert.fc2.weight)
            b2.append(expert.fc2.bias)
        x = h.new_zeros(n_blocks * block, h.shape[1]).index_copy(0, row, h.index_select(0, token_index))
        x = x.view(n_blocks, block, h.shape[1])
        a = torch.baddbmm(
            torch.stack(b1).index_select(0, block_expert).unsqueeze(1),
            x,
            torch.stack(w1).index_select(0, block_expert).transpose(1, 2),
        )
        y = torch.baddbmm(
            torch.stack(b2).index_select(0, block_expert).unsqueeze(1),
            F.gelu(a),
            torch.stack(w2).index_select(0, block_expert).transpose(1, 2),
        )
        return combine(y.view(n_blocks * block, h.shape[1]).index_select(0, row), weights, slot_order)


class Block(nn.Module):
    def __init__(self, cfg: MoEConfig, layer: int):
        super().__init__()
        self.attention = (
            PostNormAttention(cfg, first=layer == 0) if cfg.norm_position == "post" else PreNormAttention(cfg)
        )
        self.moe = MoEFeedForward(cfg)

    def forward(self, x: Tensor, mask: Tensor, real: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """x [N, D], the real tokens (see SelfAttention.attend) -> x [N, D], expert ids, router logits."""
        x, h = self.attention(x, mask, real)
        update, expert_ids, logits = self.moe(h)
        return x + update, expert_ids, logits

    def forward_padded(self, x: Tensor, mask: Tensor, real: Tensor, blocked: bool = False) -> Tensor:
        """forward's x with every position a token (MoEClassifier.forward_padded), its experts
        through MoEFeedForward.forward_blocked if `blocked`, else forward_dense."""
        x, h = self.attention(x, mask, real)
        return x + (self.moe.forward_blocked(h) if blocked else self.moe.forward_dense(h))


class Classifier(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        # LN_f after pre-norm blocks; the last block's LN2 after post-norm blocks.
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)

    def forward(self, x: Tensor, mask: Tensor, real: Tensor) -> Tensor:
        """x [N, D], the real tokens (see SelfAttention.attend) -> logits [B, C], from the mean
        of each text's tokens."""
        B, T = mask.shape
        # Masked again for MoEClassifier.forward_padded, whose x holds padding positions too.
        tokens = pad_real_tokens(self.norm(x), real, B, T) * mask.unsqueeze(2).to(x.dtype)
        summed = tokens.sum(1)
        return self.head(summed / mask.sum(1, keepdim=True).to(summed.dtype).clamp(min=1.0))


class MoEClassifier(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = Embedding(cfg)
        self.blocks = nn.ModuleList([Block(cfg, layer) for layer in range(cfg.n_layers)])
        self.classifier = Classifier(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward_routed(self, ids: Tensor, mask: Tensor) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
        """logits [B, C], and per layer the expert ids [N, k] and router logits [N, E] of the
        N real tokens (flattened row-major over the batch)."""
        mask = mask.to(torch.bool)
        x, real = self.embed(ids, mask)
        expert_ids: List[Tensor] = []
        router_logits: List[Tensor] = []
        for block in self.blocks:
            x, ids_l, logits_l = block(x, mask, real)
            expert_ids.append(ids_l)
            router_logits.append(logits_l)
        return self.classifier(x, mask, real), expert_ids, router_logits

    def embed(self, ids: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        """ids, mask [B, T] -> the real tokens embedded, x [N, D], and their flat positions in
        the batch, `real` [N], which every later step takes with the mask."""
        real = real_token_index(mask)
        positions = torch.remainder(real, ids.shape[1])
        return self.embedding(ids.reshape(-1).index_select(0, real), positions), real

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.forward_routed(ids, mask)[0]

    @torch.jit.export
    def forward_padded(self, ids: Tensor, mask: Tensor, blocked: bool = False) -> Tensor:
        """forward's logits with every position of [B, T] run as a token, and every expert on
        every token (MoEFeedForward.forward_dense) or, if `blocked`, each token on its top-k
        experts in blocks (MoEFeedForward.forward_blocked): no shape that depends on the data and
        no host synchronisation, the form a CUDA graph captures. Attention leaves padding keys
        out and the classifier's mean leaves padding out, so real texts get forward's answer. A
        row with no real token computes garbage that stays in its row."""
        mask = mask.to(torch.bool)
        B, T = ids.shape
        every = torch.arange(B * T, device=ids.device)
        x = self.embedding(ids.reshape(-1), torch.remainder(every, T))
        for block in self.blocks:
            x = block.forward_padded(x, mask, every, blocked)
        return self.classifier(x, mask, every)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def auxiliary_losses(cfg: MoEConfig, expert_ids: List[Tensor], router_logits: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """Mean over layers of the balance loss and of the router z-loss."""
    bal = torch.stack([balance_loss(lg, ei, cfg.n_experts) for ei, lg in zip(expert_ids, router_logits)])
    z = torch.stack([router_z_loss(lg) for lg in router_logits])
    return bal.mean(), z.mean()


def expert_load(cfg: MoEConfig, expert_ids: List[Tensor]) -> Tensor:
    """Tokens routed to each expert, [layers, experts] (each token counts once per chosen expert)."""
    return torch.stack([torch.bincount(e.reshape(-1), minlength=cfg.n_experts) for e in expert_ids])
