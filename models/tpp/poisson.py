"""Homogeneous marked Poisson process: the history-free baseline and the closed-form check of the likelihood code.

``lambda_k(t) = r_k = exp(log_rate_k)``, so ``ll = sum_{i>=1} log r_{k_i} - (sum_k r_k) (t_{N-1} - t_0)`` and the
exact thinning bound is ``sum_k r_k``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.tpp.base import Encoded, NeuralTPP, TPPConfig
from models.tpp.batch import TPPBatch


class PoissonTPP(NeuralTPP):
    """``log_rate [K]`` (init ``log(init_rate)``); ``hidden`` is an empty ``[B, S, 0]`` tensor."""

    def __init__(self, cfg: TPPConfig, init_rate: float = 1.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.log_rate = nn.Parameter(torch.full((cfg.n_types,), float(init_rate)).log())

    def encode(self, batch: TPPBatch) -> Encoded:
        b, s = batch.times.shape
        return Encoded(batch, batch.times.new_zeros(b, s, 0), self.log_rate.new_zeros(()))

    def intensity_at(self, enc: Encoded, query_times: Tensor) -> Tensor:
        return self.log_rate.exp().expand(*query_times.shape, -1)

    def intensity_bound(self, enc: Encoded, dtime_max: float) -> Tensor:
        return self.log_rate.exp().sum().expand_as(enc.batch.times)
