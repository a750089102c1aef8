"""Building blocks shared by the retrievers: the item encoder, the query-feature encoder and the decomposed-mask
transformer layer of the GRank generator."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from recsys.data.ranking import N_GAP_BUCKETS
from recsys.data.retrieval import CATEGORIES, N_LIVE_TYPES
from models.retrieval.inputs import CatalogSizes, QueryBatch


class ItemEncoder(nn.Module):
    """Item vectors shared by every module of a retriever.

    ``e(item) = E_streamer[streamer(item)] + W [title(item); E_cat[category]; E_type[live type]]``: a room is its
    streamer plus what is particular to this broadcast (retrieval brief §8), so one table serves both
    granularities and a room that just started has a vector.

    ``forward(rows [...]) -> [..., dim]``; row 0 (padding) maps to zeros.
    """

    def __init__(self, sizes: CatalogSizes, dim: int, buffers: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.streamer = nn.Embedding(sizes.n_streamers, dim, padding_idx=0)
        self.category = nn.Embedding(len(CATEGORIES) + 1, dim)
        self.live_type = nn.Embedding(N_LIVE_TYPES, dim)
        self.title = nn.Linear(sizes.title_dim, dim, bias=False)
        nn.init.normal_(self.streamer.weight, std=0.05)
        nn.init.normal_(self.category.weight, std=0.05)
        nn.init.normal_(self.live_type.weight, std=0.05)
        nn.init.normal_(self.title.weight, std=0.05 / math.sqrt(sizes.title_dim))
        with torch.no_grad():
            self.streamer.weight[0].zero_()
        shapes = {"streamer_row": (sizes.n_items,), "category": (sizes.n_items,), "live_type": (sizes.n_items,),
                  "title_row": (sizes.n_items,)}
        for name, shape in shapes.items():
            value = buffers[name] if buffers is not None else torch.zeros(shape, dtype=torch.long)
            self.register_buffer(f"item_{name}", value, persistent=False)
        titles = buffers["titles"] if buffers is not None else torch.zeros(1, sizes.title_dim)
        self.register_buffer("titles", titles, persistent=False)

    def forward(self, rows: Tensor, head: nn.Module | None = None) -> Tensor:
        """Item vectors of ``rows``; ``head`` (e.g. a tower MLP, output width ``dim``) is applied per item."""
        # a batch repeats items many times (negatives of nearby anchors, histories): encode each distinct row once
        uniq, inverse = torch.unique(rows.reshape(-1), return_inverse=True)
        e = self.streamer(self.item_streamer_row[uniq]) + self.category(self.item_category[uniq])
        e = e + self.live_type(self.item_live_type[uniq]) + self.title(self.titles[self.item_title_row[uniq]])
        if head is not None:
            e = head(e)
        e = e * (uniq > 0).unsqueeze(-1).to(e.dtype)
        return e[inverse].view(*rows.shape, self.dim)


class QueryEncoder(nn.Module):
    """The query token U (GRank §2.1): ``Linear([user id; profile; sum-pooled clicks; sum-pooled comments, likes,
    gifts, long views; hour; weekday])`` -> ``[B, dim]``."""

    def __init__(self, sizes: CatalogSizes, dim: int, short_len: int) -> None:
        super().__init__()
        self.short_len = short_len
        self.user = nn.Embedding(sizes.n_users, dim)
        self.profile = nn.EmbeddingBag(sizes.n_profile, dim, mode="sum")
        self.hour = nn.Embedding(24, dim)
        self.weekday = nn.Embedding(7, dim)
        self.proj = nn.Linear((5 + sizes.n_behaviours) * dim, dim)
        for emb in (self.user, self.profile, self.hour, self.weekday):
            nn.init.normal_(emb.weight, std=0.05)

    def forward(self, q: QueryBatch, items: ItemEncoder) -> Tensor:
        short = q.hist[:, -self.short_len:]
        clicks = items(short).sum(1) / math.sqrt(self.short_len)
        behaviour = items(q.behaviour).sum(2).flatten(1) / math.sqrt(q.behaviour.shape[-1])
        parts = [self.user(q.user), self.profile(q.profile), clicks, behaviour, self.hour(q.hour),
                 self.weekday(q.weekday)]
        return self.proj(torch.cat(parts, dim=-1))


class HistoryEncoder(nn.Module):
    """History tokens: item vector + time-gap bucket embedding (+ recency position when ``positions`` > 0).

    ``forward(items [B, L], gaps [B, L], item_vectors [B, L, d]) -> [B, L, d]``.
    """

    def __init__(self, dim: int, positions: int = 0) -> None:
        super().__init__()
        self.gap = nn.Embedding(N_GAP_BUCKETS, dim, padding_idx=0)
        self.pos = nn.Embedding(positions, dim) if positions else None
        nn.init.normal_(self.gap.weight, std=0.05)
        with torch.no_grad():
            self.gap.weight[0].zero_()
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.05)

    def forward(self, items: Tensor, gaps: Tensor, item_vectors: Tensor) -> Tensor:
        x = item_vectors + self.gap(gaps)
        if self.pos is not None:
            x = x + self.pos.weight[-items.shape[1]:].unsqueeze(0)
        return x


class DecomposedLayer(nn.Module):
    """Pre-LN transformer layer over ``[h_1..h_L, U]`` with optional candidate tokens ``c_1..c_C`` (GRank §2.4).

    Visibility: ``h_i`` sees ``h_{<=i}`` (causal), ``U`` sees every ``h`` and itself, ``c_j`` sees every ``h``, ``U``
    and itself, never another candidate. Sequence rows never read candidates, so their outputs are the same with and
    without candidates; the candidates' attention to the sequence reuses the sequence's keys and values of the layer
    (cost ``O(L^2 d + C L d)`` instead of ``O((L + C)^2 d)``). Padding keys (``valid`` False) are never attended; a
    row always attends itself, so it is never empty.

    ``forward(x [B, S, d], valid [B, S] bool, c [B, C, d] | None) -> (x' [B, S, d], c' [B, C, d] | None)``.
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def _split(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = t.shape
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        return tuple(z.view(b, n, self.heads, -1).transpose(1, 2) for z in (q, k, v))  # [B, H, n, dh]

    def forward_sequence(self, x: Tensor, valid: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The sequence rows ``[B, S, d]`` -> (outputs, this layer's keys and values ``[B, H, S, dh]``)."""
        b, s, d = x.shape
        q, k, v = self._split(self.norm1(x))
        eye = torch.eye(s, dtype=torch.bool, device=x.device)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        mask = (causal & valid[:, None, :]) | eye  # [B, S, S]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], dropout_p=0.0)
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, s, d)))
        x = x + self.drop(self.ffn(self.norm2(x)))
        return x, (k, v)

    def forward_candidates(self, c: Tensor, kv: tuple[Tensor, Tensor], valid: Tensor) -> Tensor:
        """Candidate rows ``[B, C, d]`` attending the cached sequence keys/values of this layer and themselves."""
        b, n, d = c.shape
        k, v = kv
        s = k.shape[2]
        qc, kc, vc = self._split(self.norm1(c))
        scale = 1.0 / math.sqrt(qc.shape[-1])
        seq_scores = torch.einsum("bhcd,bhsd->bhcs", qc, k) * scale
        seq_scores = seq_scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        self_scores = (qc * kc).sum(-1, keepdim=True) * scale  # [B, H, C, 1]
        w = torch.softmax(torch.cat([seq_scores, self_scores], dim=-1), dim=-1)
        att_c = torch.einsum("bhcs,bhsd->bhcd", w[..., :s], v) + w[..., s:] * vc
        c = c + self.drop(self.out(att_c.transpose(1, 2).reshape(b, n, d)))
        return c + self.drop(self.ffn(self.norm2(c)))

    def forward(self, x: Tensor, valid: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x_out, kv = self.forward_sequence(x, valid)
        return x_out, (self.forward_candidates(c, kv, valid) if c is not None else None)


__all__ = ["DecomposedLayer", "HistoryEncoder", "ItemEncoder", "QueryEncoder"]
