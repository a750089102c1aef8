"""Semi-synthetic mixed-feed environment on KuaiLive with a known ground truth (allocation brief, section 8).

One **episode** is a user's feed session; one **step** is a feed request where the allocator decides whether to insert
the top live room (action 1) or to show a short video (action 0). Everything the environment needs beyond the
KuaiLive files comes from the dataset's ``truth/`` directory (written by :mod:`recsys.data.synthetic`, or fitted once
on real KuaiLive and frozen in the same format), so the value of every policy is known exactly, up to Monte Carlo
error, and every off-policy estimate can be scored against it.

Generative story (units: minutes for every duration, epoch ms for times)
-----------------------------------------------------------------------
1. **Start.** Session ``s`` starts at a real session start ``(user, t_0)`` drawn uniformly from the real sessions of
   the dataset: each user's click+negative exposures split at gaps over ``session_gap_minutes`` and at CST midnight.
2. **Clock.** Request ``i + 1`` comes ``Exp(request_gap_seconds)`` after request ``i``, independently of the actions
   (a simplification: time spent watching a live room does not delay the next request), so the request times and the
   candidates are shared by every policy. At most ``horizon`` requests.
3. **Candidate.** At each request the ONE top live candidate is the room live at t (``room.csv``, half-open
   ``[start, end)``) with the highest true click logit ``f(u, room, t)`` of the truth (affinity of the drifting user
   factors with the streamer factors, category taste, popularity, hour, room age, live type, intercept ``b0``): the
   stand-in for the live ranker. A ``scorer`` callable can replace it. No live room: the request has no candidate and
   the action is forced to 0 (propensity 1).
4. **State.** user, t, request index, activity group ``g(u)`` (quantile tier of the truth ``activity``), the fatigue
   ``F_i = sum_{j<i} a_j exp(-(t_i - t_j) / fatigue_minutes)`` and the candidate's features (:data:`BASE_FEATURES`).
5. **Click.** ``click ~ Bernoulli(sigmoid(f + eps_i - fatigue_click * F_i))`` if inserted, with per-request context
   noise ``eps_i ~ N(0, context_noise_sd^2)`` exactly as in the generator.
6. **Watch given click** (the truth's watch model): engaged with probability
   ``sigmoid(engaged_bias + engaged_slope * z)``, ``z`` the standardised noisy logit, then
   ``W ~ LogNormal(log engaged_median, engaged_sigma)``, else ``LogNormal(log bounce_median, bounce_sigma)``; cut at
   the room's true end and at ``watch_cap_minutes``. **Reward** ``r_i = a_i * click_i * W_i``.
7. **Cost** ``c_i = a_i * V_i``: the short video the slot would have shown, ``V_i ~ Gamma(video_shape,
   video_mean_seconds[g] / video_shape)`` seconds (a labelled synthetic assumption: KuaiLive has no short videos).
   App time of the step = live minutes + ``(1 - a_i) V_i``.
8. **Exit.** After the step the user leaves with ``sigmoid(exit_bias + exit_fatigue * (F_i + a_i)
   + exit_unclicked * [a_i = 1 and no click])``: over-insertion lowers later click rates and shortens sessions.

Common random numbers (CRN)
---------------------------
Every random quantity of session ``s``, request ``i`` is a function of ``(seed, s, i)`` only: draw kind ``k`` (table
below) uses the PCG64 stream ``SeedSequence([seed, k])``, and its ``j``-th uniform of request ``(s, i)`` is double
number ``(s * horizon + i) * width_k + j`` of that stream (``s * width_k + j`` for the per-session kind 0). A session's
draws therefore do not depend on the policy, on ``n_sessions`` (a rollout of n sessions is a prefix of one of
m > n sessions) or on other sessions. Shared by all policies:

====  ==========  =====  ===================================================================
kind  name        width  use
====  ==========  =====  ===================================================================
0     start       1      index of the real session start (user, t_0)
1     clock       1      gap to the next request, ``-log(1 - U) * request_gap``
2     video       k_v    short-video time V_i (sum of k_v exponentials; k_v = video_shape)
3     noise       2      context noise eps_i (Box-Muller)
4     action      1      the action: ``a_i = 1[U < prob_insert]`` (couples policies)
5     click       1      ``click_i = 1[U < p_click]``
6     engage      1      engaged vs bounce watch
7     watch       2      the log-normal watch normal (Box-Muller)
8     exit        1      ``exit_i = 1[U < h_i]``
====  ==========  =====  ===================================================================

Because the clock and the candidates are action-independent, two policies see the same request times and the same
candidates at every step both are still in the session; they diverge only through fatigue, the action coupling and
exits.

Features (``observe``)
----------------------
The state is summarised by a fixed float64 vector, columns :func:`feature_names` (``n_groups`` one-hot columns last):
``p_click_hat`` (truth ``sigmoid(f)``: no fatigue, no context noise), ``watch_hat`` (truth ``E[W | click]`` in
minutes, from the noiseless logit), ``score_hat = p_click_hat * watch_hat`` (expected live minutes of an insertion
before fatigue), ``log_popularity`` (log of the streamer's truth popularity, mean 1), ``fatigue`` (F_i),
``request_index`` (i), ``hour_sin`` / ``hour_cos`` (CST hour of day), ``has_candidate`` (0 / 1), ``group_0 ..``
(one-hot activity group, 0 = least active). Candidate columns are 0 when there is no candidate. With an
``estimator`` (:data:`Estimator`), ``p_click_hat`` and ``watch_hat`` (and ``log_popularity`` when it gives one) are
a model's predictions instead: the ranker the service runs and the store's popularity, so that the state a policy
is trained on is the state it is served.

A policy is any callable ``features (n, F) -> prob_insert (n,)`` in [0, 1]; see :mod:`recsys.feed.policies`.
Values are discounted with ``gamma``: ``value = mean_s sum_i gamma^i r_{s,i}``, the quantity the sequential OPE
estimators of :mod:`recsys.ope` (``pdis``, ``sequential_dr``, ``fqe``) estimate with the same gamma; undiscounted
totals are reported as well.
"""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.live_index import LiveIndex
from recsys.data.loaders import load_kuailive
from recsys.timeutil import (
    MS_PER_DAY,
    MS_PER_MINUTE,
    N_WINDOW_DAYS,
    WINDOW_START_MS,
    cst_day,
    cst_hour,
    cst_hour_angle,
)

__all__ = [
    "BASE_FEATURES",
    "TRUTH_FILES",
    "Estimator",
    "FeedEnv",
    "FeedEnvConfig",
    "LoggedData",
    "MissingTruthError",
    "Policy",
    "RolloutResult",
    "Scorer",
    "feature_index",
    "feature_names",
    "n_groups_of",
]

