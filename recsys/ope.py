"""Off-policy evaluation (OPE) of allocation policies from logged decisions, in pure numpy.

Logged data model
-----------------
Every logged decision ``i`` is a row of flat, equally long 1-D arrays:

* ``rewards`` (n,): the observed reward r_i (or a cost c_i: every estimator applies to
  any per-decision outcome, so the same call on logged costs gives C-hat(pi)).
* ``logging_propensity`` (n,): mu(a_i | x_i), the probability with which the logging
  policy took the logged action, **recorded by serving at decision time**; in (0, 1].
* ``target_propensity`` (n,): pi(a_i | x_i), the probability that the evaluated target
  policy takes the same logged action in the same state; in [0, 1] (0 is allowed: a
  deterministic target policy gives 0 to the actions it never takes).
* For the doubly robust estimators, a reward model q-hat, fitted on a separate fold
  (cross-fitting): ``q_hat_logged`` (n,) = q-hat(x_i, a_i) for the logged action, and
  ``v_hat`` (n,) = sum_a pi(a | x_i) q-hat(x_i, a), its expectation under the target.

The importance weight is ``w_i = target_propensity_i / logging_propensity_i``.

**Per-decision (bandit) view.** Rows are independent decisions: :func:`ips`,
:func:`snips`, :func:`ncis`, :func:`direct_method`, :func:`doubly_robust`; the value is
the expected per-decision reward of pi under the logged context distribution.

**Sequential (session) view.** Rows are additionally grouped into sessions by
``session_ids`` (n,) and ``steps`` (n,): the rows of one session are contiguous and in
step order, ``steps`` counting 0, 1, 2, ... within it. A session starts at a row whose
session id differs from the previous row's, or whose step is 0 (so a session that a
bootstrap draws twice, and that therefore appears as two consecutive copies with the
same id, reads as two sessions). Rewards are discounted by ``gamma ** steps``. With the
cumulative weight ``rho_{i,0:t} = prod_{t' <= t} w_{i,t'}`` (and ``rho_{i,0:-1} = 1``):
:func:`pdis` (per-decision IS), :func:`trajectory_is` (per-session IS, using the whole
session's weight), :func:`sequential_dr` (Jiang & Li, ICML 2016), each with a
``weighted=True`` self-normalised variant, and :func:`fqe` (linear fitted Q evaluation,
Le, Voloshin & Yue, ICML 2019), which needs no propensities. The value is the expected
discounted return of a session under pi, averaged over the logged session starts.

Self-normalisation at step t (WPDIS, weighted DR) divides by
``D_t = sum_i rho_{i,0:min(t, L_i - 1)}`` over **all** n sessions: a session of length
L_i that ended before t stays in the denominator with its final weight (an absorbing
state with zero reward). Dividing by the surviving sessions only would estimate the
reward conditional on survival and be biased whenever pi changes session length (exit).

**Diagnostics.** :func:`effective_sample_size`, :func:`weight_stats` (max, mean, share
of the weight in the top 1 %, fraction capped), :func:`implied_rate` (the target
policy's allocation ratio and self-normalised per-decision cost) and
:func:`bootstrap_ci` (percentile intervals, resampling rows or whole groups such as
users or sessions).

Every estimator returns an :class:`Estimate`; all functions keep no state and raise
``ValueError`` naming the offending argument on invalid input (empty or mismatched
arrays, NaN or infinite values, propensities out of range, malformed sessions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recsys.validation import as_1d as _as_1d
from recsys.validation import check_real
from recsys.validation import check_same_length as _check_same_length

__all__ = [
    "DEFAULT_NCIS_CAP",
    "Estimate",
    "WeightStats",
    "ImpliedRate",
    "importance_weights",
    "cumulative_importance_weights",
    "effective_sample_size",
    "weight_stats",
    "ips",
    "snips",
    "ncis",
    "direct_method",
    "doubly_robust",
    "pdis",
    "trajectory_is",
    "sequential_dr",
    "fit_fqe",
    "fqe",
    "implied_rate",
    "bootstrap_ci",
]

DEFAULT_NCIS_CAP = 10.0
"""Default NCIS weight cap c (the brief's grid is c in {5, 10, 20}; report sensitivity)."""

LOW_ESS_FRACTION = 0.01
"""ESS / n below which an estimate is flagged as unreliable (:attr:`Estimate.low_ess`)."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Estimate:
    """An off-policy value estimate with its weight diagnostics.

    Attributes:
        value: the estimated policy value (per decision, or per session for the
            sequential estimators).
        ess: effective sample size of the importance weights used, (sum w)^2 / sum w^2;
            for sequential estimators, of the sessions' final cumulative weights;
            ``None`` for estimators without weights (direct method, FQE).
        n: the number of units averaged: decisions (bandit), sessions (sequential) or
            start states (FQE).
        estimator: the estimator's name, e.g. ``"snips"`` or ``"wpdis"``.
        max_weight: the largest (cumulative) importance weight, ``None`` without weights.
        cap: the NCIS cap actually applied, else ``None``.
        capped_fraction: the fraction of weights above the NCIS cap, else ``None``.
    """

    value: float
    ess: float | None
    n: int
    estimator: str = ""
    max_weight: float | None = None
    cap: float | None = None
    capped_fraction: float | None = None

    @property
    def ess_fraction(self) -> float | None:
        """ESS / n, or ``None`` when the estimator uses no weights."""
        return None if self.ess is None else self.ess / self.n

    @property
    def low_ess(self) -> bool:
        """True when ESS / n is below 1 % (:data:`LOW_ESS_FRACTION`): do not trust it."""
        frac = self.ess_fraction
        return frac is not None and frac < LOW_ESS_FRACTION


@dataclass(frozen=True)
class WeightStats:
    """Summary of a vector of importance weights, shape (n,).

    Attributes:
        n: number of weights.
        max: largest weight.
        min: smallest weight.
        mean: mean weight (close to 1 under overlap and a correct mu).
        top1_share: share of the total weight held by the largest ceil(1 % of n)
            weights (NaN when every weight is 0).
        ess: effective sample size (sum w)^2 / sum w^2.
        ess_fraction: ess / n.
        capped_fraction: fraction of weights strictly above ``cap``; ``None`` without cap.
    """

    n: int
    max: float
    min: float
    mean: float
    top1_share: float
    ess: float
    ess_fraction: float
    capped_fraction: float | None = None


@dataclass(frozen=True)
class ImpliedRate:
    """Allocation ratio and cost implied by a target policy (see :func:`implied_rate`).

    Attributes:
        allocation_ratio: expected share of "insert" decisions under pi.
        cost: self-normalised IS estimate of the expected cost per decision under pi,
            or ``None`` when no costs were given.
        n: number of decisions (rows).
        ess: ESS of the weights used for the cost (bandit: w_i; sessions: the final
            cumulative weights), ``None`` when no weights were given.
    """

    allocation_ratio: float
    cost: float | None
    n: int
    ess: float | None = None


# --------------------------------------------------------------------------- validation


def _check_real(name: str, x: np.ndarray, ndim: int = 1) -> np.ndarray:
    """Validate a finite real array of dimension ``ndim``; return it as float64."""
    arr = check_real(name, x, ndim)
    if np.isnan(arr).any():
        raise ValueError(f"{name} must not contain NaN")
    if np.isinf(arr).any():
        raise ValueError(f"{name} must be finite, got an infinite value")
    return arr


def _check_propensity(name: str, x: np.ndarray, allow_zero: bool) -> np.ndarray:
    """Validate probabilities in (0, 1] (or [0, 1] with ``allow_zero``); return float64."""
    arr = _check_real(name, x)
    low_bad = arr < 0 if allow_zero else arr <= 0
    bad = low_bad | (arr > 1)
    if bad.any():
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must lie in {interval}, got value {arr[bad][0]!r}")
    return arr


def _check_weights(weights: np.ndarray) -> np.ndarray:
    """Validate non-negative finite importance weights, shape (n,); return float64."""
    w = _check_real("weights", weights)
    if (w < 0).any():
        raise ValueError(f"weights must be >= 0, got value {w[w < 0][0]!r}")
    return w


def _check_gamma(gamma: float) -> float:
    """Validate a discount factor in [0, 1]."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.number)):
        raise ValueError(f"gamma must be a real number, got {type(gamma).__name__}")
    if not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
    return float(gamma)


def _bandit_inputs(
    rewards: np.ndarray, logging_propensity: np.ndarray, target_propensity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the per-decision inputs; return ``(rewards, weights)`` as float64 (n,)."""
    r = _check_real("rewards", rewards)
    mu = _check_propensity("logging_propensity", logging_propensity, allow_zero=False)
    pi = _check_propensity("target_propensity", target_propensity, allow_zero=True)
    _check_same_length(rewards=r, logging_propensity=mu, target_propensity=pi)
    return r, pi / mu


def _self_normalised(w: np.ndarray, r: np.ndarray) -> float:
    """sum(w * r) / sum(w); ``ValueError`` when every weight is zero."""
    total = float(w.sum())
    if total <= 0.0:
        raise ValueError(
            "all importance weights are zero (target_propensity is 0 on every logged "
            "action); the self-normalised estimate is undefined"
        )
    return float(np.dot(w, r) / total)


# --------------------------------------------------------------------------- weights


def importance_weights(
    logging_propensity: np.ndarray, target_propensity: np.ndarray
) -> np.ndarray:
    """Per-decision importance weights ``w_i = pi(a_i | x_i) / mu(a_i | x_i)``.

    Args:
        logging_propensity: shape (n,), mu(a_i | x_i) in (0, 1].
        target_propensity: shape (n,), pi(a_i | x_i) in [0, 1].

    Returns:
        float64 array, shape (n,), of non-negative weights.

    Raises:
        ValueError: on empty, mismatched, NaN or out-of-range propensities.
    """
    mu = _check_propensity("logging_propensity", logging_propensity, allow_zero=False)
    pi = _check_propensity("target_propensity", target_propensity, allow_zero=True)
    _check_same_length(logging_propensity=mu, target_propensity=pi)
    return pi / mu


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2``.

    Equals n for constant (e.g. on-policy) weights and 1 when a single weight carries
    everything; 0.0 when every weight is 0.

    Args:
        weights: shape (n,), non-negative finite importance weights.

    Raises:
        ValueError: on empty, NaN, infinite or negative weights.
    """
    w = _check_weights(weights)
    sq = float(np.dot(w, w))
    if sq == 0.0:
        return 0.0
    return float(w.sum()) ** 2 / sq


def weight_stats(weights: np.ndarray, cap: float | None = None) -> WeightStats:
    """Diagnostics of importance weights: max, min, mean, top-1 % share, ESS, capping.

    Args:
        weights: shape (n,), non-negative finite importance weights.
        cap: optional NCIS cap; ``capped_fraction`` is the fraction of weights above it.

    Returns:
        A :class:`WeightStats`.

    Raises:
        ValueError: on invalid weights or a non-positive / NaN ``cap``.
    """
    w = _check_weights(weights)
    n = w.size
    k = max(1, math.ceil(0.01 * n))
    total = float(w.sum())
    top = float(np.partition(w, n - k)[n - k :].sum())
    capped: float | None = None
    if cap is not None:
        c = _check_cap(cap)
        capped = float(np.mean(w > c))
    ess = effective_sample_size(w)
    return WeightStats(
        n=n,
        max=float(w.max()),
        min=float(w.min()),
        mean=float(w.mean()),
        top1_share=top / total if total > 0 else float("nan"),
        ess=ess,
        ess_fraction=ess / n,
        capped_fraction=capped,
    )


def _check_cap(cap: float) -> float:
    """Validate an NCIS cap: a positive number, possibly ``inf``."""
    if isinstance(cap, bool) or not isinstance(cap, (int, float, np.number)):
        raise ValueError(f"cap must be a real number, got {type(cap).__name__}")
    c = float(cap)
    if math.isnan(c) or c <= 0:
        raise ValueError(f"cap must be > 0 (inf allowed), got {cap!r}")
    return c


# --------------------------------------------------------------------------- bandit view


def ips(
    rewards: np.ndarray, logging_propensity: np.ndarray, target_propensity: np.ndarray
) -> Estimate:
    """Inverse propensity scoring: ``V = mean_i(w_i r_i)``.

    Unbiased given a correct mu and overlap, but high-variance and not invariant to
    rescaling the weights.

    Args:
        rewards: shape (n,), logged rewards (or costs).
        logging_propensity: shape (n,), mu(a_i | x_i) in (0, 1].
        target_propensity: shape (n,), pi(a_i | x_i) in [0, 1].

    Returns:
        An :class:`Estimate` with ``n`` decisions and the ESS of w.

    Raises:
        ValueError: on empty, mismatched, NaN or out-of-range inputs.
    """
    r, w = _bandit_inputs(rewards, logging_propensity, target_propensity)
    return Estimate(
        value=float(np.mean(w * r)),
        ess=effective_sample_size(w),
        n=r.size,
        estimator="ips",
        max_weight=float(w.max()),
    )


def snips(
    rewards: np.ndarray, logging_propensity: np.ndarray, target_propensity: np.ndarray
) -> Estimate:
    """Self-normalised IPS: ``V = sum_i w_i r_i / sum_i w_i``.

    Slightly biased, consistent, much lower variance than IPS; invariant to scaling all
    weights by a constant. Arguments as for :func:`ips`.

    Raises:
        ValueError: on invalid inputs, or when every weight is zero.
    """
    r, w = _bandit_inputs(rewards, logging_propensity, target_propensity)
    return Estimate(
        value=_self_normalised(w, r),
        ess=effective_sample_size(w),
        n=r.size,
        estimator="snips",
        max_weight=float(w.max()),
    )


def ncis(
    rewards: np.ndarray,
    logging_propensity: np.ndarray,
    target_propensity: np.ndarray,
    cap: float | None = None,
    cap_quantile: float | None = None,
) -> Estimate:
    """Normalised capped IS (Gilotte et al., WSDM 2018): capped **and** normalised.

    ``V = sum_i min(w_i, c) r_i / sum_i min(w_i, c)``. The cap c is either the constant
    ``cap`` (``inf`` gives SNIPS) or the ``cap_quantile`` quantile of the weights, which
    makes the estimate exactly invariant to scaling all weights. With neither given,
    ``c = DEFAULT_NCIS_CAP = 10``; report the sensitivity to c (e.g. 5, 10, 20).

    Args:
        rewards, logging_propensity, target_propensity: as for :func:`ips`.
        cap: constant cap c > 0 (``inf`` allowed).
        cap_quantile: quantile in (0, 1] of the weights used as the cap instead.

    Returns:
        An :class:`Estimate` whose ``ess`` is that of the capped weights, with ``cap``
        and ``capped_fraction`` (the fraction of weights above c) filled in;
        ``max_weight`` is the largest uncapped weight.

    Raises:
        ValueError: on invalid inputs, when both ``cap`` and ``cap_quantile`` are
            given, or when every capped weight is zero.
    """
    r, w = _bandit_inputs(rewards, logging_propensity, target_propensity)
    if cap is not None and cap_quantile is not None:
        raise ValueError("give at most one of cap and cap_quantile")
    if cap_quantile is not None:
        q = float(cap_quantile)
        if not 0.0 < q <= 1.0:
            raise ValueError(f"cap_quantile must lie in (0, 1], got {cap_quantile!r}")
        c = float(np.quantile(w, q))
    else:
        c = _check_cap(DEFAULT_NCIS_CAP if cap is None else cap)
    wc = np.minimum(w, c)
    return Estimate(
        value=_self_normalised(wc, r),
        ess=effective_sample_size(wc),
        n=r.size,
        estimator="ncis",
        max_weight=float(w.max()),
        cap=c,
        capped_fraction=float(np.mean(w > c)),
    )


def direct_method(v_hat: np.ndarray) -> Estimate:
    """Direct method: ``V = mean_i sum_a pi(a | x_i) q-hat(x_i, a) = mean(v_hat)``.

    Args:
        v_hat: shape (n,), the reward model's expected reward under pi per context.

    Returns:
        An :class:`Estimate` without weights (``ess=None``).

    Raises:
        ValueError: on empty, NaN or infinite ``v_hat``.
    """
    v = _check_real("v_hat", v_hat)
    return Estimate(value=float(v.mean()), ess=None, n=v.size, estimator="dm")


def doubly_robust(
    rewards: np.ndarray,
    logging_propensity: np.ndarray,
    target_propensity: np.ndarray,
    q_hat_logged: np.ndarray,
    v_hat: np.ndarray,
) -> Estimate:
    """Doubly robust (Dudik, Langford & Li, ICML 2011), per-decision form.

    ``V = mean_i [ v_hat_i + w_i (r_i - q_hat_logged_i) ]``: unbiased when either mu or
    q-hat is correct; with an exact q-hat only the reward noise is importance-weighted.
    Fit q-hat on a separate fold (cross-fitting).

    Args:
        rewards, logging_propensity, target_propensity: as for :func:`ips`.
        q_hat_logged: shape (n,), q-hat(x_i, a_i) of the logged action.
        v_hat: shape (n,), sum_a pi(a | x_i) q-hat(x_i, a).

    Raises:
        ValueError: on empty, mismatched, NaN, infinite or out-of-range inputs.
    """
    r, w = _bandit_inputs(rewards, logging_propensity, target_propensity)
    q = _check_real("q_hat_logged", q_hat_logged)
    v = _check_real("v_hat", v_hat)
    _check_same_length(rewards=r, q_hat_logged=q, v_hat=v)
    return Estimate(
        value=float(np.mean(v + w * (r - q))),
        ess=effective_sample_size(w),
        n=r.size,
        estimator="dr",
        max_weight=float(w.max()),
    )


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class _Sessions:
    """Session structure of n rows: starts (n,) bool, index (n,), steps (n,), count."""

    start: np.ndarray
    index: np.ndarray
    steps: np.ndarray
    count: int
    lengths: np.ndarray


def _session_structure(session_ids: np.ndarray, steps: np.ndarray, n: int) -> _Sessions:
    """Validate ``session_ids`` / ``steps`` for n rows and return their structure."""
    sid = _as_1d("session_ids", session_ids)
    st = _as_1d("steps", steps)
    if sid.size != n:
        raise ValueError(f"length mismatch: rows={n}, session_ids={sid.size}")
    if st.size != n:
        raise ValueError(f"length mismatch: rows={n}, steps={st.size}")
    if sid.dtype.kind == "f" and np.isnan(sid).any():
        raise ValueError("session_ids must not contain NaN")
    if st.dtype.kind not in "iu":
        raise ValueError(f"steps must be integers, got dtype {st.dtype}")
    st = st.astype(np.int64)

    start = np.empty(n, dtype=bool)
    start[0] = True
    start[1:] = (sid[1:] != sid[:-1]) | (st[1:] == 0)
    bad_start = start & (st != 0)
    if bad_start.any():
        i = int(np.flatnonzero(bad_start)[0])
        raise ValueError(
            f"steps must be 0 at the first row of each session; row {i} starts "
            f"session {sid[i]!r} with step {st[i]}"
        )
    bad_step = np.zeros(n, dtype=bool)
    bad_step[1:] = ~start[1:] & (st[1:] != st[:-1] + 1)
    if bad_step.any():
        i = int(np.flatnonzero(bad_step)[0])
        raise ValueError(
            f"steps must count 0, 1, 2, ... within each session (rows contiguous and "
            f"in step order); row {i} has step {st[i]} after step {st[i - 1]}"
        )
    index = np.cumsum(start) - 1
    count = int(index[-1]) + 1
    lengths = np.bincount(index, minlength=count)
    return _Sessions(start=start, index=index, steps=st, count=count, lengths=lengths)


def _cumulative(w: np.ndarray, ses: _Sessions) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rho, rho_prev)``: rho_{i,0:t} and rho_{i,0:t-1} per row, shape (n,).

    Walks the steps in order (a loop over the horizon H, vectorised over sessions), so
    zero weights are handled exactly.
    """
    rho = np.empty_like(w)
    order = np.argsort(ses.steps, kind="stable")
    bounds = np.searchsorted(ses.steps[order], np.arange(int(ses.steps.max()) + 2))
    rows0 = order[bounds[0] : bounds[1]]
    rho[rows0] = w[rows0]
    for t in range(1, bounds.size - 1):
        rows = order[bounds[t] : bounds[t + 1]]
        rho[rows] = rho[rows - 1] * w[rows]  # the previous row is the same session's t-1
    rho_prev = np.ones_like(w)
    rho_prev[1:] = np.where(ses.start[1:], 1.0, rho[:-1])
    return rho, rho_prev


def _final_weights(rho: np.ndarray, ses: _Sessions) -> np.ndarray:
    """Each session's final cumulative weight rho_{i,0:L_i-1}, shape (n_sessions,)."""
    last = np.flatnonzero(np.append(ses.start[1:], True))
    return rho[last]


def _step_normalisers(
    rho: np.ndarray, ses: _Sessions, weighted: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row normalisers ``(D_t, D_{t-1})`` of the sequential estimators, shape (n,).

    Unweighted: n_sessions everywhere. Weighted: ``D_t = sum_i rho_{i,0:min(t, L_i-1)}``
    over all sessions (ended ones keep their final weight), and ``D_{-1} = n_sessions``.
    """
    m = float(ses.count)
    if not weighted:
        full = np.full(rho.size, m)
        return full, full
    horizon = int(ses.steps.max()) + 1
    alive = np.bincount(ses.steps, weights=rho, minlength=horizon)
    final = _final_weights(rho, ses)
    ended = np.cumsum(np.bincount(ses.lengths, weights=final, minlength=horizon + 1))
    d = alive + ended[:horizon]  # ended[t]: sessions with L <= t
    if (d <= 0).any():
        t = int(np.flatnonzero(d <= 0)[0])
        raise ValueError(
            f"all cumulative importance weights are zero at step {t} (target_propensity "
            "is 0 along every logged session); the weighted estimate is undefined"
        )
    d_prev = np.concatenate(([m], d[:-1]))
    return d[ses.steps], d_prev[ses.steps]


def _sequential_inputs(
    rewards: np.ndarray,
    logging_propensity: np.ndarray,
    target_propensity: np.ndarray,
    session_ids: np.ndarray,
    steps: np.ndarray,
    gamma: float,
) -> tuple[np.ndarray, np.ndarray, _Sessions, np.ndarray, np.ndarray, float]:
    """Validate sequential inputs; return ``(r, w, sessions, rho, rho_prev, gamma)``."""
    r, w = _bandit_inputs(rewards, logging_propensity, target_propensity)
    g = _check_gamma(gamma)
    ses = _session_structure(session_ids, steps, r.size)
    rho, rho_prev = _cumulative(w, ses)
    return r, w, ses, rho, rho_prev, g


def _sequential_estimate(
    value: float, rho: np.ndarray, ses: _Sessions, name: str
) -> Estimate:
    """Package a sequential estimate with the ESS of the sessions' final weights."""
    return Estimate(
        value=value,
        ess=effective_sample_size(_final_weights(rho, ses)),
        n=ses.count,
        estimator=name,
        max_weight=float(rho.max()),
    )


def cumulative_importance_weights(
    logging_propensity: np.ndarray,
    target_propensity: np.ndarray,
    session_ids: np.ndarray,
    steps: np.ndarray,
) -> np.ndarray:
    """Cumulative weights ``rho_{i,0:t} = prod_{t' <= t} w_{i,t'}`` per row, shape (n,).

    Args:
        logging_propensity, target_propensity: shape (n,), as for :func:`ips`.
        session_ids: shape (n,), session of each row (rows of a session contiguous).
        steps: shape (n,), int, 0, 1, 2, ... within each session.

    Raises:
        ValueError: on invalid propensities or a malformed session structure.
    """
    w = importance_weights(logging_propensity, target_propensity)
    ses = _session_structure(session_ids, steps, w.size)
    return _cumulative(w, ses)[0]


def pdis(
    rewards: np.ndarray,
    logging_propensity: np.ndarray,
    target_propensity: np.ndarray,
    session_ids: np.ndarray,
    steps: np.ndarray,
    gamma: float,
    weighted: bool = False,
) -> Estimate:
    """Per-decision importance sampling over sessions (Precup et al., 2000).

    ``PDIS = (1/n) sum_i sum_t gamma^t rho_{i,0:t} r_{i,t}``: each reward is weighted
    only by the actions before and at its step. ``weighted=True`` gives WPDIS,
    ``sum_t gamma^t sum_i rho_{i,0:t} r_{i,t} / D_t`` with D_t as in the module notes.

    Args:
        rewards: shape (n,), per-step rewards (or costs).
        logging_propensity: shape (n,), mu(a | s) of each logged action, in (0, 1].
        target_propensity: shape (n,), pi(a | s) of each logged action, in [0, 1].
        session_ids: shape (n,), session of each row; rows of a session contiguous.
        steps: shape (n,), int step within the session: 0, 1, 2, ...
        gamma: discount in [0, 1].
        weighted: self-normalise per step (WPDIS).

    Returns:
        An :class:`Estimate` of the discounted session return, ``n`` = sessions, ESS of
        the sessions' final cumulative weights.

    Raises:
        ValueError: on invalid inputs; for ``weighted``, when all weights vanish.
    """
    r, _, ses, rho, _, g = _sequential_inputs(
        rewards, logging_propensity, target_propensity, session_ids, steps, gamma
    )
    d, _ = _step_normalisers(rho, ses, weighted)
    value = float(np.sum(g ** ses.steps * rho * r / d))
    return _sequential_estimate(value, rho, ses, "wpdis" if weighted else "pdis")


def trajectory_is(
    rewards: np.ndarray,
    logging_propensity: np.ndarray,
    target_propensity: np.ndarray,
    session_ids: np.ndarray,
    steps: np.ndarray,
    gamma: float,
    weighted: bool = False,
) -> Estimate:
    """Per-session (trajectory-wise) importance sampling.

    ``IS = (1/n) sum_i rho_{i,0:L_i-1} G_i`` with ``G_i = sum_t gamma^t r_{i,t}``: every
    reward carries the whole session's weight, so the variance is higher than PDIS.
    ``weighted=True`` gives weighted IS, ``sum_i rho_i G_i / sum_i rho_i``. Arguments
    and return value as for :func:`pdis`.

    Raises:
        ValueError: on invalid inputs; for ``weighted``, when all weights vanish.
    """
    r, _, ses, rho, _, g = _sequential_inputs(
        rewards, logging_propensity, target_propensity, session_ids, steps, gamma
    )
    returns = np.bincount(ses.index, weights=g ** ses.steps * r, minlength=ses.count)
    final = _final_weights(rho, ses)
    if weighted:
        value = _self_normalised(final, returns)
    else:
        value = float(np.mean(final * returns))
    return _sequential_estimate(value, rho, ses, "wis" if weighted else "is")


def sequential_dr(
    rewards: np.ndarray,
    logging_propensity: np.ndarray,
    target_propensity: np.ndarray,
    q_hat_logged: np.ndarray,
    v_hat: np.ndarray,
    session_ids: np.ndarray,
    steps: np.ndarray,
    gamma: float,
    weighted: bool = False,
) -> Estimate:
    """Per-decision doubly robust estimator for sessions (Jiang & Li, ICML 2016).

    ``V = (1/n) sum_i sum_t gamma^t [rho_{i,0:t} (r_{i,t} - Q(s_{i,t}, a_{i,t}))
    + rho_{i,0:t-1} V(s_{i,t})]`` with ``V(s) = sum_a pi(a | s) Q(s, a)``: PDIS with the
    model as a control variate, unbiased when mu is correct whatever Q, and exact
    up to reward and transition noise when Q is. ``weighted=True`` gives weighted DR
    (Thomas & Brunskill, 2016): the weights rho_{0:t} / n and rho_{0:t-1} / n become
    rho_{0:t} / D_t and rho_{0:t-1} / D_{t-1}.

    Args:
        rewards, logging_propensity, target_propensity, session_ids, steps, gamma,
            weighted: as for :func:`pdis`.
        q_hat_logged: shape (n,), Q-hat(s_{i,t}, a_{i,t}) of the logged action: the
            model's expected discounted return from that step on (step t's own reward
            included, discounted from t).
        v_hat: shape (n,), sum_a pi(a | s_{i,t}) Q-hat(s_{i,t}, a).

    Raises:
        ValueError: on invalid inputs; for ``weighted``, when all weights vanish.
    """
    r, _, ses, rho, rho_prev, g = _sequential_inputs(
        rewards, logging_propensity, target_propensity, session_ids, steps, gamma
    )
    q = _check_real("q_hat_logged", q_hat_logged)
    v = _check_real("v_hat", v_hat)
    _check_same_length(rewards=r, q_hat_logged=q, v_hat=v)
    d, d_prev = _step_normalisers(rho, ses, weighted)
    terms = g ** ses.steps * (rho * (r - q) / d + rho_prev * v / d_prev)
    return _sequential_estimate(float(terms.sum()), rho, ses, "wdr" if weighted else "dr")


# --------------------------------------------------------------------------- FQE


def fit_fqe(
    phi_sa: np.ndarray,
    phi_next_pi: np.ndarray,
    rewards: np.ndarray,
    done: np.ndarray,
    gamma: float,
    iterations: int | None = 200,
    ridge: float = 1e-3,
    tol: float = 0.0,
) -> np.ndarray:
    """Fit a linear Q(s, a) = phi(s, a) @ theta by fitted Q evaluation; return theta (d,).

    Each iteration is a ridge regression of the bootstrapped target on phi_sa:

        theta_{k+1} = argmin_theta sum_i (phi_sa_i @ theta - y_i)^2 + ridge * |theta|^2,
        y_i = r_i + gamma * (1 - done_i) * phi_next_pi_i @ theta_k,

    i.e. ``theta_{k+1} = b + P theta_k`` with ``A = phi_sa^T phi_sa + ridge I``,
    ``b = A^-1 phi_sa^T r`` and ``P = gamma A^-1 phi_sa^T diag(1 - done) phi_next_pi``,
    from theta_0 = 0 (so K iterations give the K-step truncated value). With
    ``iterations=None`` the fixed point is solved directly, the ridge-regularised LSTD
    solution ``(A - gamma phi_sa^T diag(1 - done) phi_next_pi) theta = phi_sa^T r``.
    With one-hot (tabular) features and ridge -> 0 both give the value of the empirical
    (certainty-equivalence) MDP under pi. Linear FQE can diverge off-policy with
    non-tabular features (the deadly triad); check ``theta`` for blow-up.

    Args:
        phi_sa: shape (n, d), features of each logged (state, action).
        phi_next_pi: shape (n, d), ``sum_a' pi(a' | s') phi(s', a')`` at the next state;
            ignored (may be anything finite, zeros by convention) where ``done``.
        rewards: shape (n,), per-step rewards.
        done: shape (n,), bool, True where the session ends after this step.
        gamma: discount in [0, 1].
        iterations: number of FQE iterations K >= 1, or ``None`` for the LSTD fixed point.
        ridge: ridge penalty lambda >= 0 on the sum of squared errors (> 0 is safer).
        tol: stop early once ``max |theta_{k+1} - theta_k| <= tol``.

    Raises:
        ValueError: on invalid shapes or values, or a singular system.
    """
    phi = _check_real("phi_sa", phi_sa, ndim=2)
    phi_next = _check_real("phi_next_pi", phi_next_pi, ndim=2)
    r = _check_real("rewards", rewards)
    dn = _as_1d("done", done)
    if dn.dtype.kind != "b":
        raise ValueError(f"done must be boolean, got dtype {dn.dtype}")
    if phi_next.shape != phi.shape:
        raise ValueError(
            f"phi_next_pi must have the shape of phi_sa {phi.shape}, got {phi_next.shape}"
        )
    _check_same_length(phi_sa=phi, rewards=r, done=dn)
    g = _check_gamma(gamma)
    if not (isinstance(ridge, (int, float, np.floating)) and ridge >= 0):
        raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")
    if iterations is not None and (
        isinstance(iterations, bool)
        or not isinstance(iterations, (int, np.integer))
        or iterations < 1
    ):
        raise ValueError(f"iterations must be an int >= 1 or None, got {iterations!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")

    d = phi.shape[1]
    a_mat = phi.T @ phi + float(ridge) * np.eye(d)
    transition = g * (phi.T @ (phi_next * (~dn)[:, None]))
    rhs = phi.T @ r
    try:
        if iterations is None:
            return np.linalg.solve(a_mat - transition, rhs)
        solved = np.linalg.solve(a_mat, np.column_stack([rhs, transition]))
    except np.linalg.LinAlgError as exc:
        raise ValueError(
            f"singular FQE system ({exc}); increase ridge or check phi_sa coverage"
        ) from exc
    b, p = solved[:, 0], solved[:, 1:]
    theta = np.zeros(d)
    for _ in range(int(iterations)):
        new = b + p @ theta
        converged = float(np.max(np.abs(new - theta))) <= tol
        theta = new
        if converged:
            break
    return theta


def fqe(
    phi_sa: np.ndarray,
    phi_next_pi: np.ndarray,
    rewards: np.ndarray,
    done: np.ndarray,
    phi_start_pi: np.ndarray,
    gamma: float,
    iterations: int | None = 200,
    ridge: float = 1e-3,
    tol: float = 0.0,
) -> Estimate:
    """Fitted Q evaluation with a linear Q (see :func:`fit_fqe`); value at session starts.

    ``V = mean_j phi_start_pi_j @ theta``, the mean of Q(s_0, pi) over the m session
    starts. Needs no propensities but inherits the model's bias.

    Args:
        phi_sa, phi_next_pi, rewards, done, gamma, iterations, ridge, tol: as for
            :func:`fit_fqe`.
        phi_start_pi: shape (m, d), ``sum_a pi(a | s_0) phi(s_0, a)`` per session start.

    Returns:
        An :class:`Estimate` with ``ess=None`` and ``n = m``.

    Raises:
        ValueError: as for :func:`fit_fqe`, or when ``phi_start_pi`` has a different d.
    """
    start = _check_real("phi_start_pi", phi_start_pi, ndim=2)
    theta = fit_fqe(phi_sa, phi_next_pi, rewards, done, gamma, iterations, ridge, tol)
    if start.shape[1] != theta.size:
        raise ValueError(
            f"phi_start_pi must have {theta.size} columns like phi_sa, got {start.shape[1]}"
        )
    return Estimate(
        value=float(np.mean(start @ theta)), ess=None, n=start.shape[0], estimator="fqe"
    )


# --------------------------------------------------------------------------- constraints


def implied_rate(
    target_prob_insert: np.ndarray,
    logging_propensity: np.ndarray | None = None,
    target_propensity: np.ndarray | None = None,
    costs: np.ndarray | None = None,
    session_ids: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> ImpliedRate:
    """Allocation ratio and per-decision cost implied by the target policy pi.

    Per-decision (no ``session_ids`` / ``steps``), under the logged state distribution:

    * ``allocation_ratio = mean_i pi(1 | s_i)`` (no weights needed);
    * ``cost = sum_i w_i c_i / sum_i w_i`` (SNIPS on the logged costs).

    Sequential (``session_ids`` and ``steps`` given), under pi's own state visitation:

    * ``allocation_ratio = sum_{i,t} rho_{i,0:t-1} pi(1 | s_{i,t})
      / sum_{i,t} rho_{i,0:t-1}``: rho_{0:t-1} reweights the visited states to pi;
    * ``cost = sum_{i,t} rho_{i,0:t} c_{i,t} / sum_{i,t} rho_{i,0:t}``: expected cost per
      decision (both sums estimate E_pi[#decisions] unbiasedly in the denominator).

    For the discounted per-session cost of the constraint, apply :func:`pdis` (or
    :func:`sequential_dr`) to the costs.

    Args:
        target_prob_insert: shape (n,), pi(insert | s_i) in [0, 1] at each logged state.
        logging_propensity: shape (n,), mu(a_i | s_i) of the logged action; required for
            ``costs`` and for the sequential form.
        target_propensity: shape (n,), pi(a_i | s_i) of the logged action; likewise.
        costs: optional shape (n,), logged per-decision costs c_i (e.g. a_i * V_i).
        session_ids: optional shape (n,), as for :func:`pdis`; give with ``steps``.
        steps: optional shape (n,), as for :func:`pdis`.

    Raises:
        ValueError: on invalid inputs, missing propensities where needed, only one of
            ``session_ids`` / ``steps``, or all-zero weights.
    """
    p1 = _check_propensity("target_prob_insert", target_prob_insert, allow_zero=True)
    sequential = session_ids is not None or steps is not None
    if sequential and (session_ids is None or steps is None):
        raise ValueError(
            "give both session_ids and steps for the sequential form, or neither"
        )
    if not sequential and costs is None:
        return ImpliedRate(allocation_ratio=float(p1.mean()), cost=None, n=p1.size)
    if logging_propensity is None or target_propensity is None:
        raise ValueError(
            "logging_propensity and target_propensity are required with costs or sessions"
        )

    w = importance_weights(logging_propensity, target_propensity)
    _check_same_length(target_prob_insert=p1, logging_propensity=w)
    c = None
    if costs is not None:
        c = _check_real("costs", costs)
        _check_same_length(target_prob_insert=p1, costs=c)

    if not sequential:
        cost = _self_normalised(w, c) if c is not None else None
        return ImpliedRate(
            allocation_ratio=float(p1.mean()),
            cost=cost,
            n=p1.size,
            ess=effective_sample_size(w),
        )

    assert session_ids is not None and steps is not None  # checked above
    ses = _session_structure(session_ids, steps, p1.size)
    rho, rho_prev = _cumulative(w, ses)
    # rho_prev is 1 at every session start, so its sum is >= n_sessions > 0.
    ratio = float(np.dot(rho_prev, p1) / rho_prev.sum())
    cost = _self_normalised(rho, c) if c is not None else None
    return ImpliedRate(
        allocation_ratio=ratio,
        cost=cost,
        n=p1.size,
        ess=effective_sample_size(_final_weights(rho, ses)),
    )


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    estimator: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``estimator``.

    Each replicate draws row indices with replacement and evaluates
    ``estimator(indices)``; e.g. ``lambda idx: snips(r[idx], mu[idx], pi[idx]).value``.
    Without ``groups`` it draws n rows. With ``groups`` (n,) (user or session ids) it
    draws as many groups as there are, with replacement, and passes all rows of each
    drawn group as one block in original row order, so sessions stay whole; a group
    drawn k times appears as k consecutive blocks (the sequential estimators read each
    copy as a separate session, since its steps restart at 0).

    Args:
        estimator: maps an int64 index array into the data to a float estimate.
        n: number of rows in the data (>= 1).
        n_boot: number of bootstrap replicates (>= 1); the brief uses 1,000.
        alpha: miscoverage level in (0, 1): the interval is the [alpha/2, 1 - alpha/2]
            percentiles of the replicates.
        seed: seed of the numpy ``Generator``.
        groups: optional shape (n,), the resampling unit of each row.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: on invalid arguments, or when the estimator returns NaN or inf.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    rng = np.random.default_rng(seed)

    if groups is not None:
        grp = _as_1d("groups", groups)
        if grp.size != n:
            raise ValueError(f"length mismatch: n={n}, groups={grp.size}")
        if grp.dtype.kind == "f" and np.isnan(grp).any():
            raise ValueError("groups must not contain NaN")
        _, inverse = np.unique(grp, return_inverse=True)
        inverse = inverse.ravel()
        rows_by_group = np.argsort(inverse, kind="stable")  # original order within group
        sizes = np.bincount(inverse)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        n_groups = sizes.size

    stats = np.empty(n_boot)
    for b in range(n_boot):
        if groups is None:
            idx = rng.integers(0, n, size=n)
        else:
            drawn = rng.integers(0, n_groups, size=n_groups)
            lens = sizes[drawn]
            block_start = np.cumsum(lens) - lens  # position of each block in idx
            pos = np.arange(int(lens.sum())) + np.repeat(starts[drawn] - block_start, lens)
            idx = rows_by_group[pos]
        stats[b] = float(estimator(idx))
    if not np.isfinite(stats).all():
        raise ValueError("estimator returned a NaN or infinite value on a bootstrap sample")
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
