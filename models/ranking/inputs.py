"""From :class:`recsys.data.ranking.FeatureArrays` (numpy) to the ranker's torch input with TorchRec
``KeyedJaggedTensor``s at the sparse boundary.

Three KJTs, one per embedding module of :class:`models.ranking.encoder.RankingEncoder`:

- ``ids`` (``EmbeddingBagCollection``, pooled): ``user_id``.
- ``seqs`` (``EmbeddingCollection``, width ``id_dim``): ``cand_streamer`` (1 per row), the histories
  ``hist_click|hist_comment|hist_like|hist_gift`` (jagged) and ``hist_click_gap`` (time-gap buckets), all with the
  candidate in the *same* streamer table so that target attention compares vectors from one space.
- ``fields`` (``EmbeddingCollection``, width ``field_dim``): ``user_profile`` (20), ``streamer_profile`` (22),
  ``context`` (5), fixed length per row.

``user_of`` lets many candidate rows share one user's history (a serving request scores hundreds of rooms for one
user): row ``i`` reads the history stored at row ``user_of[i]``, and other rows may carry empty histories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchrec import KeyedJaggedTensor

from recsys.data.ranking import SEQ_KEYS, FeatureArrays

SEQ_FEATURES: tuple[str, ...] = ("cand_streamer", *SEQ_KEYS, "hist_click_gap")
FIELD_FEATURES: tuple[str, ...] = ("user_profile", "streamer_profile", "context")


@dataclass
class RankingInput:
    """Torch tensors of one batch. B rows; ``user_of`` [B] (identity in training)."""

    ids: KeyedJaggedTensor
    seqs: KeyedJaggedTensor
    fields: KeyedJaggedTensor
    dense: Tensor  # [B, n_dense]
    title: Tensor  # [B, title_dim]
    user_of: Tensor  # [B] int64
    time_ms: Tensor  # [B] int64 epoch ms of each row (the encoder's drift time)

    @property
    def batch_size(self) -> int:
        return int(self.dense.shape[0])

    def to(self, device: torch.device | str) -> "RankingInput":
        return RankingInput(self.ids.to(device), self.seqs.to(device), self.fields.to(device),
                            self.dense.to(device), self.title.to(device), self.user_of.to(device),
                            self.time_ms.to(device))


def _jagged(parts: list[tuple[np.ndarray, np.ndarray]], keys: tuple[str, ...]) -> KeyedJaggedTensor:
    """KJT from per-key (padded values [B, L], lengths [B]); values are taken left-aligned."""
    values, lengths = [], []
    for padded, lens in parts:
        padded = np.asarray(padded).reshape(len(lens), -1)
        mask = np.arange(padded.shape[1])[None, :] < np.asarray(lens)[:, None]
        values.append(padded[mask])
        lengths.append(np.asarray(lens, np.int64))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys), values=torch.from_numpy(np.concatenate(values).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate(lengths)).to(torch.int32),
    )


def to_input(a: FeatureArrays, user_of: np.ndarray | None = None) -> RankingInput:
    """Build the torch input of a batch (CPU tensors; call ``.to(device)``)."""
    b = len(a)
    ones = np.ones(b, np.int64)
    ids = _jagged([(a.user_idx[:, None], ones)], ("user_id",))
    seq_parts = [(a.streamer_idx[:, None], ones)]
    seq_parts += [(a.hist[k], a.hist_len[k]) for k in SEQ_KEYS]
    seq_parts.append((a.hist_gap, a.hist_len["hist_click"]))
    seqs = _jagged(seq_parts, SEQ_FEATURES)
    fields = _jagged([(x, np.full(b, x.shape[1], np.int64)) for x in (a.user_profile, a.streamer_profile, a.context)],
                     FIELD_FEATURES)
    uo = np.arange(b) if user_of is None else np.asarray(user_of, np.int64)
    if uo.shape != (b,) or (b and (uo.min() < 0 or uo.max() >= b)):
        raise ValueError(f"user_of must be {b} row indices in [0, {b}), got shape {uo.shape}")
    return RankingInput(ids=ids, seqs=seqs, fields=fields, dense=torch.from_numpy(np.ascontiguousarray(a.dense)),
                        title=torch.from_numpy(np.ascontiguousarray(a.title, dtype=np.float32)),
                        user_of=torch.from_numpy(uo), time_ms=torch.from_numpy(np.asarray(a.time_ms, np.int64)))
