"""Two-tower (DSSM / YouTube-DNN style) baseline: a user tower and an item tower meet in an inner product.

User tower: ``MLP([user id; profile; mean of the last short_len clicked items; hour; weekday])``; item tower:
``MLP(e_item)`` over the shared :class:`~models.retrieval.layers.ItemEncoder`. Trained with the same InfoNCE over
live-at-t negatives as the GRank generator, so the comparison isolates the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.retrieval.grank import info_nce, mips_scores
from models.retrieval.inputs import CatalogSizes, QueryBatch
from models.retrieval.layers import ItemEncoder


@dataclass
class TwoTowerConfig:
    dim: int = 64
    hidden: int = 256
    short_len: int = 64
    long_len: int = 256
    temperature: float = 0.07
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if min(self.dim, self.hidden, self.short_len) < 1 or self.temperature <= 0:
            raise ValueError(f"two-tower sizes must be positive: {self}")


def _tower(n_in: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))


class TwoTower(nn.Module):
    """``user_vector(q) -> [B, d]``, ``item_vectors(rows) -> [..., d]``, ``scores``/``losses`` as GRank."""

    def __init__(self, sizes: CatalogSizes, cfg: TwoTowerConfig, buffers: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        self.sizes, self.cfg = sizes, cfg
        d = cfg.dim
        self.items = ItemEncoder(sizes, d, buffers)
        self.user = nn.Embedding(sizes.n_users, d)
        self.profile = nn.EmbeddingBag(sizes.n_profile, d, mode="sum")
        self.hour = nn.Embedding(24, d)
        self.weekday = nn.Embedding(7, d)
        for emb in (self.user, self.profile, self.hour, self.weekday):
            nn.init.normal_(emb.weight, std=0.05)
        self.user_tower = _tower(5 * d, cfg.hidden, d, cfg.dropout)
        self.item_tower = _tower(d, cfg.hidden, d, cfg.dropout)

    def user_vector(self, q: QueryBatch) -> Tensor:
        short = q.hist[:, -self.cfg.short_len:]
        n = (short > 0).sum(1, keepdim=True).clamp_min(1)
        pooled = self.items(short).sum(1) / n
        x = torch.cat([self.user(q.user), self.profile(q.profile), pooled, self.hour(q.hour),
                       self.weekday(q.weekday)], dim=-1)
        return self.user_tower(x)

    def item_vectors(self, rows: Tensor) -> Tensor:
        return self.items(rows, head=self.item_tower)

    @torch.no_grad()
    def scores(self, q: QueryBatch, cand: Tensor, valid: Tensor, cand_pop: Tensor | None = None) -> Tensor:
        """MIPS scores (``cand_pop`` is accepted for a common signature and unused: a tower has no ranker)."""
        return mips_scores(self.user_vector(q), self.item_vectors(cand), valid)

    def losses(self, q: QueryBatch, cand: Tensor, valid: Tensor, cand_pop: Tensor | None = None
               ) -> dict[str, Tensor]:
        s = torch.einsum("bd,bcd->bc", self.user_vector(q), self.item_vectors(cand))
        loss = info_nce(s, valid, self.cfg.temperature)
        return {"ntp": loss, "loss": loss}


__all__ = ["TwoTower", "TwoTowerConfig"]
