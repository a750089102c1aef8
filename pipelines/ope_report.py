"""Job: off-policy evaluation of allocation policies on a decision log, with a report (allocation brief §6, §8.4).

Estimators (session view: the value is the expected discounted live-watch return of a session, the quantity
:meth:`recsys.feed.env.FeedEnv.rollout` reports as ``value``):

======  ==========================================================================================================
name    definition (``rho_{i,0:t}`` = product of the weights pi / mu up to step t of session i)
======  ==========================================================================================================
ips     PDIS, ``(1/n) sum_i sum_t gamma^t rho_{i,0:t} r_{i,t}`` (:func:`recsys.ope.pdis`)
snips   weighted PDIS: each step normalised by ``D_t = sum_i rho_{i,0:min(t, L_i-1)}`` (ended sessions keep their
        final weight)
ncis    capped weighted PDIS, the sequential form of NCIS: the cumulative weights are capped,
        ``min(rho_{i,0:t}, c)`` with ``c = 10`` (:data:`recsys.ope.DEFAULT_NCIS_CAP`), then normalised per step
        like snips; the sensitivity to c in {5, 10, 20} is reported
dr      sequential doubly robust (Jiang & Li 2016, :func:`recsys.ope.sequential_dr`) with Q-hat = the linear FQE
        Q-function below, **cross-fitted**: the Q of a session's rows is fitted on the other half of the sessions
fqe     linear fitted Q evaluation (:func:`recsys.ope.fqe`, K = 200 iterations, ridge) with features
        ``phi(s, a) = [(1 - a) psi(s), a psi(s)]``, ``psi(s)`` = intercept, the standardised observation columns,
        ``score_hat * fatigue`` and ``fatigue^2``; value = mean of ``sum_a pi(a | s_0) Q(s_0, a)`` over session starts
======  ==========================================================================================================

Diagnostics per policy: the ESS of the sessions' final cumulative weights (and ESS / n), the largest weight, the
share capped by NCIS, the implied allocation ratio (sequential :func:`recsys.ope.implied_rate`) and the implied cost
(weighted PDIS on the logged costs: discounted short-video minutes per session, the env's ``cost``), each with a 95 %
percentile bootstrap interval over sessions (FQE is refitted in each replicate; the cross-fitted DR model is kept
fixed). With an environment the true value, cost and allocation ratio come from ``env.rollout`` of every policy on
the same sessions of one seed (common random numbers), and every estimate gets its relative error.

Entry points: :func:`evaluate_policies` (numbers), :func:`write_report` (Markdown + HTML + PNG plots), :func:`run_ope`
(a log file or :class:`LoggedData` + policy specs -> one MLflow run) and :func:`run_replay` (simulate the logged day
with the logging policy, then :func:`run_ope` against the env's ground truth).
"""

from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys import ope
from recsys.config import TrackingConfig
from recsys.feed.env import Estimator, FeedEnv, LoggedData, Policy, feature_index
from recsys.feed.policy_spec import parse_policy, policy_key
from recsys.tracking import tracking_run

log = logging.getLogger(__name__)

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "ncis", "dr", "fqe")
REL_ERROR_TOL = 0.05
"""A relative error above this (5 %) counts as a failure of the estimator in the report."""
NCIS_CAPS: tuple[float, ...] = (5.0, 10.0, 20.0)
FQE_BLOWUP_NORM = 1e6
"""A linear FQE parameter vector with a larger norm has diverged: FQE, and DR that uses its Q-function, are flagged."""
FQE_ITERATIONS = 200
FQE_RIDGE = 1.0
PLOTS = ("value_vs_alloc.png", "ci_per_estimator.png", "ess.png")

__all__ = ["ESTIMATORS", "EstimatorResult", "OPEResults", "OPERunResult", "PolicyResult", "Truth",
           "evaluate_policies", "run_ope", "run_replay", "write_report"]


# --------------------------------------------------------------------------------------------------------- results
@dataclass
class Truth:
    """The env's ground truth of a policy: ``env.rollout`` on ``n_sessions`` sessions of ``seed``."""

    value: float
    value_ci: tuple[float, float]
    cost: float
    alloc_ratio: float
    mean_length: float
    n_sessions: int
    seed: int


@dataclass
class EstimatorResult:
    """One estimator's estimate of a policy's value, with its 95 % bootstrap CI and, with a truth, its error."""

    estimator: str
    value: float
    ci: tuple[float, float]
    ess: float | None = None
    ess_fraction: float | None = None
    max_weight: float | None = None
    true_value: float | None = None
    rel_error: float | None = None
    covered: bool | None = None  # the true value lies in the CI
    failed_boot: float = 0.0  # share of bootstrap replicates where the estimate was undefined
    diverged: bool = False  # the linear FQE it rests on diverged (FQE itself, and DR through its Q-function)
    note: str = ""

    @property
    def ok(self) -> bool | None:
        """False when the estimate fails (undefined, rel. error > 5 %, or low ESS); None without truth and issues."""
        if not math.isfinite(self.value):
            return False
        if self.ess_fraction is not None and self.ess_fraction < ope.LOW_ESS_FRACTION:
            return False
        if self.rel_error is None:
            return None
        return self.rel_error <= REL_ERROR_TOL


@dataclass
class PolicyResult:
    """Every estimate and diagnostic of one target policy."""

    key: str
    name: str
    estimates: dict[str, EstimatorResult]
    alloc_ratio: float
    alloc_ci: tuple[float, float]
    cost: float
    cost_ci: tuple[float, float]
    cost_per_decision: float | None
    ess: float
    ess_fraction: float
    max_weight: float
    top1_share: float
    ncis_capped_fraction: float
    ncis_sensitivity: dict[float, float]
    fqe_theta_norm: float
    truth: Truth | None = None

    def metrics(self) -> dict[str, float]:
        """Flat metrics ``<key>.<name>`` (estimates, CIs, diagnostics, truth and relative errors)."""
        k = self.key
        out: dict[str, float] = {}
        for name, e in self.estimates.items():
            out[f"{k}.{name}"] = e.value
            out[f"{k}.{name}.ci_low"], out[f"{k}.{name}.ci_high"] = e.ci
            if e.rel_error is not None:
                out[f"{k}.{name}.rel_error"] = e.rel_error
        out.update({f"{k}.alloc_ratio": self.alloc_ratio, f"{k}.cost": self.cost, f"{k}.ess": self.ess,
                    f"{k}.ess_fraction": self.ess_fraction, f"{k}.max_weight": self.max_weight,
                    f"{k}.ncis_capped_fraction": self.ncis_capped_fraction})
        for cap, v in self.ncis_sensitivity.items():
            out[f"{k}.ncis_c{cap:g}"] = v
        if self.truth is not None:
            out.update({f"{k}.true_value": self.truth.value, f"{k}.true_cost": self.truth.cost,
                        f"{k}.true_alloc_ratio": self.truth.alloc_ratio})
        return {m: float(v) for m, v in out.items() if v is not None and math.isfinite(float(v))}


