"""Exposure pacing: hold the served insertion ratio at the allocation target the policy was trained for.

The allocation policy is trained offline against an allocation-ratio budget (SL-MGAC's Lagrangian, then the student's
calibration), on the feed environment's state features. Online its inputs come from the served models (the
multi-task ranker's P(click) and watch time), whose scale differs from the training features, and the traffic mix
moves during the day; the same policy can then insert far more or far less often than the budget allows. The pacer
keeps the budget the way production systems pace an exposure constraint: it adds an offset to the policy's insert
logit,

    p' = sigmoid(logit(p) + offset),

and moves the offset after every served batch by stochastic approximation on the expected ratio,

    offset <- clip(offset + lr * sum_i (target - p'_i), +-max_step per update, +-max_offset overall).

The shift is monotone, so the policy's order of requests (which ones deserve an insertion most) is kept; only how
many pass changes. The logged propensity is ``p'``, the probability the action was drawn with, so off-policy
evaluation of the service's decision log stays exact. Thread-safe (batch workers share one pacer).
"""

from __future__ import annotations

import threading

import numpy as np

_EPS = 1e-6


class InsertionPacer:
    """``adjust(p) -> p'`` with the current offset; ``update(p')`` after the batch's actions are drawn.

    Args:
        target: the allocation ratio to hold, in (0, 1).
        lr: offset change per request and unit of ratio error.
        max_step: largest offset change of one update (a large batch cannot jump the offset).
        max_offset: bound of the offset in logits.
    """

    def __init__(self, target: float, lr: float = 0.05, max_step: float = 0.5, max_offset: float = 10.0) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"pacing target must lie in (0, 1), got {target}")
        if lr <= 0 or max_step <= 0 or max_offset <= 0:
            raise ValueError(f"lr, max_step and max_offset must be positive: {lr}, {max_step}, {max_offset}")
        self.target, self.lr, self.max_step, self.max_offset = float(target), float(lr), float(max_step), \
            float(max_offset)
        self._offset = 0.0
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        return self._offset

    def adjust(self, probs: np.ndarray) -> np.ndarray:
        """The policy's P(insert) ``(n,)`` shifted by the current offset on the logit scale."""
        p = np.clip(np.asarray(probs, np.float64), _EPS, 1.0 - _EPS)
        return 1.0 / (1.0 + np.exp(-(np.log(p / (1.0 - p)) + self._offset)))

    def update(self, adjusted: np.ndarray) -> float:
        """Move the offset toward the target with the batch's adjusted probabilities; returns the new offset."""
        a = np.asarray(adjusted, np.float64)
        if a.size == 0:
            return self._offset
        step = float(np.clip(self.lr * float(np.sum(self.target - a)), -self.max_step, self.max_step))
        with self._lock:
            self._offset = float(np.clip(self._offset + step, -self.max_offset, self.max_offset))
            return self._offset


__all__ = ["InsertionPacer"]
