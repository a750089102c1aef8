"""Padded batch of marked event sequences for the neural TPPs (brief ``tpp.md`` §1).

Events are **left-aligned**: sequence ``b`` holds its ``n_b`` events in positions ``0..n_b-1`` and padding after them.
Times are absolute (any unit and origin the caller chose, e.g. minutes since the window start rescaled so that the
median gap is about 1) and strictly increasing over the valid positions. Padded positions repeat the last valid time
(:meth:`TPPBatch.from_lists`); their values are never scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TPPBatch:
    """``times [B, S]`` float (absolute), ``types [B, S]`` long (marks ``0..K-1``), ``valid [B, S]`` bool.

    ``t_end [B]`` (optional): the end of each sequence's observation window, ``>=`` its last event time. When given,
    :meth:`~models.tpp.base.NeuralTPP.log_likelihood` adds the survival term ``-int_{t_N}^{t_end} lambda`` (brief §1,
    ``include_survival``); when ``None`` the term is dropped, as in EasyTPP and the PromptTPP code.

    Construction checks shapes, dtypes, left alignment and strictly increasing valid times (``ValueError``).
    """

    times: Tensor
    types: Tensor
    valid: Tensor
    t_end: Tensor | None = None

    def __post_init__(self) -> None:
        t, k, v = self.times, self.types, self.valid
        if t.dim() != 2 or k.shape != t.shape or v.shape != t.shape:
            raise ValueError(f"TPPBatch: times/types/valid must share one [B, S] shape, got {list(t.shape)}, "
                             f"{list(k.shape)}, {list(v.shape)}")
        if not t.is_floating_point() or k.dtype != torch.long or v.dtype != torch.bool:
            raise ValueError(f"TPPBatch: dtypes must be float/long/bool, got {t.dtype}/{k.dtype}/{v.dtype}")
        if t.shape[1] == 0:
            raise ValueError("TPPBatch: S must be >= 1 (pad empty sequences with one invalid position)")
        if bool((v[:, 1:] & ~v[:, :-1]).any()):
            raise ValueError("TPPBatch: events must be left-aligned (no valid position after a padded one)")
        if bool(((t[:, 1:] <= t[:, :-1]) & v[:, 1:]).any()):
            raise ValueError("TPPBatch: valid event times must be strictly increasing (break ties upstream)")
        if bool(((k < 0) & v).any()):
            raise ValueError("TPPBatch: marks must be >= 0")
        if self.t_end is not None:
            if self.t_end.shape != t.shape[:1]:
                raise ValueError(f"TPPBatch: t_end must be [B], got {list(self.t_end.shape)}")
            if bool((self.t_end < self.last_time()).any()):
                raise ValueError("TPPBatch: t_end must be >= the last event time of its sequence")

    @classmethod
    def from_lists(cls, times: Sequence[Sequence[float]], types: Sequence[Sequence[int]],
                   t_end: Sequence[float] | None = None, dtype: torch.dtype = torch.float32) -> TPPBatch:
        """Pad python lists (one list per sequence, possibly empty) into a left-aligned batch."""
        if len(times) != len(types) or len(times) == 0:
            raise ValueError("from_lists: times and types must be non-empty lists of the same length")
        lengths = [len(ts) for ts in times]
        if any(len(ks) != n for ks, n in zip(types, lengths)):
            raise ValueError("from_lists: every times list must have as many entries as its types list")
        b, s = len(times), max(max(lengths), 1)
        t = torch.zeros(b, s, dtype=dtype)
        k = torch.zeros(b, s, dtype=torch.long)
        v = torch.zeros(b, s, dtype=torch.bool)
        for i, (ts, ks) in enumerate(zip(times, types)):
            n = len(ts)
            if n:
                t[i, :n] = torch.tensor(ts, dtype=dtype)
                t[i, n:] = float(ts[-1])
                k[i, :n] = torch.tensor(ks, dtype=torch.long)
                v[i, :n] = True
        end = None if t_end is None else torch.tensor(list(t_end), dtype=dtype)
        return cls(t, k, v, end)

    @property
    def dt(self) -> Tensor:
        """Inter-event times ``[B, S]``: ``dt[:, i] = t_i - t_{i-1}`` for valid ``i >= 1``; ``dt[:, 0] = 0`` (the
        first event has no predecessor in the batch; the window start is not used) and 0 at padded positions."""
        d = torch.zeros_like(self.times)
        d[:, 1:] = self.times[:, 1:] - self.times[:, :-1]
        return d * self.valid

    @property
    def lengths(self) -> Tensor:
        """Number of valid events per sequence, ``[B]`` long."""
        return self.valid.sum(1)

    def last_time(self) -> Tensor:
        """Time of the last valid event per sequence, ``[B]`` (the first position's time for empty sequences)."""
        idx = (self.lengths - 1).clamp_min(0)
        return self.times.gather(1, idx[:, None])[:, 0]

    def select(self, index: Tensor | Sequence[int]) -> TPPBatch:
        """Sub-batch of the sequences ``index`` (same ``S``)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.times.device)
        end = None if self.t_end is None else self.t_end[idx]
        return TPPBatch(self.times[idx], self.types[idx], self.valid[idx], end)

    def to(self, device: torch.device | str) -> TPPBatch:
        end = None if self.t_end is None else self.t_end.to(device)
        return TPPBatch(self.times.to(device), self.types.to(device), self.valid.to(device), end)

    def __len__(self) -> int:
        return self.times.shape[0]