@dataclass
class OPEResults:
    """The evaluation of several policies on one decision log (the input of :func:`write_report`)."""

    policies: dict[str, PolicyResult]
    n_sessions: int
    n_decisions: int
    gamma: float
    logging_policy: str
    logging_value: float
    logging_alloc_ratio: float
    propensity_range: tuple[float, float]
    n_boot: int
    seed: int
    n_rewarded: int = 0  # logged decisions with a positive reward (e.g. an inserted room that was clicked)
    truth_sessions: int | None = None
    truth_seed: int | None = None
    wall_s: float = 0.0

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"log.n_sessions": self.n_sessions, "log.n_decisions": self.n_decisions,
                                 "log.value": self.logging_value, "log.alloc_ratio": self.logging_alloc_ratio,
                                 "log.propensity_min": self.propensity_range[0],
                                 "log.propensity_max": self.propensity_range[1], "log.n_rewarded": self.n_rewarded,
                                 "ope.wall_s": self.wall_s}
        for p in self.policies.values():
            out.update(p.metrics())
        out.update({f"summary.{k}": v for k, v in summary_metrics(self).items()})
        return out


@dataclass
class OPERunResult:
    """What :func:`run_ope` / :func:`run_replay` produced."""

    results: OPEResults
    report: Path
    html: Path
    plots: list[Path]
    run_id: str | None
    log_path: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------- FQE features
class _Features:
    """The linear FQE feature map ``phi(s, a) = [(1 - a) psi(s), a psi(s)]`` (standardised on the log)."""

    def __init__(self, x: np.ndarray) -> None:
        self.score = feature_index("score_hat")
        self.fatigue = feature_index("fatigue")
        raw = self._raw(x)
        self.mean = raw.mean(axis=0)
        sd = raw.std(axis=0)
        self.sd = np.where(sd > 1e-12, sd, 1.0)

    def _raw(self, x: np.ndarray) -> np.ndarray:
        f = x[:, self.fatigue]
        return np.column_stack([x, x[:, self.score] * f, f * f])

    def psi(self, x: np.ndarray) -> np.ndarray:
        z = (self._raw(x) - self.mean) / self.sd
        return np.column_stack([np.ones(len(x)), z])

    @staticmethod
    def phi(psi: np.ndarray, p1: np.ndarray) -> np.ndarray:
        """``sum_a pi(a | s) phi(s, a)`` for insert probabilities ``p1`` (a logged action: p1 = a)."""
        return np.column_stack([(1.0 - p1)[:, None] * psi, p1[:, None] * psi])


# --------------------------------------------------------------------------------------------------------- estimators
def _capped_wpdis(r: np.ndarray, mu: np.ndarray, tp: np.ndarray, step: np.ndarray, gamma: float,
                  cap: float) -> tuple[float, float]:
    """Sequential NCIS: weighted PDIS with cumulative weights capped at ``cap``; (value, fraction of rows capped).

    Sessions are read from ``step`` alone (a session starts where step == 0).
    """
    start = step == 0
    sidx = np.cumsum(start) - 1
    rho = ope.cumulative_importance_weights(mu, tp, sidx, step)
    rc = np.minimum(rho, cap)
    horizon = int(step.max()) + 1
    last = np.flatnonzero(np.append(start[1:], True))
    lengths = step[last] + 1
    alive = np.bincount(step, weights=rc, minlength=horizon)
    ended = np.cumsum(np.bincount(lengths, weights=rc[last], minlength=horizon + 1))[:horizon]
    d = alive + ended
    if (d <= 0).any():
        raise ValueError("all capped cumulative weights are zero at some step; NCIS is undefined")
    value = float(np.sum(gamma ** step * rc * r / d[step]))
    return value, float(np.mean(rho > cap))