Policy = Callable[[np.ndarray], np.ndarray]
"""``features (n, F) float64 -> prob_insert (n,)`` in [0, 1]."""

Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``(user_ids (n,), times_ms (n,), live_ids (m,)) -> scores (n, m)``, higher is better; picks the candidate."""

Estimator = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, ...]]
"""``(user_ids (n,), times_ms (n,), live_ids (n,)) -> (p_click (n,), watch_minutes (n,)[, log_popularity (n,)])``:
a model's predictions for each request's candidate, which replace the truth's in the policy's state
(``p_click_hat``, ``watch_hat``, their product ``score_hat``, and ``log_popularity`` when a third array is given),
so that a policy trained here sees what the ranking service will feed it. Outcomes (clicks, watch time, exits)
still come from the truth."""

BASE_FEATURES: tuple[str, ...] = (
    "p_click_hat",
    "watch_hat",
    "score_hat",
    "log_popularity",
    "fatigue",
    "request_index",
    "hour_sin",
    "hour_cos",
    "has_candidate",
)
"""Feature columns before the ``group_<g>`` one-hot columns; their indices do not depend on ``n_groups``."""

TRUTH_FILES: tuple[str, ...] = (
    "users.parquet",
    "streamers.parquet",
    "rooms.parquet",
    "exposures.parquet",
    "meta.json",
)
"""Files of ``<data_dir>/truth/`` the environment reads."""

# Context terms of the generator's click logit (recsys.data.synthetic._click_logit_no_bias); the factor, taste and
# popularity weights are read from truth/meta.json. tests/recsys/feed/test_env.py checks the reconstruction against
# truth/exposures.parquet.
_EVENING_HOURS = (19, 20, 21, 22)
_EVENING_EFFECT = 0.2
_ROOM_AGE_WEIGHT = 0.25
_ROOM_AGE_PEAK_MINUTES = 20.0
_NON_STANDARD_LIVE_TYPE = -0.2

# CRN stream ids (see the module docstring)
_K_START, _K_CLOCK, _K_VIDEO, _K_NOISE, _K_ACTION, _K_CLICK, _K_ENGAGE, _K_WATCH, _K_EXIT = range(9)

_LOG_FORMAT_VERSION = "1"


def feature_names(n_groups: int) -> tuple[str, ...]:
    """Names of the observation columns: :data:`BASE_FEATURES` then ``group_0 .. group_{n_groups-1}``."""
    return BASE_FEATURES + tuple(f"group_{g}" for g in range(n_groups))


def n_groups_of(names: Sequence[str]) -> int:
    """The ``n_groups`` of a feature layout: ``names`` must equal :func:`feature_names` of it (ValueError naming the
    layout otherwise)."""
    names = tuple(names)
    n = len(names) - len(BASE_FEATURES)
    if n < 0 or names != feature_names(n):
        raise ValueError(f"feature layout {list(names)} is not {list(BASE_FEATURES)} followed by group_0, "
                         "group_1, ... (recsys.feed.env.feature_names)")
    return n


def feature_index(name: str) -> int:
    """Column index of a feature name (a :data:`BASE_FEATURES` name or ``group_<g>``)."""
    if name in BASE_FEATURES:
        return BASE_FEATURES.index(name)
    if name.startswith("group_") and name[6:].isdigit():
        return len(BASE_FEATURES) + int(name[6:])
    raise ValueError(f"unknown feature {name!r}; known: {', '.join(BASE_FEATURES)}, group_<g>")


class MissingTruthError(FileNotFoundError):
    """The dataset directory has no (complete) ``truth/``: the environment needs the world's ground truth."""


