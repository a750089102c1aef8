"""Model inputs of the retrievers: the item catalogue as tensors and a batch of queries as tensors."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from recsys.data.retrieval import ItemCatalog, QueryArrays


@dataclass
class QueryBatch:
    """Torch view of :class:`~recsys.data.retrieval.QueryArrays` (same names and shapes, int64)."""

    user: Tensor  # [B]
    profile: Tensor  # [B, F]
    hour: Tensor  # [B]
    weekday: Tensor  # [B]
    hist: Tensor  # [B, L_long] item rows, right-aligned (0 = padding)
    hist_gap: Tensor  # [B, L_long]
    behaviour: Tensor  # [B, K, L_b]

    @classmethod
    def from_arrays(cls, q: QueryArrays, device: torch.device | str = "cpu") -> "QueryBatch":
        return cls(**{f.name: torch.as_tensor(np.ascontiguousarray(getattr(q, f.name)), dtype=torch.long,
                                              device=device) for f in fields(cls)})

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclass(frozen=True)
class CatalogSizes:
    """Table sizes a retriever is built with (saved with every export)."""

    n_items: int
    n_streamers: int
    n_users: int
    n_profile: int
    n_profile_fields: int
    n_behaviours: int
    title_dim: int
    granularity: str


def catalog_tensors(catalog: ItemCatalog) -> dict[str, Tensor]:
    """The per-item side arrays a model keeps as buffers: streamer row, category, live type, title row, titles."""
    return {
        "streamer_row": torch.as_tensor(catalog.streamer_row, dtype=torch.long),
        "category": torch.as_tensor(catalog.category, dtype=torch.long),
        "live_type": torch.as_tensor(catalog.live_type, dtype=torch.long),
        "title_row": torch.as_tensor(catalog.title_row, dtype=torch.long),
        "titles": torch.as_tensor(np.asarray(catalog.titles, np.float32)),
    }


__all__ = ["CatalogSizes", "QueryBatch", "catalog_tensors"]