class _Log:
    """Policy-independent session structure and FQE design of a log (n rows, m sessions, horizon H)."""

    def __init__(self, logged: LoggedData, gamma: float) -> None:
        self.gamma = gamma
        self.step = logged.step.astype(np.int64)
        self.start = self.step == 0
        self.sidx = np.cumsum(self.start) - 1
        self.m = int(self.sidx[-1]) + 1
        self.last = np.flatnonzero(np.append(self.start[1:], True))
        self.lengths = self.step[self.last] + 1
        self.horizon = int(self.step.max()) + 1
        self.disc = gamma ** np.arange(self.horizon)
        self.r = logged.reward.astype(np.float64)
        self.c = logged.cost.astype(np.float64)
        self.mu = logged.propensity.astype(np.float64)
        self.done = logged.done.astype(bool)
        self.feats = _Features(logged.features)
        self.psi = self.feats.psi(logged.features)
        self.phi_sa = self.feats.phi(self.psi, logged.action.astype(np.float64))
        self.nxt = logged.next_row()
        self.fold = self.sidx % 2  # cross-fitting halves

    def dense(self, row_values: np.ndarray, extend: bool = False) -> np.ndarray:
        """(m, H) matrix of per-row values; beyond a session's end 0, or its final value with ``extend``."""
        out = np.zeros((self.m, self.horizon))
        out[self.sidx, self.step] = row_values
        if extend:
            after = np.arange(self.horizon)[None, :] >= self.lengths[:, None]
            out = np.where(after, row_values[self.last][:, None], out)
        return out

    def per_session(self, row_values: np.ndarray) -> np.ndarray:
        return np.bincount(self.sidx, weights=row_values, minlength=self.m)

    def fqe_normal(self, row_weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(phi_sa^T W phi_sa + ridge I, phi_sa^T W r)`` for row weights W (None: all 1)."""
        pw = self.phi_sa if row_weight is None else self.phi_sa * row_weight[:, None]
        return pw.T @ self.phi_sa + FQE_RIDGE * np.eye(self.phi_sa.shape[1]), pw.T @ self.r


def _fqe_theta(a_mat: np.ndarray, rhs: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """K FQE iterations ``theta <- A^-1 (rhs + T theta)`` from 0 (as :func:`recsys.ope.fit_fqe`)."""
    solved = np.linalg.solve(a_mat, np.column_stack([rhs, transition]))
    b, p = solved[:, 0], solved[:, 1:]
    theta = np.zeros(b.size)
    for _ in range(FQE_ITERATIONS):
        theta = b + p @ theta
    return theta


class _Target:
    """One target policy on a log: weights, the cross-fitted DR model and the per-session pieces of every
    estimator, so that a bootstrap replicate (session multiplicities ``counts`` (B, m)) is a few matrix products."""

    def __init__(self, lg: _Log, logged: LoggedData, policy: Policy) -> None:
        self.lg = lg
        g = lg.gamma
        self.p1 = logged.target_prob_insert(policy)
        self.tp = logged.target_propensity(policy)
        self.phi_pi = lg.feats.phi(lg.psi, self.p1)
        has_next = lg.nxt >= 0
        self.phi_next_pi = np.zeros_like(self.phi_pi)
        self.phi_next_pi[has_next] = self.phi_pi[lg.nxt[has_next]]
        self.live_next = self.phi_next_pi * (~lg.done)[:, None] * g  # gamma (1 - done) phi_next_pi
        self.phi_start = self.phi_pi[lg.start]  # (m, d)

        # cross-fitted Q for DR: each half of the sessions gets the Q fitted on the other half
        self.q_logged = np.zeros(lg.r.size)
        self.v_hat = np.zeros(lg.r.size)
        self.theta_cross_norm = 0.0  # the larger norm of the two cross-fitted FQE parameter vectors
        for k in (0, 1):
            train = (lg.fold != k).astype(np.float64)
            if not train.any():
                train = np.ones(lg.r.size)
            theta = self.theta(*lg.fqe_normal(train), train)
            self.theta_cross_norm = max(self.theta_cross_norm, float(np.linalg.norm(theta)))
            rows = lg.fold == k
            self.q_logged[rows] = lg.phi_sa[rows] @ theta
            self.v_hat[rows] = self.phi_pi[rows] @ theta
        self.theta_all = self.theta(*lg.fqe_normal(None), None)

        rho = ope.cumulative_importance_weights(lg.mu, self.tp, lg.sidx, lg.step)
        rho_prev = np.ones_like(rho)
        rho_prev[1:] = np.where(lg.start[1:], 1.0, rho[:-1])
        self.rho = rho
        self.final = rho[lg.last]
        rc = np.minimum(rho, ope.DEFAULT_NCIS_CAP)
        disc_row = lg.disc[lg.step]
        self.ips_s = lg.per_session(disc_row * rho * lg.r)
        self.rw, self.re = lg.dense(rho * lg.r), lg.dense(rho, extend=True)
        self.cw, self.ce = lg.dense(rc * lg.r), lg.dense(rc, extend=True)
        self.costw = lg.dense(rho * lg.c)
        self.dr_s = lg.per_session(disc_row * (rho * (lg.r - self.q_logged) + rho_prev * self.v_hat))
        self.alloc_num = lg.per_session(rho_prev * self.p1)
        self.alloc_den = lg.per_session(rho_prev)

    def theta(self, a_mat: np.ndarray, rhs: np.ndarray, row_weight: np.ndarray | None) -> np.ndarray:
        lw = self.live_next if row_weight is None else self.live_next * row_weight[:, None]
        return _fqe_theta(a_mat, rhs, self.lg.phi_sa.T @ lw)

    def _weighted(self, counts: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            n, d = counts @ num, counts @ den
            val = (self.lg.disc * n / d).sum(axis=1)
        return np.where((d > 0).all(axis=1), val, np.nan)

    def replicate_values(self, counts: np.ndarray, normals: list[tuple[np.ndarray, np.ndarray]]
                         ) -> dict[str, np.ndarray]:
        """Every estimate for each row of ``counts`` (B, m) (session multiplicities), shape (B,) each."""
        lg = self.lg
        total = counts.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            alloc = (counts @ self.alloc_num) / (counts @ self.alloc_den)
        fqe = np.empty(counts.shape[0])
        for b, (a_mat, rhs) in enumerate(normals):
            theta = self.theta(a_mat, rhs, counts[b][lg.sidx])
            fqe[b] = (counts[b] @ self.phi_start) @ theta / total[b]
        return {
            "ips": counts @ self.ips_s / total,
            "snips": self._weighted(counts, self.rw, self.re),
            "ncis": self._weighted(counts, self.cw, self.ce),
            "dr": counts @ self.dr_s / total,
            "fqe": fqe,
            "alloc_ratio": alloc,
            "cost": self._weighted(counts, self.costw, self.re),
        }

    def point_values(self) -> dict[str, float]:
        """The estimates on the whole log, from :mod:`recsys.ope` (NaN where undefined)."""
        lg = self.lg
        args = (lg.sidx, lg.step, lg.gamma)
        out: dict[str, float] = {}

        def safe(name: str, fn: Callable[[], float]) -> None:
            try:
                out[name] = float(fn())
            except ValueError:
                out[name] = float("nan")

        safe("ips", lambda: ope.pdis(lg.r, lg.mu, self.tp, *args).value)
        safe("snips", lambda: ope.pdis(lg.r, lg.mu, self.tp, *args, weighted=True).value)
        safe("ncis", lambda: _capped_wpdis(lg.r, lg.mu, self.tp, lg.step, lg.gamma, ope.DEFAULT_NCIS_CAP)[0])
        safe("dr", lambda: ope.sequential_dr(lg.r, lg.mu, self.tp, self.q_logged, self.v_hat, *args).value)
        safe("fqe", lambda: ope.fqe(lg.phi_sa, self.phi_next_pi, lg.r, lg.done, self.phi_start, lg.gamma,
                                    iterations=FQE_ITERATIONS, ridge=FQE_RIDGE).value)
        safe("alloc_ratio", lambda: ope.implied_rate(self.p1, lg.mu, self.tp, session_ids=lg.sidx,
                                                     steps=lg.step).allocation_ratio)
        safe("cost", lambda: ope.pdis(lg.c, lg.mu, self.tp, *args, weighted=True).value)
        return out


def _session_counts(m: int, n_boot: int, seed: int, chunk: int):
    """Session multiplicities of ``n_boot`` bootstrap resamples, in blocks of at most ``chunk`` rows (B, m)."""
    rng = np.random.default_rng(seed)
    for lo in range(0, n_boot, chunk):
        b = min(chunk, n_boot - lo)
        draws = rng.integers(0, m, size=(b, m))
        counts = np.zeros((b, m))
        for i in range(b):
            counts[i] = np.bincount(draws[i], minlength=m)
        yield counts


def _ci(stats: np.ndarray) -> tuple[tuple[float, float], float]:
    ok = np.isfinite(stats)
    if not ok.any():
        return (float("nan"), float("nan")), 1.0
    lo, hi = np.quantile(stats[ok], [0.025, 0.975])
    return (float(lo), float(hi)), float(1.0 - ok.mean())


def _rel_error(est: float, true: float) -> float:
    if not math.isfinite(est):
        return float("inf")
    if true == 0.0:
        return 0.0 if abs(est) < 1e-12 else float("inf")
    return abs(est - true) / abs(true)


def evaluate_policies(
    logged: LoggedData,
    policies: Mapping[str, Policy],
    gamma: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
    env: FeedEnv | None = None,
    n_true_sessions: int = 20_000,
    truth_seed: int = 0,
) -> OPEResults:
    """Estimate every policy's value with every estimator of :data:`ESTIMATORS`, with diagnostics and CIs.

    Args:
        logged: the decision log (logging propensities recorded at decision time).
        policies: name (a short key, used in metric names) -> policy callable ``features -> prob_insert``.
        gamma: discount; default the log's ``gamma``.
        n_boot: bootstrap replicates over sessions for the 95 % percentile CIs (the brief uses 1,000).
        seed: seed of the bootstrap.
        env: the environment that produced the log; when given, each policy's true value, cost and allocation ratio
            come from ``env.rollout(policy, n_true_sessions, truth_seed)`` (the same sessions for every policy).
        n_true_sessions, truth_seed: the ground-truth rollouts.

    Raises:
        ValueError: on an empty log or no policies, a log whose features do not match the env, bad arguments.
    """
    t0 = time.perf_counter()
    if not policies:
        raise ValueError("no target policies to evaluate")
    if len(logged) == 0:
        raise ValueError("the decision log is empty")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    g = float(logged.gamma if gamma is None else gamma)
    if not 0.0 <= g <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {g}")
    if env is not None:
        if tuple(env.feature_names) != tuple(logged.feature_names):
            raise ValueError(f"the log's features {list(logged.feature_names)} are not the environment's "
                             f"{list(env.feature_names)}")
        if env.config.gamma != g:
            env = env.with_config(gamma=g)

    lg = _Log(logged, g)
    targets = {key: _Target(lg, logged, policy) for key, policy in policies.items()}
    stats: dict[str, dict[str, list[np.ndarray]]] = {key: {} for key in targets}
    for counts in _session_counts(lg.m, n_boot, seed, chunk=max(1, int(5e6 // lg.m))):
        normals = [lg.fqe_normal(cb[lg.sidx]) for cb in counts]  # policy-independent part of FQE
        for key, tgt in targets.items():
            for name, vals in tgt.replicate_values(counts, normals).items():
                stats[key].setdefault(name, []).append(vals)

    results: dict[str, PolicyResult] = {}
    for key, policy in policies.items():
        tgt = targets[key]
        point = tgt.point_values()
        boot = {name: np.concatenate(v) for name, v in stats[key].items()}
        ws = ope.weight_stats(tgt.final)
        ncis_sens: dict[float, float] = {}
        for cap in NCIS_CAPS:
            try:
                ncis_sens[cap] = _capped_wpdis(lg.r, lg.mu, tgt.tp, lg.step, g, cap)[0]
            except ValueError:
                ncis_sens[cap] = float("nan")
        capped = float(np.mean(tgt.rho > ope.DEFAULT_NCIS_CAP))
        try:
            cost_per_decision = ope.implied_rate(tgt.p1, lg.mu, tgt.tp, lg.c).cost
        except ValueError:
            cost_per_decision = None

        truth = None
        if env is not None:
            ro = env.rollout(policy, n_true_sessions, seed=truth_seed)
            truth = Truth(value=ro.value, value_ci=ro.value_ci95, cost=ro.cost, alloc_ratio=ro.alloc_ratio,
                          mean_length=ro.mean_length, n_sessions=n_true_sessions, seed=truth_seed)

        theta_norm = float(np.linalg.norm(tgt.theta_all))
        estimates: dict[str, EstimatorResult] = {}
        for name in ESTIMATORS:
            ci, failed = _ci(boot[name])
            weighted = name != "fqe"
            e = EstimatorResult(estimator=name, value=point[name], ci=ci, failed_boot=failed,
                                ess=ws.ess if weighted else None, ess_fraction=ws.ess_fraction if weighted else None,
                                max_weight=ws.max if weighted else None)
            if name == "ncis":
                e.note = f"cap {ope.DEFAULT_NCIS_CAP:g}, {capped:.1%} of rows capped"
            if name == "fqe" and not theta_norm < FQE_BLOWUP_NORM:
                e.diverged, e.note = True, "FQE parameters blew up (linear FQE diverges off-policy)"
            if name == "dr" and not tgt.theta_cross_norm < FQE_BLOWUP_NORM:
                e.diverged, e.note = True, "its cross-fitted FQE Q-function blew up (linear FQE diverges off-policy)"
            if truth is not None:
                e.true_value = truth.value
                e.rel_error = _rel_error(e.value, truth.value)
                e.covered = bool(np.isfinite(ci[0]) and ci[0] - 1e-9 <= truth.value <= ci[1] + 1e-9)
            estimates[name] = e
        results[key] = PolicyResult(
            key=key, name=getattr(policy, "name", None) or key, estimates=estimates,
            alloc_ratio=point["alloc_ratio"], alloc_ci=_ci(boot["alloc_ratio"])[0], cost=point["cost"],
            cost_ci=_ci(boot["cost"])[0], cost_per_decision=cost_per_decision, ess=ws.ess,
            ess_fraction=ws.ess_fraction, max_weight=ws.max, top1_share=ws.top1_share, ncis_capped_fraction=capped,
            ncis_sensitivity=ncis_sens, fqe_theta_norm=theta_norm, truth=truth,
        )

    disc = lg.per_session(lg.disc[lg.step] * lg.r)
    return OPEResults(
        policies=results, n_sessions=lg.m, n_decisions=len(logged), gamma=g,
        logging_policy=logged.policy_name, logging_value=float(disc.mean()),
        logging_alloc_ratio=float(np.mean(logged.action)),
        propensity_range=(float(lg.mu.min()), float(lg.mu.max())), n_boot=n_boot, seed=seed,
        n_rewarded=int(np.count_nonzero(logged.reward > 0)),
        truth_sessions=n_true_sessions if env is not None else None, truth_seed=truth_seed if env is not None else None,
        wall_s=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------------------------------------- summaries
def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    for v in np.unique(x):  # average ties
        m = x == v
        ranks[m] = ranks[m].mean()
    return ranks


def summary_metrics(res: OPEResults) -> dict[str, float]:
    """Across policies, per estimator (with truth only): mean relative error, CI coverage, Spearman correlation of
    the estimates with the true values (>= 3 policies) and regret@1 (true value lost by picking the best estimate)."""
    pols = [p for p in res.policies.values() if p.truth is not None]
    if not pols:
        return {}
    true = np.array([p.truth.value for p in pols])  # type: ignore[union-attr]
    out: dict[str, float] = {}
    for name in ESTIMATORS:
        est = np.array([p.estimates[name].value for p in pols])
        rel = np.array([p.estimates[name].rel_error for p in pols], dtype=np.float64)
        out[f"{name}.mean_rel_error"] = float(np.mean(rel[np.isfinite(rel)])) if np.isfinite(rel).any() else math.inf
        out[f"{name}.coverage"] = float(np.mean([bool(p.estimates[name].covered) for p in pols]))
        if np.isfinite(est).all():
            if len(pols) >= 3 and np.ptp(est) > 0 and np.ptp(true) > 0:
                out[f"{name}.spearman"] = float(np.corrcoef(_ranks(est), _ranks(true))[0, 1])
            out[f"{name}.regret_at_1"] = float(true.max() - true[int(np.argmax(est))])
    return {k: v for k, v in out.items() if math.isfinite(v)}


def findings(res: OPEResults) -> list[str]:
    """Plain-language findings computed from the numbers: which estimators fail where, and why."""
    lines: list[str] = []
    if res.n_rewarded == 0:
        lines.append("No logged decision has a positive reward (for a service log: no inserted room was clicked "
                     "within the reward window), so every reward-based estimate is 0 whatever the policy; "
                     "the log is too short or too sparse to tell the policies apart.")
    for p in res.policies.values():
        if p.ess_fraction < ope.LOW_ESS_FRACTION:
            lines.append(f"`{p.key}`: ESS/n = {p.ess_fraction:.2%} of the sessions (< {ope.LOW_ESS_FRACTION:.0%}): the "
                         "importance-weighted estimates (ips, snips, ncis, dr) rest on a handful of sessions; do not "
                         "trust them.")
        bad = []
        for e in p.estimates.values():
            why = []
            if not math.isfinite(e.value):
                why.append("undefined (all weights zero)")
            if e.rel_error is not None and math.isfinite(e.value) and e.rel_error > REL_ERROR_TOL:
                why.append(f"rel. error {e.rel_error:.1%}")
            if e.covered is False:
                why.append("95 % CI misses the truth")
            if e.failed_boot > 0:
                why.append(f"undefined in {e.failed_boot:.0%} of bootstrap replicates")
            if e.diverged:
                why.append(e.note)
            if why:
                bad.append(f"{e.estimator} ({', '.join(why)})")
        if bad:
            lines.append(f"`{p.key}`: " + "; ".join(bad) + ".")
        elif p.truth is not None:
            lines.append(f"`{p.key}`: every estimator within {REL_ERROR_TOL:.0%} of the truth with the truth in "
                         "its CI.")
        if p.truth is not None and abs(p.alloc_ratio - p.truth.alloc_ratio) > 0.02 + 0.1 * p.truth.alloc_ratio:
            lines.append(f"`{p.key}`: implied allocation ratio {p.alloc_ratio:.3f} vs true {p.truth.alloc_ratio:.3f}.")
    summ = summary_metrics(res)
    if summ:
        ranked = sorted(ESTIMATORS, key=lambda n: summ.get(f"{n}.mean_rel_error", math.inf))
        best, worst = ranked[0], ranked[-1]
        lines.append(f"Across policies the most accurate estimator is **{best}** (mean rel. error "
                     f"{summ.get(f'{best}.mean_rel_error', math.inf):.1%}), the least accurate **{worst}** "
                     f"({summ.get(f'{worst}.mean_rel_error', math.inf):.1%}).")
        cov = {n: summ.get(f"{n}.coverage") for n in ESTIMATORS}
        low = [f"{n} ({c:.0%})" for n, c in cov.items() if c is not None and c < 1.0]
        if low:
            lines.append("CI coverage of the true value below 100 % across these policies: " + ", ".join(low) + ".")
    if not lines:
        lines.append("No ground truth given: only the weight diagnostics can flag problems, and none did.")
    return lines


# --------------------------------------------------------------------------------------------------------- report
def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    if v is None:
        return "-"
    return "n/a" if not math.isfinite(v) else f"{v:.1%}"


def _plots(res: OPEResults, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    pols = list(res.policies.values())
    markers = dict(zip(ESTIMATORS, "osD^v"))
    offsets = dict(zip(ESTIMATORS, np.linspace(-0.008, 0.008, len(ESTIMATORS))))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in ESTIMATORS:
        xs, ys, lo, hi = [], [], [], []
        for p in pols:
            e = p.estimates[name]
            if math.isfinite(e.value):
                xs.append(p.alloc_ratio + offsets[name])
                ys.append(e.value)
                lo.append(max(e.value - e.ci[0], 0.0) if math.isfinite(e.ci[0]) else 0.0)
                hi.append(max(e.ci[1] - e.value, 0.0) if math.isfinite(e.ci[1]) else 0.0)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt=markers[name], capsize=3, label=name, alpha=0.8)
    truths = [p for p in pols if p.truth is not None]
    if truths:
        ax.scatter([p.truth.alloc_ratio for p in truths], [p.truth.value for p in truths],  # type: ignore[union-attr]
                   marker="*", s=180, color="black", zorder=5, label="true (env)")
    for p in pols:
        x, y = (p.truth.alloc_ratio, p.truth.value) if p.truth is not None else (p.alloc_ratio,
                                                                                 p.estimates["snips"].value)
        if math.isfinite(y):
            ax.annotate(p.key, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("allocation ratio (estimated; true for the stars)")
    ax.set_ylabel("value: discounted live minutes per session")
    ax.set_title("Value vs allocation ratio (95 % bootstrap CIs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / PLOTS[0])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(pols), figsize=(3.2 * len(pols) + 0.5, 3.6), squeeze=False)
    for ax, p in zip(axes[0], pols):
        for j, name in enumerate(ESTIMATORS):
            e = p.estimates[name]
            if math.isfinite(e.value):
                lo = e.value - e.ci[0] if math.isfinite(e.ci[0]) else 0.0
                hi = e.ci[1] - e.value if math.isfinite(e.ci[1]) else 0.0
                ax.errorbar([e.value], [j], xerr=[[max(lo, 0.0)], [max(hi, 0.0)]], fmt=markers[name], capsize=3)
        if p.truth is not None:
            ax.axvline(p.truth.value, color="black", linestyle="--", label="true")
            ax.legend(fontsize=7)
        ax.set_yticks(range(len(ESTIMATORS)), ESTIMATORS)
        ax.set_title(p.key, fontsize=9)
        ax.set_xlabel("value")
    fig.suptitle("Estimates and 95 % CIs per estimator")
    fig.tight_layout()
    paths.append(out_dir / PLOTS[1])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(pols) + 2), 3.6))
    frac = [max(p.ess_fraction, 1e-6) for p in pols]
    colors = ["tab:red" if f < ope.LOW_ESS_FRACTION else "tab:blue" for f in frac]
    ax.bar([p.key for p in pols], frac, color=colors)
    ax.axhline(ope.LOW_ESS_FRACTION, color="tab:red", linestyle="--", label="1 % warning")
    ax.set_yscale("log")
    ax.set_ylabel("ESS / n (sessions)")
    ax.set_title("Effective sample size of the session weights")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / PLOTS[2])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _blocks(res: OPEResults, title: str) -> list[tuple]:
    """The report as blocks: ("h", level, text), ("p", text), ("ul", items), ("table", header, rows), ("img", alt,
    file). Inline markup: `code` and **bold** only."""
    b: list[tuple] = [("h", 1, title)]
    truth = (f"True values: `env.rollout` of each policy on {res.truth_sessions:,} sessions of seed {res.truth_seed} "
             "(common random numbers across policies)." if res.truth_sessions else
             "No environment given: no true values; only estimates and weight diagnostics.")
    b.append(("p", f"Decision log: {res.n_sessions:,} sessions, {res.n_decisions:,} decisions, logging policy "
                   f"`{res.logging_policy}` (allocation ratio {res.logging_alloc_ratio:.3f}, on-policy value "
                   f"{res.logging_value:.3f}, {res.n_rewarded:,} decisions with a positive reward, propensities in "
                   f"[{res.propensity_range[0]:.3g}, {res.propensity_range[1]:.3g}]). Discount gamma = {res.gamma:g}; "
                   f"95 % percentile CIs from {res.n_boot} bootstrap resamples of sessions (seed {res.seed}). {truth}"))
    b.append(("h", 2, "Findings"))
    b.append(("ul", findings(res)))

    b.append(("h", 2, "Overview"))
    header = ["policy", "true value", "snips", "dr", "fqe", "est. alloc (CI)", "true alloc", "est. cost (CI)",
              "true cost", "ESS/n"]
    rows = []
    for p in res.policies.values():
        t = p.truth
        rows.append([f"`{p.key}`", _fmt(t.value if t else None), _fmt(p.estimates["snips"].value),
                     _fmt(p.estimates["dr"].value), _fmt(p.estimates["fqe"].value),
                     f"{_fmt(p.alloc_ratio)} [{_fmt(p.alloc_ci[0])}, {_fmt(p.alloc_ci[1])}]",
                     _fmt(t.alloc_ratio if t else None),
                     f"{_fmt(p.cost)} [{_fmt(p.cost_ci[0])}, {_fmt(p.cost_ci[1])}]", _fmt(t.cost if t else None),
                     _pct(p.ess_fraction)])
    b.append(("table", header, rows))

    for p in res.policies.values():
        b.append(("h", 2, f"Policy `{p.key}`"))
        t = p.truth
        desc = f"`{p.name}`. "
        if t is not None:
            desc += (f"True value {t.value:.3f} (95 % CI [{t.value_ci[0]:.3f}, {t.value_ci[1]:.3f}]), true cost "
                     f"{t.cost:.3f}, true allocation ratio {t.alloc_ratio:.3f}, mean session length "
                     f"{t.mean_length:.1f}. ")
        desc += (f"Session weights: ESS {p.ess:,.1f} ({_pct(p.ess_fraction)} of n), max weight {p.max_weight:.3g}, "
                 f"top-1 % share {_pct(p.top1_share)}; NCIS caps {_pct(p.ncis_capped_fraction)} of the rows; NCIS "
                 "sensitivity to c: " + ", ".join(f"c={c:g}: {_fmt(v)}" for c, v in p.ncis_sensitivity.items())
                 + f". Implied cost per decision {_fmt(p.cost_per_decision)}.")
        b.append(("p", desc))
        header = ["estimator", "estimate", "95 % CI", "rel. error", "truth in CI", "ESS/n", "max weight", "verdict"]
        rows = []
        for e in p.estimates.values():
            verdict = {True: "ok", False: "FAILS", None: "-"}[e.ok]
            if e.note:
                verdict += f" ({e.note})"
            rows.append([e.estimator, _fmt(e.value), f"[{_fmt(e.ci[0])}, {_fmt(e.ci[1])}]", _pct(e.rel_error),
                         {True: "yes", False: "no", None: "-"}[e.covered], _pct(e.ess_fraction),
                         _fmt(e.max_weight, 3) if e.max_weight is not None else "-", verdict])
        b.append(("table", header, rows))

    summ = summary_metrics(res)
    if summ:
        b.append(("h", 2, "Estimators across policies"))
        header = ["estimator", "mean rel. error", "CI coverage", "Spearman vs truth", "regret@1"]
        b.append(("table", header, [[n, _pct(summ.get(f"{n}.mean_rel_error")), _pct(summ.get(f"{n}.coverage")),
                                     _fmt(summ.get(f"{n}.spearman")), _fmt(summ.get(f"{n}.regret_at_1"))]
                                    for n in ESTIMATORS]))
    b.append(("h", 2, "Plots"))
    alts = ("Value vs allocation ratio", "CI per estimator per policy", "ESS per policy")
    for alt, name in zip(alts, PLOTS):
        b.append(("img", alt, name))
    b.append(("h", 2, "Method"))
    b.append(("ul", [
        "**ips**: per-decision importance sampling (PDIS) over sessions.",
        "**snips**: weighted PDIS, normalised at each step over all sessions (ended ones keep their final weight).",
        f"**ncis**: weighted PDIS with the cumulative weights capped at c = {ope.DEFAULT_NCIS_CAP:g} (the sequential "
        "form of capped, normalised IS).",
        "**dr**: sequential doubly robust (Jiang & Li 2016) with the linear FQE Q-function cross-fitted on the other "
        "half of the sessions; fixed within the bootstrap.",
        f"**fqe**: linear fitted Q evaluation, {FQE_ITERATIONS} iterations, ridge {FQE_RIDGE:g}, features "
        "[(1-a) psi(s), a psi(s)], refitted in every bootstrap replicate; needs no propensities.",
        "Allocation ratio: rho_{0:t-1}-weighted share of pi(insert | s); cost: weighted PDIS on the logged costs "
        "(discounted short-video minutes given up per session).",
        f"An estimate FAILS when it is undefined, its ESS/n is below {ope.LOW_ESS_FRACTION:.0%}, or its relative "
        f"error exceeds {REL_ERROR_TOL:.0%}.",
    ]))
    return b


def _inline_html(text: str) -> str:
    import re

    s = html.escape(text, quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def _to_markdown(blocks: list[tuple]) -> str:
    out: list[str] = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif kind == "p":
            out.append(blk[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in blk[1]))
        elif kind == "table":
            header, rows = blk[1], blk[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{blk[1]}]({blk[2]})")
    return "\n\n".join(out) + "\n"


def _to_html(blocks: list[tuple], title: str) -> str:
    body: list[str] = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            body.append(f"<h{blk[1]}>{_inline_html(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(blk[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in blk[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in blk[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(str(c))}</td>" for c in row) + "</tr>"
                           for row in blk[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(blk[2])}" alt="{html.escape(blk[1])}"></p>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse;"
             "margin:1em 0;}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;}"
             "td:first-child,th:first-child{text-align:left;}img{max-width:100%;}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(results: OPEResults, out_dir: str | Path, title: str = "Off-policy evaluation report") -> Path:
    """Write ``report.md``, ``report.html`` (same content) and the PNG plots into ``out_dir``; return the .md path.

    Plots: ``value_vs_alloc.png`` (every estimate with its CI against the implied allocation ratio, true values as
    stars), ``ci_per_estimator.png`` (one panel per policy, the true value dashed) and ``ess.png`` (ESS / n per
    policy, log scale, the 1 % warning line).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plots(results, out)
    blocks = _blocks(results, title)
    md = out / "report.md"
    md.write_text(_to_markdown(blocks))
    (out / "report.html").write_text(_to_html(blocks, title))
    return md


# --------------------------------------------------------------------------------------------------------- jobs
def _parse_specs(specs: Sequence[str], env: FeedEnv | None) -> dict[str, Policy]:
    if not specs:
        raise ValueError("give at least one target policy")
    policies: dict[str, Policy] = {}
    for spec in specs:
        key = policy_key(spec)
        if key in policies:
            raise ValueError(f"policy {spec!r} is given twice (as {key!r})")
        policies[key] = parse_policy(spec, env)
    return policies


def run_ope(
    logs: str | Path | LoggedData,
    policy_specs: Sequence[str],
    tracking: TrackingConfig,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    *,
    env: FeedEnv | None = None,
    estimator: Estimator | None = None,
    gamma: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
    n_true_sessions: int = 20_000,
    truth_seed: int = 0,
    title: str | None = None,
    run_name: str = "ope",
    extra_params: Mapping[str, Any] | None = None,
) -> OPERunResult:
    """Evaluate ``policy_specs`` on a decision log, write the report and track everything in one MLflow run.

    Args:
        logs: a Parquet decision log (:meth:`LoggedData.write_parquet`), a service decision log (``.jsonl``,
            :mod:`recsys.feed.decision_log`; needs ``data_dir``) or a :class:`LoggedData`.
        policy_specs: :mod:`recsys.feed.policy_spec` strings; metric names use :func:`policy_key` of each.
        tracking: MLflow settings (``enabled=False`` for no run).
        out_dir: where ``report.md``, ``report.html`` and the plots go.
        data_dir: dataset with ``truth/``: builds the environment for the true values (and the ``logging`` spec).
            For a ``.jsonl`` log its ``click`` table gives the outcomes (no true values: the environment simulates
            another process than the service's traffic).
        env: an environment instead of ``data_dir``.
        estimator: the model whose predictions form the state of the environment built from ``data_dir`` (as for
            :func:`run_replay`; a log written with one must be evaluated with the same).
        gamma, n_boot, seed, n_true_sessions, truth_seed: as for :func:`evaluate_policies`.

    Metrics: ``<policy>.<estimator>`` (+ ``.ci_low`` / ``.ci_high`` / ``.rel_error``), ``<policy>.true_value``,
    ``<policy>.true_cost``, ``<policy>.true_alloc_ratio``, ``<policy>.alloc_ratio``, ``<policy>.cost``,
    ``<policy>.ess_fraction`` ..., ``summary.<estimator>.mean_rel_error`` / ``coverage`` / ``spearman`` /
    ``regret_at_1``, ``log.*``.
    """
    log_path: Path | None = None
    if isinstance(logs, LoggedData):
        logged = logs
    else:
        log_path = Path(logs)
        logged = _read_logs(log_path, data_dir)
    # a service log's outcomes come from the click log, not from the environment's simulation: the environment's
    # true values measure another process (its own candidates and reward model), so they are not attached
    if env is None and data_dir is not None and not _is_service_log(log_path):
        env = FeedEnv(data_dir, estimator=estimator)
    policies = _parse_specs(policy_specs, env)
    out = Path(out_dir)
    with tracking_run(tracking, run_name) as tracker:
        params: dict[str, Any] = {
            "logs": str(log_path) if log_path else "<in memory>", "policies": list(policy_specs),
            "n_boot": n_boot, "seed": seed, "gamma": logged.gamma if gamma is None else gamma,
            "log.n_sessions": logged.n_sessions, "log.policy": logged.policy_name,
            "truth": env is not None, **dict(extra_params or {}),
        }
        if env is not None:
            params.update({"truth.n_sessions": n_true_sessions, "truth.seed": truth_seed,
                           "env.data_dir": str(env.data_dir),
                           **{f"env.{k}": v for k, v in env.describe()["config"].items()}})
        tracker.log_params(params)
        res = evaluate_policies(logged, policies, gamma=gamma, n_boot=n_boot, seed=seed, env=env,
                                n_true_sessions=n_true_sessions, truth_seed=truth_seed)
        report = write_report(res, out, title or f"Off-policy evaluation of {len(policies)} allocation policies")
        metrics = res.metrics()
        tracker.log_metrics(metrics)
        for path in (report, out / "report.html", *(out / p for p in PLOTS)):
            tracker.log_artifact(path, "report")
        return OPERunResult(results=res, report=report, html=out / "report.html", plots=[out / p for p in PLOTS],
                            run_id=tracker.run_id, log_path=log_path, metrics=metrics)


def _is_service_log(path: Path | None) -> bool:
    """Whether ``path`` is a service decision log (JSONL of :class:`recsys.feed.decision_log.DecisionRecord`)."""
    return path is not None and path.suffix == ".jsonl"


def _read_logs(path: Path, data_dir: str | Path | None) -> LoggedData:
    """A Parquet decision log, or a service JSONL log joined with the click table of ``data_dir``."""
    if not path.is_file():
        raise FileNotFoundError(f"decision log {path} not found (write one with `recsys replay`, or a .jsonl one "
                                "with the ranking service)")
    if not _is_service_log(path):
        return LoggedData.read_parquet(path)
    if data_dir is None:
        raise ValueError(f"{path}: a service decision log needs --data to join outcomes (the dataset directory "
                         "whose click table holds the clicks that followed the decisions)")
    from recsys.data.loaders import load_kuailive
    from recsys.feed.decision_log import join_outcomes, read_decisions

    clicks = load_kuailive(data_dir, tables=["click"], with_embeddings=False).tables["click"]
    return join_outcomes(read_decisions(path), clicks)


def run_replay(
    data_dir: str | Path,
    policy_specs: Sequence[str],
    n_sessions: int,
    seed: int,
    logging_spec: str = "logging",
    tracking: TrackingConfig | None = None,
    out_dir: str | Path = "runs/replay",
    log_out: str | Path | None = None,
    *,
    n_boot: int = 200,
    n_true_sessions: int = 20_000,
    estimator: Estimator | None = None,
) -> OPERunResult:
    """Simulate a logged day with the logging policy, write the decision log, and evaluate the targets on it.

    The log covers sessions 0 .. n_sessions - 1 of ``seed``; the true values are rollouts on the first
    ``max(n_true_sessions, n_sessions)`` sessions of the same seed, so the logged sessions are a prefix of the
    truth's (common random numbers).

    Args:
        data_dir: dataset with ``truth/`` (the environment).
        policy_specs: target policies (:mod:`recsys.feed.policy_spec`).
        n_sessions: sessions in the log.
        seed: seed of the simulated day (and of the bootstrap).
        logging_spec: the logging policy; must be stochastic (propensities recorded in the log).
        tracking: MLflow settings (None: tracking off).
        out_dir: report directory; log_out: the Parquet log (default ``<out_dir>/decision_log.parquet``).
        estimator: the model whose predictions form the policies' state (:data:`recsys.feed.env.Estimator`; e.g.
            the served ranker, for a policy trained on it); None: the truth's.
    """
    if n_sessions < 1:
        raise ValueError(f"n_sessions must be >= 1, got {n_sessions}")
    env = FeedEnv(data_dir, estimator=estimator)
    logging_policy = parse_policy(logging_spec, env)
    targets = _parse_specs(policy_specs, env)  # fail on a bad target before simulating
    del targets
    logged = env.log(logging_policy, n_sessions, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_out) if log_out else out / "decision_log.parquet"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logged.write_parquet(log_path)
    res = run_ope(logged, policy_specs, tracking or TrackingConfig(enabled=False), out, env=env, n_boot=n_boot,
                  seed=seed, n_true_sessions=max(n_true_sessions, n_sessions), truth_seed=seed,
                  title=f"Replay: {n_sessions:,} simulated sessions logged by `{logging_spec}`", run_name="replay",
                  extra_params={"replay.logging": logging_spec, "replay.n_sessions": n_sessions,
                                "replay.seed": seed, "replay.log_out": str(log_path)})
    res.log_path = log_path
    return res