@dataclass(frozen=True)
class FeedEnvConfig:
    """Parameters of the environment; the defaults follow the allocation brief (section 8.2) where it gives one.

    Attributes:
        horizon: H, the maximum number of requests per session.
        gamma: discount of ``RolloutResult.value`` / ``cost`` (0.95, the brief's default).
        session_gap_minutes: real exposures further apart than this start a new real session (skeleton).
        request_gap_seconds: mean of the exponential gap between consecutive feed requests.
        n_groups: number of user-activity groups (quantile tiers of truth ``activity``).
        video_mean_seconds: mean short-video time of a slot per group (least active first); length ``n_groups``.
        video_shape: integer Gamma shape k_v of the short-video time.
        fatigue_click: kappa_f, click-logit penalty per unit of fatigue.
        fatigue_minutes: T_f, decay time of fatigue.
        exit_bias: b0 of the exit hazard, ``sigmoid(b0)`` per request without insertions. The default -3 gives,
            on the tiny synthetic twin, sessions of about 19 requests without insertions and about 13 requests with
            3.7 insertions under :meth:`FeedEnv.default_logging_policy`, close to the 4.3 live exposures of a real
            session; :meth:`FeedEnv.calibrate_exit_bias` fits it to a target length instead.
        exit_fatigue: b1, exit-logit increase per unit of fatigue (after the current insertion).
        exit_unclicked: b2, exit-logit increase after an inserted room that was not clicked.
        context_noise_sd: sd of the per-request click-logit noise; ``None`` reads it from truth/meta.json.
        engaged_bias, engaged_slope: engaged-watch probability ``sigmoid(bias + slope * z)``.
        engaged_median_minutes, engaged_sigma: engaged log-normal watch time.
        bounce_median_minutes, bounce_sigma: bounce log-normal watch time.
        watch_cap_minutes: clip of a single watch (the room's true end clips it too).
        chunk_sessions: sessions simulated together (bounds memory; results do not depend on it).
    """

    horizon: int = 50
    gamma: float = 0.95
    session_gap_minutes: float = 30.0
    request_gap_seconds: float = 30.0
    n_groups: int = 3
    video_mean_seconds: tuple[float, ...] = (8.0, 12.0, 18.0)
    video_shape: int = 2
    fatigue_click: float = 0.3
    fatigue_minutes: float = 10.0
    exit_bias: float = -3.0
    exit_fatigue: float = 0.2
    exit_unclicked: float = 0.5
    context_noise_sd: float | None = None
    engaged_bias: float = -1.3
    engaged_slope: float = 1.0
    engaged_median_minutes: float = 10.0
    engaged_sigma: float = 1.5
    bounce_median_minutes: float = 0.05
    bounce_sigma: float = 0.8
    watch_cap_minutes: float = 180.0
    chunk_sessions: int = 4096

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        if self.n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {self.n_groups}")
        object.__setattr__(self, "video_mean_seconds", tuple(float(v) for v in self.video_mean_seconds))
        if len(self.video_mean_seconds) != self.n_groups:
            raise ValueError(
                f"video_mean_seconds needs one mean per group ({self.n_groups}), got {self.video_mean_seconds}"
            )
        if int(self.video_shape) != self.video_shape or self.video_shape < 1:
            raise ValueError(f"video_shape must be an integer >= 1, got {self.video_shape}")
        for name in ("request_gap_seconds", "fatigue_minutes", "session_gap_minutes", "watch_cap_minutes",
                     "engaged_median_minutes", "bounce_median_minutes", "engaged_sigma", "bounce_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.chunk_sessions < 1:
            raise ValueError(f"chunk_sessions must be >= 1, got {self.chunk_sessions}")

    @property
    def pure_bandit(self) -> bool:
        """True when actions have no effect on later steps (kappa_f = b1 = b2 = 0)."""
        return self.fatigue_click == 0 and self.exit_fatigue == 0 and self.exit_unclicked == 0


# --------------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class RolloutResult:
    """True performance of a policy: means over sessions, and the per-session arrays (n_sessions,).

    Attributes:
        value: mean discounted live watch minutes per session, ``mean_s sum_i gamma^i r_{s,i}``.
        cost: mean discounted short-video minutes given up per session, ``mean_s sum_i gamma^i c_{s,i}``.
        alloc_ratio: insertions / decisions over all requests of all sessions.
        mean_length: mean number of requests per session.
        exit_rate: share of sessions ended by an exit (the rest reached the horizon).
        total_reward, total_cost: undiscounted means per session.
        app_time: mean undiscounted app minutes per session (live + short video watched).
        gamma, n_sessions, seed, policy_name: the run.
        returns, costs: discounted reward / cost per session.
        total_rewards, total_costs, lengths, inserts, clicks, app_times, exited: per session.
        user_ids, start_times: each session's real start.
    """

    value: float
    cost: float
    alloc_ratio: float
    mean_length: float
    exit_rate: float
    total_reward: float
    total_cost: float
    app_time: float
    gamma: float
    n_sessions: int
    seed: int
    policy_name: str
    returns: np.ndarray
    costs: np.ndarray
    total_rewards: np.ndarray
    total_costs: np.ndarray
    lengths: np.ndarray
    inserts: np.ndarray
    clicks: np.ndarray
    app_times: np.ndarray
    exited: np.ndarray
    user_ids: np.ndarray
    start_times: np.ndarray

    @property
    def value_se(self) -> float:
        """Standard error of ``value`` over sessions."""
        return float(self.returns.std(ddof=1) / math.sqrt(self.n_sessions)) if self.n_sessions > 1 else float("nan")

    @property
    def value_ci95(self) -> tuple[float, float]:
        """Normal 95 % interval of ``value``."""
        return self.value - 1.96 * self.value_se, self.value + 1.96 * self.value_se


_LOG_ARRAYS = ("session_id", "step", "user_id", "timestamp", "live_id", "group", "action", "propensity",
               "prob_insert", "reward", "cost", "click", "done")


@dataclass
class LoggedData:
    """A decision log in the format of :mod:`recsys.ope`: one row per decision, sessions contiguous, steps 0, 1, ...

    Attributes (arrays of length n unless noted):
        session_id: int64 session number (the CRN index s).
        step: int64 request index within the session.
        user_id, timestamp, live_id: the request (``live_id`` 0 when there was no candidate).
        group: int64 activity group of the user.
        features: (n, F) float64 observation, columns ``feature_names``.
        action: int8, 1 = live room inserted.
        propensity: mu(a | x) of the logged action, recorded at decision time.
        prob_insert: mu(1 | x) of the logging policy (0 where there was no candidate).
        reward: live watch minutes; cost: short-video minutes given up.
        click: bool, the inserted room was clicked.
        done: bool, last row of its session (exit or horizon).
        feature_names: the F column names; policy_name: the logging policy; gamma: the environment's discount.
    """

    session_id: np.ndarray
    step: np.ndarray
    user_id: np.ndarray
    timestamp: np.ndarray
    live_id: np.ndarray
    group: np.ndarray
    features: np.ndarray
    action: np.ndarray
    propensity: np.ndarray
    prob_insert: np.ndarray
    reward: np.ndarray
    cost: np.ndarray
    click: np.ndarray
    done: np.ndarray
    feature_names: tuple[str, ...] = field(default_factory=tuple)
    policy_name: str = ""
    gamma: float = 0.95

    def __len__(self) -> int:
        return int(self.session_id.size)

    @property
    def n_sessions(self) -> int:
        """Number of sessions (rows with step 0)."""
        return int(np.count_nonzero(self.step == 0))

    def target_prob_insert(self, policy: Policy) -> np.ndarray:
        """pi(1 | x_i) of another policy at the logged states, with the environment's rule (0 without candidate)."""
        p = _check_prob(policy(self.features), len(self), policy)
        return p * self.features[:, feature_index("has_candidate")]

    def target_propensity(self, policy: Policy) -> np.ndarray:
        """pi(a_i | x_i): the target policy's probability of each logged action (``target_propensity`` of OPE)."""
        p = self.target_prob_insert(policy)
        return np.where(self.action == 1, p, 1.0 - p)

    def next_row(self) -> np.ndarray:
        """Index of the next row of the same session, -1 on ``done`` rows (for FQE's next states)."""
        nxt = np.arange(1, len(self) + 1, dtype=np.int64)
        nxt[self.done] = -1
        return nxt

    def to_frame(self) -> pl.DataFrame:
        """One row per decision; feature columns are prefixed ``x_`` in ``feature_names`` order."""
        cols: dict[str, object] = {name: getattr(self, name) for name in _LOG_ARRAYS}
        for j, name in enumerate(self.feature_names):
            cols[f"x_{name}"] = self.features[:, j]
        return pl.DataFrame(cols)

    def write_parquet(self, path: str | Path) -> None:
        """Write :meth:`to_frame` with the feature names, policy name and gamma in the file metadata."""
        meta = {
            "feed_log_version": _LOG_FORMAT_VERSION,
            "feature_names": json.dumps(list(self.feature_names)),
            "policy_name": self.policy_name,
            "gamma": repr(float(self.gamma)),
        }
        self.to_frame().write_parquet(path, metadata=meta)

    @classmethod
    def read_parquet(cls, path: str | Path) -> "LoggedData":
        """Read a log written by :meth:`write_parquet`."""
        meta = pl.read_parquet_metadata(path)
        if "feed_log_version" not in meta:
            raise ValueError(f"{path}: not a feed decision log (no feed_log_version in the parquet metadata)")
        names = tuple(json.loads(meta["feature_names"]))
        df = pl.read_parquet(path)
        arrays = {name: df[name].to_numpy() for name in _LOG_ARRAYS}
        feats = np.column_stack([df[f"x_{n}"].to_numpy() for n in names]) if names else np.empty((df.height, 0))
        return cls(**arrays, features=np.ascontiguousarray(feats, dtype=np.float64), feature_names=names,
                   policy_name=meta.get("policy_name", ""), gamma=float(meta.get("gamma", "0.95")))


# --------------------------------------------------------------------------------------------------------- helpers
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def _norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF via the Abramowitz-Stegun 7.1.26 erf (absolute error < 1.5e-7)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-z * z)
    return 0.5 * (1.0 + np.sign(x) * erf)


