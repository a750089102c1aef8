"""Policy specs: short strings naming an allocation policy, for the ``recsys replay`` / ``recsys ope`` command line.

========================================  ==========================================================================
spec                                      policy
========================================  ==========================================================================
``always`` / ``always:P``                 insert with probability P (default 1) at every request
``never``                                 never insert
``constant:P``                            insert with probability P
``threshold:FEATURE:THETA[:TEMPERATURE]`` insert iff ``FEATURE > THETA`` (hard), or ``sigmoid((FEATURE - THETA) / T)``
``logging[:ALLOC_RATIO[:EPS]]``           the environment's default logging policy
                                          (:meth:`recsys.feed.env.FeedEnv.default_logging_policy`; needs the env)
a directory                               an exported learned policy, ``models.allocation.export.load_policy(dir)``
========================================  ==========================================================================

Every error is a :class:`PolicySpecError` (a ``ValueError``) naming the offending part of the string.
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path
from typing import Any

from recsys.feed.env import FeedEnv, Policy, feature_index
from recsys.feed.policies import always, constant, never, threshold

__all__ = ["POLICY_SPEC_HELP", "PolicySpecError", "parse_policy", "policy_key"]

POLICY_SPEC_HELP = ("always[:P] | never | constant:P | threshold:FEATURE:THETA[:TEMPERATURE] | "
                    "logging[:ALLOC_RATIO[:EPS]] | an exported policy directory")

_KINDS = ("always", "never", "constant", "threshold", "logging")


class PolicySpecError(ValueError):
    """A policy spec string that does not parse (the message names the bad part)."""


def _number(spec: str, part: str, what: str, low: float | None = None, high: float | None = None,
            open_low: bool = False) -> float:
    try:
        value = float(part)
    except ValueError:
        raise PolicySpecError(f"policy {spec!r}: {what} must be a number, got {part!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise PolicySpecError(f"policy {spec!r}: {what} must be finite, got {part!r}")
    if low is not None and (value <= low if open_low else value < low):
        raise PolicySpecError(f"policy {spec!r}: {what} must be {'>' if open_low else '>='} {low:g}, got {part!r}")
    if high is not None and value > high:
        raise PolicySpecError(f"policy {spec!r}: {what} must be <= {high:g}, got {part!r}")
    return value


def _arity(spec: str, kind: str, args: list[str], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise PolicySpecError(f"policy {spec!r}: {kind} takes {usage}, got {len(args)} argument(s)")


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.startswith(".") or spec.startswith("~") or Path(spec).exists()


def _load_exported(spec: str) -> Policy:
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise PolicySpecError(f"policy {spec!r}: {path} is not a directory (an exported allocation policy)")
    try:
        module = importlib.import_module("models.allocation.export")
        load_policy = module.load_policy
    except (ImportError, AttributeError) as exc:
        raise PolicySpecError(
            f"policy {spec!r}: cannot load the exported policy at {path}: models.allocation.export.load_policy is "
            f"not available ({exc})"
        ) from exc
    policy = load_policy(path)
    if not callable(policy):
        raise PolicySpecError(f"policy {spec!r}: load_policy({path}) returned a {type(policy).__name__}, "
                              "not a callable policy")
    return policy


def parse_policy(spec: str, env: FeedEnv | None = None) -> Policy:
    """The policy named by ``spec`` (see the module docstring), a callable ``features (n, F) -> prob_insert (n,)``.

    Args:
        spec: the policy string, e.g. ``"threshold:score_hat:5.3"`` or ``"runs/allocator/export"``.
        env: the environment; needed only by ``logging`` (its default logging policy is calibrated on it).

    Raises:
        PolicySpecError: naming the bad part of the string (unknown kind, bad number, unknown feature, ``logging``
            without an environment, a missing or unloadable export directory).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PolicySpecError(f"empty policy spec {spec!r}; expected {POLICY_SPEC_HELP}")
    spec = spec.strip()
    kind, *args = spec.split(":")
    if kind not in _KINDS:
        if _looks_like_path(spec):
            return _load_exported(spec)
        raise PolicySpecError(f"policy {spec!r}: unknown kind {kind!r}; expected {POLICY_SPEC_HELP}")
    if kind == "never":
        _arity(spec, kind, args, 0, 0, "no argument")
        return never()
    if kind == "always":
        _arity(spec, kind, args, 0, 1, "at most one argument (P)")
        return always(_number(spec, args[0], "P", 0.0, 1.0) if args else 1.0)
    if kind == "constant":
        _arity(spec, kind, args, 1, 1, "one argument (P)")
        return constant(_number(spec, args[0], "P", 0.0, 1.0))
    if kind == "threshold":
        _arity(spec, kind, args, 2, 3, "FEATURE:THETA[:TEMPERATURE]")
        feature = args[0]
        try:
            feature_index(feature)
        except ValueError as exc:
            raise PolicySpecError(f"policy {spec!r}: {exc}") from None
        theta = _number(spec, args[1], "THETA")
        temperature = _number(spec, args[2], "TEMPERATURE", 0.0, open_low=True) if len(args) == 3 else None
        return threshold(feature, theta, temperature)
    # logging
    _arity(spec, kind, args, 0, 2, "at most ALLOC_RATIO:EPS")
    if env is None:
        raise PolicySpecError(f"policy {spec!r}: the logging policy needs the environment (a dataset with truth/, "
                              "e.g. --data DIR)")
    kwargs: dict[str, Any] = {}
    if args:
        kwargs["alloc_ratio"] = _number(spec, args[0], "ALLOC_RATIO", 0.0, 1.0, open_low=True)
    if len(args) == 2:
        kwargs["eps"] = _number(spec, args[1], "EPS", 0.0, 1.0, open_low=True)
    try:
        return env.default_logging_policy(**kwargs)
    except ValueError as exc:
        raise PolicySpecError(f"policy {spec!r}: {exc}") from None


def policy_key(spec: str) -> str:
    """A short name for ``spec`` that is safe in MLflow metric names and file names (``threshold_score_hat_5.3``).

    A directory spec becomes its last path component.
    """
    s = spec.strip()
    kind = s.split(":")[0]
    if kind not in _KINDS and _looks_like_path(s):
        s = Path(s).expanduser().resolve().name or "policy"
    key = re.sub(r"[^A-Za-z0-9_.\-]+", "_", s).strip("_")
    return key or "policy"
