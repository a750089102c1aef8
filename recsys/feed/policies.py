"""Reference allocation policies for :class:`recsys.feed.env.FeedEnv`.

A policy is a callable ``features (n, F) -> prob_insert (n,)`` in [0, 1] over the columns of
:func:`recsys.feed.env.feature_names`. The environment forces ``prob_insert = 0`` where there is no live candidate
(``has_candidate = 0``), both when it acts and in :meth:`LoggedData.target_propensity`.

* :func:`constant` / :func:`always` / :func:`never`: insert with a fixed probability (the bounds, and "random at the
  logging rate").
* :func:`threshold`: greedy threshold on one feature (default ``score_hat = p_click_hat * watch_hat``, the predicted
  live watch time of an insertion); with ``temperature`` a soft sigmoid, whose propensities lie in (0, 1).
* :func:`epsilon_greedy`: ``(1 - eps) * base + eps / 2``; the default LOGGING policy (propensities in
  ``[eps / 2, 1 - eps / 2]``, never 0 or 1).
* :func:`clipped`: clip another policy's probabilities to ``[low, 1 - low]`` (the brief's soft logging policy).

Every policy has a readable ``name``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.feed.env import Policy, feature_index

__all__ = ["Clipped", "Constant", "EpsilonGreedy", "Threshold", "always", "clipped", "constant",
           "epsilon_greedy", "never", "threshold"]


def _rows(x: np.ndarray) -> int:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, F), got shape {x.shape}")
    return x.shape[0]


@dataclass(frozen=True)
class Constant:
    """Insert with probability ``p`` at every request."""

    p: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {self.p}")

    @property
    def name(self) -> str:
        return f"constant({self.p:g})"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.full(_rows(x), float(self.p))


def constant(p: float) -> Constant:
    """Insert with probability ``p`` at every request (``constant(0)`` never, ``constant(1)`` always)."""
    return Constant(float(p))


def always(p: float = 1.0) -> Constant:
    """Insert with probability ``p`` at every request (alias of :func:`constant`; default: always insert)."""
    return Constant(float(p))


def never() -> Constant:
    """Never insert (value 0, cost 0)."""
    return Constant(0.0)


@dataclass(frozen=True)
class Threshold:
    """``1[g(x_f) > theta]``, or ``sigmoid((g(x_f) - theta) / temperature)`` when soft; g = log if ``log``."""

    feature: str
    theta: float
    temperature: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        feature_index(self.feature)  # validates the name
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def name(self) -> str:
        g = f"log {self.feature}" if self.log else self.feature
        soft = "" if self.temperature is None else f", T={self.temperature:g}"
        return f"threshold({g} > {self.theta:g}{soft})"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _rows(x)
        v = np.asarray(x, dtype=np.float64)[:, feature_index(self.feature)]
        if self.log:
            v = np.log(np.maximum(v, 1e-12))
        if self.temperature is None:
            return (v > self.theta).astype(np.float64)
        return 0.5 * (1.0 + np.tanh(0.5 * (v - self.theta) / self.temperature))


def threshold(feature_name: str = "score_hat", threshold: float = 0.0, temperature: float | None = None,
              log: bool = False) -> Threshold:
    """Threshold-greedy on one feature: insert iff ``feature > threshold``.

    Args:
        feature_name: a column of :func:`recsys.feed.env.feature_names`, e.g. ``score_hat`` (predicted live minutes of
            an insertion) or ``watch_hat``.
        threshold: theta.
        temperature: ``None`` for the hard rule (propensities 0 / 1); else ``sigmoid((v - theta) / temperature)``,
            propensities in (0, 1).
        log: threshold ``log(feature)`` instead (the brief's ``sigma((log w_hat - theta) / tau)``).
    """
    return Threshold(feature_name, float(threshold), None if temperature is None else float(temperature), log)


@dataclass(frozen=True)
class EpsilonGreedy:
    """With probability ``eps`` a uniformly random action, else the base policy: ``(1 - eps) * base + eps / 2``."""

    base: Any
    eps: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"eps must lie in [0, 1], got {self.eps}")

    @property
    def name(self) -> str:
        return f"eps_greedy({getattr(self.base, 'name', repr(self.base))}, eps={self.eps:g})"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (1.0 - self.eps) * np.asarray(self.base(x), dtype=np.float64) + 0.5 * self.eps


def epsilon_greedy(base: Policy, eps: float = 0.2) -> EpsilonGreedy:
    """epsilon-greedy around ``base``: the default logging policy (propensities in ``[eps/2, 1 - eps/2]``)."""
    return EpsilonGreedy(base, float(eps))


@dataclass(frozen=True)
class Clipped:
    """Probabilities of ``base`` clipped to ``[low, 1 - low]``."""

    base: Any
    low: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < 0.5 or math.isnan(self.low):
            raise ValueError(f"low must lie in [0, 0.5), got {self.low}")

    @property
    def name(self) -> str:
        return f"clip({getattr(self.base, 'name', repr(self.base))}, {self.low:g})"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(self.base(x), dtype=np.float64), self.low, 1.0 - self.low)


def clipped(base: Policy, low: float = 0.05) -> Clipped:
    """Clip ``base`` to ``[low, 1 - low]`` (e.g. the brief's soft logging policy
    ``clipped(threshold("score_hat", theta, temperature=1, log=True), 0.05)``)."""
    return Clipped(base, float(low))