def _lognormal_mean_capped(median: float, sigma: float, cap: np.ndarray) -> np.ndarray:
    """E[min(X, cap)] for X ~ LogNormal(log median, sigma), elementwise over cap > 0."""
    mu = math.log(median)
    log_cap = np.log(np.maximum(cap, 1e-12))
    full = math.exp(mu + 0.5 * sigma * sigma)
    return full * _norm_cdf((log_cap - mu - sigma * sigma) / sigma) + cap * (1.0 - _norm_cdf((log_cap - mu) / sigma))


def _check_prob(p: object, n: int, policy: object) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"policy {policy!r} returned shape {arr.shape}, expected ({n},)")
    if not np.isfinite(arr).all():
        raise ValueError(f"policy {policy!r} returned a NaN or infinite probability")
    if (arr < 0).any() or (arr > 1).any():
        bad = arr[(arr < 0) | (arr > 1)][0]
        raise ValueError(f"policy {policy!r} returned probability {bad!r} outside [0, 1]")
    return arr


def _policy_name(policy: object) -> str:
    return getattr(policy, "name", None) or repr(policy)


def _id_lookup(ids: np.ndarray) -> np.ndarray:
    """Array ``lut`` with ``lut[id] = row`` (-1 for unknown ids)."""
    lut = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    lut[ids] = np.arange(ids.size)
    return lut


