"""The allocators the platform trains, by name, and how to build one.

A builder takes ``(n_features, n_groups, has_candidate_index, **options)`` (options: fields of the model's config)
and returns an untrained model: an ``nn.Module`` with ``prepare / losses / after_step / prob_insert / serving``, or
the non-parametric :class:`~models.allocation.baselines.ThresholdGreedy` (tuned by ``fit``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from models.allocation.baselines import BaselineConfig, BehaviorCloning, DiscreteCQL, DoubleDQN, ThresholdGreedy
from models.allocation.slmgac import SLMGAC, SLMGACConfig


def _check(cls: type, options: dict[str, Any], name: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name}; known: {sorted(known)}")


def _slmgac(overrides: dict[str, Any], name: str) -> Callable[..., SLMGAC]:
    def build(n_features: int, n_groups: int, has_candidate_index: int = 8, **options: Any) -> SLMGAC:
        opts = {**overrides, **options}
        _check(SLMGACConfig, opts, name)
        return SLMGAC(SLMGACConfig(n_features=n_features, n_groups=n_groups,
                                   has_candidate_index=has_candidate_index, **opts))
    return build


def _baseline(cls: type) -> Callable[..., Any]:
    def build(n_features: int, n_groups: int, has_candidate_index: int = 8, **options: Any):
        _check(BaselineConfig, options, cls.__name__)
        return cls(BaselineConfig(n_features=n_features, has_candidate_index=has_candidate_index, **options))
    return build


def _threshold(n_features: int, n_groups: int, has_candidate_index: int = 8, feature_index: int = 2,
               feature: str = "score_hat") -> ThresholdGreedy:
    return ThresholdGreedy(feature_index=feature_index, has_candidate_index=has_candidate_index, feature=feature)


#: name -> builder. ``plain_ac`` is the ablation without supervised reward heads and without multi-group heads.
ALLOCATORS: dict[str, Callable[..., Any]] = {
    "slmgac": _slmgac({}, "slmgac"),
    "bc": _baseline(BehaviorCloning),
    "dqn": _baseline(DoubleDQN),
    "cql": _baseline(DiscreteCQL),
    "plain_ac": _slmgac({"multi_group": False, "sl_reward": False}, "plain_ac"),
    "threshold": _threshold,
}


def build_allocator(name: str, n_features: int, n_groups: int, has_candidate_index: int = 8, **options: Any):
    """The untrained allocator ``name`` (see :data:`ALLOCATORS`)."""
    if name not in ALLOCATORS:
        raise ValueError(f"unknown allocator {name!r}; choose one of {sorted(ALLOCATORS)}")
    return ALLOCATORS[name](n_features, n_groups, has_candidate_index, **options)


__all__ = ["ALLOCATORS", "build_allocator"]
