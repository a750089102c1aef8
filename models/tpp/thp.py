"""Transformer Hawkes Process (Zuo et al. 2020), EasyTPP variant (brief ``tpp.md`` §2.2).

Encoder: ``h^(0) = Emb(k_j)``; every layer ``h <- FFN(MHA_causal(h + TE(t_j)))`` with the temporal encoding re-added
before each layer, no residual, no LayerNorm, ONE FFN (``d -> 2d -> d``, ReLU) shared by all layers, and no output
projection in the attention (the EasyTPP quirks, kept on purpose). Event ``j`` attends to events ``<= j``.

Intensity on ``(t_j, t_{j+1}]``: ``lambda_k(t) = sp_beta(alpha_k (t - t_j) + w_k^T h_j + b_k)``; it is monotone in
``t``, so the exact thinning bound is ``sum_k sp_beta(max(a_k, a_k + alpha_k dtime_max))`` with ``a = W h_j + b``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.tpp.base import Encoded, NeuralTPP, ScaledSoftplus, TPPConfig, causal_mask, time_encoding
from models.tpp.batch import TPPBatch


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention ``[B, S, d] -> [B, S, d]`` (heads concatenated, no output projection)."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"THP: d_model={d_model} must be divisible by heads={heads}")
        self.heads = heads
        self.wq, self.wk, self.wv = (nn.Linear(d_model, d_model) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        h = self.heads

        def split(y: Tensor) -> Tensor:
            return y.view(b, s, h, d // h).transpose(1, 2)  # [B, H, S, d/H]

        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        scores = (q @ k.transpose(-1, -2)) * (d // h) ** -0.5
        a = self.drop(torch.softmax(scores.masked_fill(causal_mask(s, x.device), float("-inf")), -1))
        return (a @ v).transpose(1, 2).reshape(b, s, d)


class THP(NeuralTPP):
    """THP with ``cfg.layers`` attention layers of ``cfg.heads`` heads; ``encode(batch).hidden = h [B, S, d_model]``."""

    def __init__(self, cfg: TPPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k = cfg.d_model, cfg.n_types
        if d % 2:
            raise ValueError(f"THP: d_model must be even (temporal encoding), got {d}")
        self.type_emb = nn.Embedding(k, d)
        self.attn = nn.ModuleList(CausalSelfAttention(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.intensity_hidden = nn.Linear(d, k)
        self.alpha = nn.Parameter(torch.randn(k) / k ** 0.5)  # slope in t - t_j
        self.base = nn.Parameter(torch.randn(k) / k ** 0.5)
        self.softplus = ScaledSoftplus(k)

    def encode(self, batch: TPPBatch) -> Encoded:
        te = time_encoding(batch.times, self.cfg.d_model)
        h = self.type_emb(self.marks(batch))
        for attn in self.attn:
            h = self.ffn(attn(h + te))
        return Encoded(batch, h, h.new_zeros(()))

    def _base_logits(self, enc: Encoded) -> Tensor:
        return self.intensity_hidden(enc.hidden) + self.base  # [B, S, K]

    def intensity_at(self, enc: Encoded, query_times: Tensor) -> Tensor:
        dt = query_times - enc.batch.times[..., None]  # [B, S, G]
        return self.softplus(self.alpha * dt[..., None] + self._base_logits(enc)[:, :, None])

    def intensity_bound(self, enc: Encoded, dtime_max: float) -> Tensor:
        a = self._base_logits(enc)
        return self.softplus(torch.maximum(a, a + self.alpha * dtime_max)).sum(-1)