def _rows_of(lut: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    ok = (ids >= 0) & (ids < lut.size)
    rows = np.full(ids.shape, -1, dtype=np.int64)
    rows[ok] = lut[ids[ok]]
    if (rows < 0).any():
        raise ValueError(f"unknown {what} {ids[rows < 0].ravel()[0]} (not in the truth / dataset)")
    return rows


@dataclass
class _Skeleton:
    """Everything of sessions [s0, s1) that does not depend on the policy (arrays (n,) or (n, H))."""

    s0: int
    user_row: np.ndarray  # (n,)
    user_id: np.ndarray  # (n,)
    group: np.ndarray  # (n,)
    times: np.ndarray  # (n, H) int64 ms
    gap_min: np.ndarray  # (n, H) minutes to the next request
    video_min: np.ndarray  # (n, H) V
    noise: np.ndarray  # (n, H) eps
    watch_z: np.ndarray  # (n, H)
    u_action: np.ndarray
    u_click: np.ndarray
    u_engage: np.ndarray
    u_exit: np.ndarray
    live_id: np.ndarray  # (n, H), 0 = no candidate
    has: np.ndarray  # (n, H) bool
    logit: np.ndarray  # (n, H) noiseless click logit f (0 where no candidate)
    remaining_min: np.ndarray  # (n, H) minutes to the room's true end, capped
    p_hat: np.ndarray  # (n, H) candidate features (0 where no candidate)
    w_hat: np.ndarray
    log_pop: np.ndarray
    hour_sin: np.ndarray
    hour_cos: np.ndarray


# --------------------------------------------------------------------------------------------------------- env
class FeedEnv:
    """Seeded semi-synthetic mixed-feed environment (see the module docstring for the generative story and CRN).

    Args:
        data_dir: a KuaiLive-format directory (``click.csv``, ``negative.csv``, ``room.csv`` ...) with ``truth/``.
        config: :class:`FeedEnvConfig` (defaults when ``None``).
        users: optional user ids whose real sessions form the skeleton (e.g. the evaluation split).
        scorer: optional candidate scorer replacing the truth's logit for picking the top live room
            (:data:`Scorer`); features and outcomes still come from the truth.
        estimator: optional model predictions (:data:`Estimator`) for the candidate's ``p_click_hat``,
            ``watch_hat`` (and ``log_popularity``) state columns (the served ones, so that training matches
            serving); outcomes still come from the truth.
        cache_dir: optional Parquet cache for the CSV loads.
        cache_chunks: how many simulated chunks of skeleton to keep in memory (CRN reuse across policies).

    Raises:
        MissingTruthError: when a file of :data:`TRUTH_FILES` is missing, naming it.
    """

    def __init__(
        self,
        data_dir: str | Path,
        config: FeedEnvConfig | None = None,
        *,
        users: Sequence[int] | np.ndarray | None = None,
        scorer: Scorer | None = None,
        estimator: Estimator | None = None,
        cache_dir: str | Path | None = None,
        cache_chunks: int = 2,
    ) -> None:
        self.data_dir = Path(data_dir)
        truth = self.data_dir / "truth"
        for name in TRUTH_FILES:
            if not (truth / name).is_file():
                raise MissingTruthError(
                    f"{truth / name} not found: the feed environment needs the world's truth "
                    f"({', '.join('truth/' + n for n in TRUTH_FILES)}); generate a synthetic twin with "
                    "recsys.data.synthetic.generate or write a truth fitted on KuaiLive in the same format"
                )
        self.scorer = scorer
        self.estimator = estimator
        self._cache_chunks = int(cache_chunks)
        self._load_truth(truth)
        self._load_data(cache_dir, users)
        self.config = config or FeedEnvConfig()
        self._configure()

    # ------------------------------------------------------------------------------------------------ loading
    def _load_truth(self, truth: Path) -> None:
        meta = json.loads((truth / "meta.json").read_text())
        synth = meta.get("config", {})
        for key in ("click_bias_b0",):
            if key not in meta:
                raise MissingTruthError(f"{truth / 'meta.json'}: no {key!r}")
        self.click_bias = float(meta["click_bias_b0"])
        self.affinity_weight = float(synth.get("affinity_weight", 1.6))
        self.popularity_weight = float(synth.get("popularity_weight", 0.25))
        self.truth_noise_sd = float(synth.get("context_noise_sd", 0.3))

        users = pl.read_parquet(truth / "users.parquet").sort("user_id")
        fcols = sorted((c for c in users.columns if c[:1] == "f" and c[1:].isdigit()), key=lambda c: int(c[1:]))
        self.n_factors = len(fcols)
        self.user_ids = users["user_id"].to_numpy().astype(np.int64)
        self._user_lut = _id_lookup(self.user_ids)
        self.user_factors = users.select(fcols).to_numpy().astype(np.float64)
        dcols = [f"drift{c[1:]}" for c in fcols]
        self.user_drift = (users.select(dcols).to_numpy().astype(np.float64) if all(c in users.columns for c in dcols)
                           else np.zeros_like(self.user_factors))
        self.categories = tuple(c[len("taste_"):] for c in users.columns if c.startswith("taste_"))
        self.user_taste = users.select([f"taste_{c}" for c in self.categories]).to_numpy().astype(np.float64)
        self.user_activity = users["activity"].to_numpy().astype(np.float64)

        streamers = pl.read_parquet(truth / "streamers.parquet").sort("streamer_id")
        self.streamer_ids = streamers["streamer_id"].to_numpy().astype(np.int64)
        self._streamer_lut = _id_lookup(self.streamer_ids)
        self.streamer_factors = streamers.select(fcols).to_numpy().astype(np.float64)
        self.streamer_popularity = streamers["popularity"].to_numpy().astype(np.float64)
        cat_index = {c: i for i, c in enumerate(self.categories)}
        cats = streamers["category"].to_list()
        unknown = sorted({c for c in cats if c not in cat_index})
        if unknown:
            raise ValueError(f"{truth / 'streamers.parquet'}: categories {unknown} have no taste_ column in users")
        self.streamer_category = np.array([cat_index[c] for c in cats], dtype=np.int64)

        p = pl.read_parquet(truth / "exposures.parquet", columns=["p_click"])["p_click"].to_numpy().astype(np.float64)
        p = np.clip(p, 1e-7, 1 - 1e-7)
        logit = np.log(p) - np.log1p(-p)
        # the generator standardises the (noisy) logit over all exposures for the engaged share
        self.logit_mean = float(logit.mean())
        self.logit_std = float(logit.std()) or 1.0
        self._true_end = pl.read_parquet(truth / "rooms.parquet", columns=["live_id", "true_end"])

    def _load_data(self, cache_dir: str | Path | None, users: Sequence[int] | np.ndarray | None) -> None:
        data = load_kuailive(self.data_dir, tables=["click", "negative", "room"], cache_dir=cache_dir,
                             with_embeddings=False)
        rooms = (
            data.rooms.select("live_id", "streamer_id", "start_timestamp", "end_timestamp", "live_type")
            .join(self._true_end, on="live_id", how="left")
            .with_columns(pl.col("true_end").fill_null(pl.col("end_timestamp")))
            .sort("start_timestamp", "live_id")
        )
        self.index = LiveIndex.from_rooms(rooms)
        if not np.array_equal(self.index.live_id, rooms["live_id"].to_numpy()):
            raise AssertionError("LiveIndex row order differs from the (start, live_id) room order")
        self.room_streamer_row = _rows_of(self._streamer_lut, rooms["streamer_id"].to_numpy(), "streamer_id")
        self.room_start = rooms["start_timestamp"].to_numpy().astype(np.int64)
        self.room_true_end = rooms["true_end"].to_numpy().astype(np.int64)
        self.room_live_type = rooms["live_type"].to_numpy().astype(np.int64)
        self._room_lut = _id_lookup(self.index.live_id)
        self._room_log_pop = np.log(self.streamer_popularity[self.room_streamer_row])
        self._room_cat = self.streamer_category[self.room_streamer_row]
        self._room_sf = self.streamer_factors[self.room_streamer_row]
        self._room_const = (self.popularity_weight * self._room_log_pop
                            + np.where(self.room_live_type == 1, 0.0, _NON_STANDARD_LIVE_TYPE))

        ev = pl.concat([data.click.select("user_id", "timestamp"), data.negative.select("user_id", "timestamp")])
        ev = ev.sort("user_id", "timestamp")
        uid = ev["user_id"].to_numpy().astype(np.int64)
        ts = ev["timestamp"].to_numpy().astype(np.int64)
        keep = np.isin(uid, self.user_ids)  # users without truth cannot be simulated
        if users is not None:
            keep &= np.isin(uid, np.asarray(users, dtype=np.int64))
        uid, ts = uid[keep], ts[keep]
        if uid.size == 0:
            raise ValueError("no exposures of the selected users: the session skeleton is empty")
        self._exposure_user, self._exposure_t = uid, ts
        self.skeleton_users = np.unique(uid)

    def _configure(self) -> None:
        cfg = self.config
        self.noise_sd = self.truth_noise_sd if cfg.context_noise_sd is None else float(cfg.context_noise_sd)
        self.feature_names = feature_names(cfg.n_groups)
        # activity groups: quantile tiers over all truth users (0 = least active)
        edges = np.quantile(self.user_activity, np.arange(1, cfg.n_groups) / cfg.n_groups)
        self.user_group = np.searchsorted(edges, self.user_activity, side="right").astype(np.int64)
        self.group_edges = edges
        # real sessions: gaps over session_gap_minutes, a new user or a new CST day start a session
        uid, ts = self._exposure_user, self._exposure_t
        start = np.ones(uid.size, dtype=bool)
        start[1:] = ((uid[1:] != uid[:-1]) | (ts[1:] - ts[:-1] > cfg.session_gap_minutes * MS_PER_MINUTE)
                     | (cst_day(ts[1:]) != cst_day(ts[:-1])))
        first = np.flatnonzero(start)
        self.start_user_row = self._user_lut[uid[first]]
        self.start_time = ts[first]
        lengths = np.diff(np.append(first, uid.size))
        self.real_session_length = float(np.minimum(lengths, cfg.horizon).mean())
        self._cache: OrderedDict[tuple[int, int, int], _Skeleton] = OrderedDict()

    def with_config(self, **changes: object) -> "FeedEnv":
        """A copy of this environment with some config fields changed; the loaded data are shared."""
        new = copy.copy(self)
        new.config = replace(self.config, **changes)
        new._configure()
        return new

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    # ------------------------------------------------------------------------------------------------ truth
    def _frac(self, t: np.ndarray) -> np.ndarray:
        return (t - WINDOW_START_MS) / (N_WINDOW_DAYS * MS_PER_DAY) - 0.5

    def _request_const(self, t: np.ndarray) -> np.ndarray:
        return self.click_bias + _EVENING_EFFECT * np.isin(cst_hour(t), _EVENING_HOURS)

    def _room_age(self, age_ms: np.ndarray) -> np.ndarray:
        age_min = np.maximum(age_ms, 0) / MS_PER_MINUTE
        return -_ROOM_AGE_WEIGHT * np.abs(np.log1p(age_min) - math.log1p(_ROOM_AGE_PEAK_MINUTES))

    def _logit_matrix(self, u: np.ndarray, t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Noiseless click logit (with b0, no fatigue) of requests (u, t) (n,) against rooms ``rows`` (m,)."""
        uf = self.user_factors[u] + self._frac(t)[:, None] * self.user_drift[u]
        aff = uf @ self._room_sf[rows].T
        return (
            self.affinity_weight * math.sqrt(self.n_factors) * aff
            + self.user_taste[u][:, self._room_cat[rows]]
            + self._room_const[rows][None, :]
            + self._request_const(t)[:, None]
            + self._room_age(t[:, None] - self.room_start[rows][None, :])
        )

    def _logit_pairs(self, u: np.ndarray, t: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Noiseless click logit of aligned (user row, time, room row) triples (n,)."""
        uf = self.user_factors[u] + self._frac(t)[:, None] * self.user_drift[u]
        aff = np.einsum("nd,nd->n", uf, self._room_sf[r])
        return (
            self.affinity_weight * math.sqrt(self.n_factors) * aff
            + self.user_taste[u, self._room_cat[r]]
            + self._room_const[r]
            + self._request_const(t)
            + self._room_age(t - self.room_start[r])
        )

    def true_click_logit(self, user_ids: np.ndarray, live_ids: np.ndarray, times: np.ndarray) -> np.ndarray:
        """The truth's click logit ``f(u, room, t)`` (intercept included; no context noise, no fatigue)."""
        u = _rows_of(self._user_lut, user_ids, "user_id")
        r = _rows_of(self._room_lut, live_ids, "live_id")
        return self._logit_pairs(u, np.asarray(times, dtype=np.int64), r)

    def expected_watch(self, logit: np.ndarray, remaining_min: np.ndarray) -> np.ndarray:
        """The truth's E[W | click] in minutes, given the click logit and the minutes left in the room."""
        cfg = self.config
        q = _sigmoid(cfg.engaged_bias + cfg.engaged_slope * (logit - self.logit_mean) / self.logit_std)
        cap = np.minimum(remaining_min, cfg.watch_cap_minutes)
        engaged = _lognormal_mean_capped(cfg.engaged_median_minutes, cfg.engaged_sigma, cap)
        bounce = _lognormal_mean_capped(cfg.bounce_median_minutes, cfg.bounce_sigma, cap)
        return np.where(cap > 0, q * engaged + (1 - q) * bounce, 0.0)

    def _candidates(self, u: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Room row of the top live candidate of each request (n,), -1 where no room is live."""
        idx = self.index
        out = np.full(u.size, -1, dtype=np.int64)
        b = (t - idx.origin) // idx.bucket_ms
        valid = np.flatnonzero((b >= 0) & (b < idx.bucket_offsets.size - 1))
        order = valid[np.argsort(b[valid], kind="stable")]
        bs = b[order]
        cuts = np.flatnonzero(np.diff(bs)) + 1
        for grp in np.split(order, cuts) if order.size else []:
            bucket = int(b[grp[0]])
            rows = idx.bucket_rows[idx.bucket_offsets[bucket]: idx.bucket_offsets[bucket + 1]]
            if rows.size == 0:
                continue
            step = max(1, 2_000_000 // rows.size)
            for lo in range(0, grp.size, step):
                req = grp[lo: lo + step]
                tt = t[req]
                live = (self.room_start[rows][None, :] <= tt[:, None]) & (idx.end[rows][None, :] > tt[:, None])
                if self.scorer is None:
                    score = self._logit_matrix(u[req], tt, rows)
                else:
                    score = np.asarray(self.scorer(self.user_ids[u[req]], tt, idx.live_id[rows]), dtype=np.float64)
                    if score.shape != (req.size, rows.size):
                        raise ValueError(f"scorer returned shape {score.shape}, expected {(req.size, rows.size)}")
                score = np.where(live, score, -np.inf)
                best = np.argmax(score, axis=1)
                ok = live.any(axis=1)
                out[req[ok]] = rows[best[ok]]
        return out

    def _estimate(self, u: np.ndarray, t: np.ndarray, live_ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """The estimator's (p_click, watch minutes[, log_popularity]) of user rows ``u`` for their candidates,
        checked."""
        out = self.estimator(self.user_ids[u], t, live_ids)
        if not (isinstance(out, tuple) and len(out) in (2, 3)):
            raise ValueError("the estimator must return a (p_click, watch_minutes[, log_popularity]) tuple of arrays")
        arrays = tuple(np.asarray(a, dtype=np.float64) for a in out)
        for name, a in zip(("p_click", "watch_minutes", "log_popularity"), arrays):
            if a.shape != (u.size,) or not np.isfinite(a).all():
                raise ValueError(f"estimator {name} must be {u.size} finite values, got shape {a.shape}")
        p, w = arrays[:2]
        if (p < 0).any() or (p > 1).any() or (w < 0).any():
            raise ValueError("estimator p_click must lie in [0, 1] and watch_minutes be >= 0")
        return arrays

    # ------------------------------------------------------------------------------------------------ CRN draws
    def _uniforms(self, seed: int, kind: int, s0: int, n: int, width: int, per_request: bool = True) -> np.ndarray:
        """Uniforms of sessions [s0, s0 + n): shape (n, H, width), or (n, width) for per-session kinds."""
        bitgen = np.random.PCG64(np.random.SeedSequence([int(seed), kind]))
        per_session = (self.config.horizon if per_request else 1) * width
        bitgen.advance(s0 * per_session)
        gen = np.random.Generator(bitgen)
        shape = (n, self.config.horizon, width) if per_request else (n, width)
        return gen.random(shape)

    def _normals(self, seed: int, kind: int, s0: int, n: int) -> np.ndarray:
        uu = self._uniforms(seed, kind, s0, n, 2)
        return np.sqrt(-2.0 * np.log1p(-uu[..., 0])) * np.cos(2.0 * math.pi * uu[..., 1])

    def _skeleton(self, seed: int, s0: int, s1: int) -> _Skeleton:
        key = (int(seed), int(s0), int(s1))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        cfg = self.config
        n, H = s1 - s0, cfg.horizon
        pick = self._uniforms(seed, _K_START, s0, n, 1, per_request=False)[:, 0]
        k = np.minimum((pick * self.start_time.size).astype(np.int64), self.start_time.size - 1)
        u_row = self.start_user_row[k]
        t0 = self.start_time[k]
        gap_min = -np.log1p(-self._uniforms(seed, _K_CLOCK, s0, n, 1)[..., 0]) * (cfg.request_gap_seconds / 60.0)
        times = np.empty((n, H), dtype=np.int64)
        times[:, 0] = t0
        if H > 1:
            times[:, 1:] = t0[:, None] + np.cumsum(np.round(gap_min[:, :-1] * MS_PER_MINUTE).astype(np.int64), axis=1)
        group = self.user_group[u_row]
        means = np.asarray(cfg.video_mean_seconds)[group] / 60.0  # minutes
        expo = -np.log1p(-self._uniforms(seed, _K_VIDEO, s0, n, cfg.video_shape)).sum(axis=2)
        video = expo * (means / cfg.video_shape)[:, None]
        noise = self.noise_sd * self._normals(seed, _K_NOISE, s0, n)
        watch_z = self._normals(seed, _K_WATCH, s0, n)

        flat_u = np.repeat(u_row, H)
        flat_t = times.ravel()
        room = self._candidates(flat_u, flat_t)
        has = room >= 0
        r = np.where(has, room, 0)
        logit = np.where(has, self._logit_pairs(flat_u, flat_t, r), 0.0)
        remaining = np.where(has, (self.room_true_end[r] - flat_t) / MS_PER_MINUTE, 0.0)
        remaining = np.clip(remaining, 0.0, cfg.watch_cap_minutes)
        p_hat = np.where(has, _sigmoid(logit), 0.0)
        w_hat = np.where(has, self.expected_watch(logit, remaining), 0.0)
        log_pop = np.where(has, self._room_log_pop[r], 0.0)
        if self.estimator is not None and has.any():
            est = self._estimate(flat_u[has], flat_t[has], self.index.live_id[r[has]])
            p_hat[has], w_hat[has] = est[0], est[1]
            if len(est) == 3:
                log_pop[has] = est[2]
        angle = cst_hour_angle(flat_t)
        sk = _Skeleton(
            s0=s0, user_row=u_row, user_id=self.user_ids[u_row], group=group, times=times, gap_min=gap_min,
            video_min=video, noise=noise, watch_z=watch_z,
            u_action=self._uniforms(seed, _K_ACTION, s0, n, 1)[..., 0],
            u_click=self._uniforms(seed, _K_CLICK, s0, n, 1)[..., 0],
            u_engage=self._uniforms(seed, _K_ENGAGE, s0, n, 1)[..., 0],
            u_exit=self._uniforms(seed, _K_EXIT, s0, n, 1)[..., 0],
            live_id=np.where(has, self.index.live_id[r], 0).reshape(n, H), has=has.reshape(n, H),
            logit=logit.reshape(n, H), remaining_min=remaining.reshape(n, H),
            p_hat=p_hat.reshape(n, H), w_hat=w_hat.reshape(n, H),
            log_pop=log_pop.reshape(n, H),
            hour_sin=np.sin(angle).reshape(n, H), hour_cos=np.cos(angle).reshape(n, H),
        )
        self._cache[key] = sk
        while len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return sk

    def _chunks(self, n_sessions: int) -> list[tuple[int, int]]:
        if n_sessions < 1:
            raise ValueError(f"n_sessions must be >= 1, got {n_sessions}")
        c = self.config.chunk_sessions
        return [(lo, min(n_sessions, lo + c)) for lo in range(0, n_sessions, c)]

    # ------------------------------------------------------------------------------------------------ simulation
    def observe(self, n_sessions: int, seed: int = 0, step: int = 0, fatigue: float | np.ndarray = 0.0) -> np.ndarray:
        """Observation (n_sessions, F) of request ``step`` of sessions 0 .. n_sessions - 1 of ``seed``.

        The candidate, time and group columns are those every policy sees at that request (they do not depend on
        the actions); ``fatigue`` is set to the given value (0: no earlier insertion) since it does. During
        :meth:`rollout` and :meth:`log` the policy receives exactly these rows, with its own fatigue, for the
        sessions still active.
        """
        if not 0 <= step < self.config.horizon:
            raise ValueError(f"step must lie in [0, {self.config.horizon}), got {step}")
        out = np.empty((n_sessions, self.n_features))
        fat = np.broadcast_to(np.asarray(fatigue, dtype=np.float64), (n_sessions,))
        for lo, hi in self._chunks(n_sessions):
            rows = np.arange(hi - lo)
            out[lo:hi] = self._observe(self._skeleton(seed, lo, hi), rows, step, fat[lo:hi])
        return out

    def _observe(self, sk: _Skeleton, rows: np.ndarray, step: int, fatigue: np.ndarray) -> np.ndarray:
        """Feature matrix (len(rows), F) of sessions ``rows`` of a skeleton chunk at request ``step``."""
        x = np.zeros((rows.size, self.n_features))
        x[:, 0] = p = sk.p_hat[rows, step]
        x[:, 1] = w = sk.w_hat[rows, step]
        x[:, 2] = p * w
        x[:, 3] = sk.log_pop[rows, step]
        x[:, 4] = fatigue
        x[:, 5] = step
        x[:, 6] = sk.hour_sin[rows, step]
        x[:, 7] = sk.hour_cos[rows, step]
        x[:, 8] = sk.has[rows, step]
        x[np.arange(rows.size), len(BASE_FEATURES) + sk.group[rows]] = 1.0
        return x

    def _simulate(self, policy: Policy, sk: _Skeleton, record: bool, exit_bias: float | None = None) -> dict:
        cfg = self.config
        n, H = sk.times.shape
        b0 = cfg.exit_bias if exit_bias is None else exit_bias
        alive = np.ones(n, dtype=bool)
        fatigue = np.zeros(n)
        disc_r, disc_c, tot_r, tot_c, app = (np.zeros(n) for _ in range(5))
        length, inserts, clicks = (np.zeros(n, dtype=np.int64) for _ in range(3))
        exited = np.zeros(n, dtype=bool)
        rec: list[dict[str, np.ndarray]] = []
        mu_e, mu_b = math.log(cfg.engaged_median_minutes), math.log(cfg.bounce_median_minutes)
        for i in range(H):
            idx = np.flatnonzero(alive)
            if idx.size == 0:
                break
            f_i = fatigue[idx]
            x = self._observe(sk, idx, i, f_i)
            has = sk.has[idx, i]
            p = _check_prob(policy(x), idx.size, policy) * has
            a = sk.u_action[idx, i] < p
            noisy = sk.logit[idx, i] + sk.noise[idx, i]
            click = a & (sk.u_click[idx, i] < _sigmoid(noisy - cfg.fatigue_click * f_i))
            engaged = sk.u_engage[idx, i] < _sigmoid(
                cfg.engaged_bias + cfg.engaged_slope * (noisy - self.logit_mean) / self.logit_std)
            z = sk.watch_z[idx, i]
            watch = np.where(engaged, np.exp(mu_e + cfg.engaged_sigma * z), np.exp(mu_b + cfg.bounce_sigma * z))
            watch = np.minimum(watch, sk.remaining_min[idx, i])
            r = np.where(click, watch, 0.0)
            v = sk.video_min[idx, i]
            c = np.where(a, v, 0.0)
            f_after = f_i + a
            hazard = _sigmoid(b0 + cfg.exit_fatigue * f_after + cfg.exit_unclicked * (a & ~click))
            leave = sk.u_exit[idx, i] < hazard
            done = leave | (i == H - 1)
            g = cfg.gamma ** i
            disc_r[idx] += g * r
            disc_c[idx] += g * c
            tot_r[idx] += r
            tot_c[idx] += c
            app[idx] += r + np.where(a, 0.0, v)
            length[idx] += 1
            inserts[idx] += a
            clicks[idx] += click
            exited[idx[leave]] = True
            fatigue[idx] = f_after * np.exp(-sk.gap_min[idx, i] / cfg.fatigue_minutes)
            alive[idx[done]] = False
            if record:
                rec.append({
                    "session_id": sk.s0 + idx, "step": np.full(idx.size, i, dtype=np.int64),
                    "user_id": sk.user_id[idx], "timestamp": sk.times[idx, i], "live_id": sk.live_id[idx, i],
                    "group": sk.group[idx], "features": x, "action": a.astype(np.int8),
                    "propensity": np.where(a, p, 1.0 - p), "prob_insert": p, "reward": r, "cost": c,
                    "click": click, "done": done,
                })
        out = {"returns": disc_r, "costs": disc_c, "total_rewards": tot_r, "total_costs": tot_c,
               "app_times": app, "lengths": length, "inserts": inserts, "clicks": clicks, "exited": exited,
               "user_ids": sk.user_id, "start_times": sk.times[:, 0]}
        if record:
            cat = {k: np.concatenate([d[k] for d in rec]) for k in rec[0]}
            order = np.lexsort((cat["step"], cat["session_id"]))
            out["log"] = {k: v[order] for k, v in cat.items()}
        return out

    def _run(self, policy: Policy, n_sessions: int, seed: int, record: bool,
             exit_bias: float | None = None) -> list[dict]:
        return [self._simulate(policy, self._skeleton(seed, lo, hi), record, exit_bias)
                for lo, hi in self._chunks(n_sessions)]

    def rollout(self, policy: Policy, n_sessions: int, seed: int = 0) -> RolloutResult:
        """Roll ``policy`` through sessions 0 .. n_sessions - 1 of ``seed``: its true value, cost and allocation.

        Stochastic policies act with the CRN action uniform of each step (``a = 1[U < prob_insert]``).
        """
        parts = self._run(policy, n_sessions, seed, record=False)
        arr = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        decisions = int(arr["lengths"].sum())
        return RolloutResult(
            value=float(arr["returns"].mean()), cost=float(arr["costs"].mean()),
            alloc_ratio=float(arr["inserts"].sum() / decisions), mean_length=float(arr["lengths"].mean()),
            exit_rate=float(arr["exited"].mean()), total_reward=float(arr["total_rewards"].mean()),
            total_cost=float(arr["total_costs"].mean()), app_time=float(arr["app_times"].mean()),
            gamma=self.config.gamma, n_sessions=int(n_sessions), seed=int(seed), policy_name=_policy_name(policy),
            **arr,
        )

    def log(self, policy: Policy, n_sessions: int, seed: int = 0) -> LoggedData:
        """Run the (logging) ``policy`` and return its decision log with the exact propensities."""
        parts = self._run(policy, n_sessions, seed, record=True)
        cols = {k: np.concatenate([p["log"][k] for p in parts]) for k in parts[0]["log"]}
        return LoggedData(**cols, feature_names=self.feature_names, policy_name=_policy_name(policy),
                          gamma=self.config.gamma)

    # ------------------------------------------------------------------------------------------------ helpers
    def calibrate_exit_bias(self, policy: Policy, target_length: float | None = None, n_sessions: int = 2000,
                            seed: int = 0, tol: float = 1e-3) -> float:
        """Exit intercept b0 giving ``policy`` a mean session length of ``target_length`` (bisection).

        Under CRN the mean length is non-increasing in b0 (each session's actions up to its exit are the same,
        and every hazard grows with b0), so bisection converges. ``target_length`` defaults to the real mean number
        of exposures per session of the skeleton (capped at the horizon). Use ``env.with_config(exit_bias=b0)``.
        """
        target = self.real_session_length if target_length is None else float(target_length)
        if not 1.0 <= target <= self.config.horizon:
            raise ValueError(f"target_length must lie in [1, horizon={self.config.horizon}], got {target}")

        def mean_length(b0: float) -> float:
            parts = self._run(policy, n_sessions, seed, record=False, exit_bias=b0)
            return float(np.concatenate([p["lengths"] for p in parts]).mean())

        lo, hi = -15.0, 15.0
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            if mean_length(mid) > target:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def default_logging_policy(self, alloc_ratio: float = 0.3, eps: float = 0.2, feature: str = "score_hat",
                               n_sessions: int = 1000, seed: int = 0):
        """The default logging policy: epsilon-greedy around a threshold on ``feature``.

        The threshold theta is found by bisection over the quantiles of ``feature`` (requests with a candidate
        visited by a constant ``alloc_ratio`` policy) so that the policy's own rollout on ``n_sessions`` sessions of
        ``seed`` has an allocation ratio of about ``alloc_ratio`` (the visited states depend on the policy through
        fatigue and exits, so a plain quantile would miss it). Propensities lie in ``{eps / 2, 1 - eps / 2}``.
        """
        from recsys.feed.policies import constant, epsilon_greedy, threshold

        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        if not eps / 2 < alloc_ratio < 1 - eps / 2:
            raise ValueError(f"alloc_ratio {alloc_ratio} is not reachable with eps {eps}")
        states = self.log(constant(alloc_ratio), n_sessions, seed)
        x = states.features[states.features[:, feature_index("has_candidate")] > 0, feature_index(feature)]
        lo, hi = 0.0, 1.0  # quantile levels: the allocation ratio decreases with the level
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            ratio = self.rollout(epsilon_greedy(threshold(feature, float(np.quantile(x, mid))), eps),
                                 n_sessions, seed).alloc_ratio
            if ratio > alloc_ratio:
                lo = mid
            else:
                hi = mid
        return epsilon_greedy(threshold(feature, float(np.quantile(x, 0.5 * (lo + hi)))), eps)

    def describe(self) -> dict:
        """Config and truth constants of this environment (for run logs / MLflow)."""
        return {
            "config": {f.name: getattr(self.config, f.name) for f in fields(self.config)},
            "data_dir": str(self.data_dir),
            "click_bias": self.click_bias,
            "affinity_weight": self.affinity_weight,
            "popularity_weight": self.popularity_weight,
            "context_noise_sd": self.noise_sd,
            "group_edges": self.group_edges.tolist(),
            "n_skeleton_sessions": int(self.start_time.size),
            "real_session_length": self.real_session_length,
            "feature_names": list(self.feature_names),
            "estimator": None if self.estimator is None else _policy_name(self.estimator),
        }

