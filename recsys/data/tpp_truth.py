"""The synthetic twin's true event intensities, for the TPP benchmark's ``oracle.ll_next`` and for comparing learned
intensities with the true ones.

The generator (``truth/meta.json``) draws every user's *exposures* from a Hawkes process with an hour x day baseline,
``lambda_exp(t) = mu_u h[hour(t)] w[day(t)] + sum_{e < t} n beta exp(-beta (t - t_e))`` (minutes), over all
exposures, clicked or not. Each exposure is clicked with its own probability ``p_click``; each click draws
Poisson(``like_rate``) likes and Poisson(``comment_rate``) comments uniform on its watch interval ``[t, t + watch)``,
and one gift with probability ``gift_prob``: at the click's own millisecond with probability 0.86, else uniform on
the watch interval. The observed marks (click, like, comment, gift) are what the TPPs model.

The oracle here is a **privileged** reference: it conditions on the latent history (every past exposure, every
click's watch time and rates), which no model sees, so it is an upper reference rather than an attainable target.
Its intensities, per minute:

* click: ``pbar_uw * lambda_exp(t)``, with ``pbar_uw`` the mean ``p_click`` of the user's exposures in the window
  (the room drawn at a future exposure is not known in advance; this averages over it);
* like / comment: ``sum over clicks c with t_c <= t < t_c + w_c`` of ``rate_c / w_c``;
* gift: ``0.14 gift_prob_c / w_c`` over the same intervals, plus a point mass ``0.86 gift_prob_c`` at the click.
  The TPP tasks keep tied events :data:`recsys.data.tpp.MIN_GAP` units apart (a tied gift lands 1 to 3 tie gaps
  after its click, after any tied like or comment), so the mass is spread uniformly over ``POINT_MASS_GAPS`` gaps
  after the click: that is the best density a model can put on the tied gift in the tasks' representation.

:func:`sequence_log_likelihood` scores a sequence exactly as :meth:`models.tpp.base.NeuralTPP.log_likelihood` does
(first event conditioned on, events 2..N scored, the integral from the first to the last event, no survival term),
in the tasks' time unit, so the numbers are comparable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.errors import DataValidationError
from recsys.data.schema import EVENT_TYPE_ID
from recsys.data.tpp import MIN_GAP, SequenceArrays, TPPTasks
from recsys.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, WINDOW_START_MS

#: share of gifts sent at the click's own millisecond (the generator's constant, ``truth/meta.json``)
GIFT_AT_CLICK = 0.86
#: tie gaps over which the tied gift's point mass is spread (a click, then up to a like and a comment tied with it)
POINT_MASS_GAPS = 4
_CLICK, _LIKE, _COMMENT, _GIFT = (EVENT_TYPE_ID[k] for k in ("click", "like", "comment", "gift"))


def _grouped(user: np.ndarray, n_users: int) -> np.ndarray:
    """Row offsets ``[n_users + 2]`` of rows sorted by user id: user ``u``'s rows are ``off[u]:off[u + 1]``."""
    return np.searchsorted(user, np.arange(n_users + 2))


@dataclass
class TPPTruth:
    """Per-user latent histories and the request-intensity constants of one synthetic dataset."""

    hour_profile: np.ndarray  # (24,)
    day_weights: np.ndarray  # (D,)
    branching: float
    beta_per_min: float
    mu: np.ndarray  # (n_users + 1,) per minute, by user id
    exp_t: np.ndarray  # exposure ms, sorted by (user, t)
    exp_p: np.ndarray  # their p_click
    exp_off: np.ndarray
    click_t: np.ndarray  # clicks (a subset of the exposures), sorted by (user, t)
    click_w: np.ndarray  # watch ms (>= 1)
    click_rates: np.ndarray  # (n_clicks, 3): like_rate, comment_rate, gift_prob
    click_off: np.ndarray

    @classmethod
    def load(cls, data_dir: str | Path) -> "TPPTruth":
        """Read ``<data_dir>/truth`` (written by ``recsys data synth``); a clear error when it is not there."""
        truth = Path(data_dir) / "truth"
        if not (truth / "meta.json").is_file():
            raise DataValidationError(str(truth / "meta.json"), None,
                                      "no ground truth here; only the synthetic twin (recsys data synth) has one")
        req = json.loads((truth / "meta.json").read_text())["request_intensity"]
        users = pl.read_parquet(truth / "users.parquet", columns=["user_id", "mu_per_min"])
        n_users = int(users["user_id"].max())
        mu = np.zeros(n_users + 1)
        mu[users["user_id"].to_numpy()] = users["mu_per_min"].to_numpy()
        ex = pl.read_parquet(truth / "exposures.parquet", columns=[
            "user_id", "timestamp", "p_click", "clicked", "watch_live_time", "like_rate", "comment_rate", "gift_prob",
        ]).sort("user_id", "timestamp")
        cl = ex.filter(pl.col("clicked"))
        return cls(
            hour_profile=np.asarray(req["h"], float), day_weights=np.asarray(req["w"], float),
            branching=float(req["n"]), beta_per_min=float(req["beta_per_min"]), mu=mu,
            exp_t=ex["timestamp"].to_numpy(), exp_p=ex["p_click"].to_numpy().astype(float),
            exp_off=_grouped(ex["user_id"].to_numpy(), n_users),
            click_t=cl["timestamp"].to_numpy(), click_w=np.maximum(cl["watch_live_time"].to_numpy(), 1),
            click_rates=cl.select("like_rate", "comment_rate", "gift_prob").to_numpy().astype(float),
            click_off=_grouped(cl["user_id"].to_numpy(), n_users),
        )

    # ------------------------------------------------------------------ exposure (request) intensity

    def _cells(self) -> np.ndarray:
        """Baseline rate per hour cell since the window start (hour x day profile, per minute, without mu)."""
        return np.outer(self.day_weights, self.hour_profile).ravel()

    def baseline(self, t_ms: np.ndarray) -> np.ndarray:
        """``h[hour] * w[day]`` at ``t_ms`` (0 outside the generated days)."""
        cells = self._cells()
        c = (np.asarray(t_ms, np.int64) - WINDOW_START_MS) // MS_PER_HOUR
        ok = (c >= 0) & (c < cells.size)
        return np.where(ok, cells[np.clip(c, 0, cells.size - 1)], 0.0)

    def baseline_integral(self, a_ms: np.ndarray, b_ms: np.ndarray) -> np.ndarray:
        """``int_a^b h w dt`` in minutes x rate (piecewise constant per hour cell)."""
        cells = self._cells()
        cum = np.r_[0.0, np.cumsum(cells * 60.0)]

        def big(t: np.ndarray) -> np.ndarray:
            rel = np.clip(np.asarray(t, np.int64) - WINDOW_START_MS, 0, cells.size * MS_PER_HOUR)
            c = np.minimum(rel // MS_PER_HOUR, cells.size - 1)
            return cum[c] + cells[c] * (rel - c * MS_PER_HOUR) / MS_PER_MINUTE

        return big(b_ms) - big(a_ms)

    def _exposures(self, user: int, lo_ms: int, hi_ms: int) -> np.ndarray:
        """The user's exposure times in ``[lo_ms - 30 / beta, hi_ms]`` (older ones have decayed below e^-30)."""
        t = self.exp_t[self.exp_off[user]:self.exp_off[user + 1]]
        lo = lo_ms - int(30.0 / self.beta_per_min * MS_PER_MINUTE)
        return t[np.searchsorted(t, lo): np.searchsorted(t, hi_ms, side="right")]

    def exposure_intensity(self, user: int, t_ms: np.ndarray) -> np.ndarray:
        """``lambda_exp(t)`` per minute at ``t_ms``: baseline + excitation from exposures strictly before ``t``."""
        t_ms = np.asarray(t_ms, np.int64)
        e = self._exposures(user, int(t_ms.min()), int(t_ms.max()))
        lag = (t_ms[:, None] - e[None, :]) / MS_PER_MINUTE
        exc = np.where(lag > 0, np.exp(-self.beta_per_min * np.maximum(lag, 0.0)), 0.0).sum(1)
        return self.mu[user] * self.baseline(t_ms) + self.branching * self.beta_per_min * exc

    def exposure_integral(self, user: int, a_ms: int, b_ms: int) -> float:
        """``int_a^b lambda_exp`` (expected exposures in ``[a, b]``)."""
        e = self._exposures(user, a_ms, b_ms)
        e = e[e < b_ms]
        start = np.maximum(e, a_ms)
        decay = np.exp(-self.beta_per_min * (start - e) / MS_PER_MINUTE) - np.exp(
            -self.beta_per_min * (b_ms - e) / MS_PER_MINUTE)
        base = float(self.baseline_integral(np.array([a_ms]), np.array([b_ms]))[0])
        return self.mu[user] * base + self.branching * float(decay.sum())

    def mean_p_click(self, user: int, lo_ms: int, hi_ms: int) -> float:
        """Mean ``p_click`` of the user's exposures in ``[lo_ms, hi_ms)``."""
        sl = slice(self.exp_off[user], self.exp_off[user + 1])
        t, p = self.exp_t[sl], self.exp_p[sl]
        m = (t >= lo_ms) & (t < hi_ms)
        return float(p[m].mean()) if m.any() else float(p.mean()) if p.size else 0.0

    # ------------------------------------------------------------------ in-room marks

    def _clicks(self, user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sl = slice(self.click_off[user], self.click_off[user + 1])
        return self.click_t[sl], self.click_w[sl], self.click_rates[sl]

    def room_intensities(self, user: int, t_ms: np.ndarray) -> np.ndarray:
        """Continuous like, comment and gift intensities per minute at ``t_ms`` -> ``[len(t), 3]``."""
        ct, cw, rates = self._clicks(user)
        t_ms = np.asarray(t_ms, np.int64)
        active = (ct[None, :] <= t_ms[:, None]) & (t_ms[:, None] < ct[None, :] + cw[None, :])
        per_min = rates * np.array([1.0, 1.0, 1.0 - GIFT_AT_CLICK]) / (cw[:, None] / MS_PER_MINUTE)
        return active.astype(float) @ per_min

    def room_integral(self, user: int, a_ms: int, b_ms: int) -> float:
        """``int_a^b`` of the continuous like + comment + gift intensities."""
        ct, cw, rates = self._clicks(user)
        overlap = np.clip(np.minimum(ct + cw, b_ms) - np.maximum(ct, a_ms), 0, None) / cw
        return float((overlap[:, None] * rates * np.array([1.0, 1.0, 1.0 - GIFT_AT_CLICK])).sum())

    def gift_prob_at(self, user: int, t_ms: np.ndarray) -> np.ndarray:
        """``gift_prob`` of the user's click at exactly ``t_ms`` (0 where no click is there)."""
        ct, _, rates = self._clicks(user)
        t_ms = np.asarray(t_ms, np.int64)
        if ct.size == 0:
            return np.zeros(t_ms.shape)
        i = np.clip(np.searchsorted(ct, t_ms), 0, ct.size - 1)
        return np.where(ct[i] == t_ms, rates[i, 2], 0.0)


@dataclass
class SequenceScore:
    """Oracle score of one sequence: ``event_ll`` (sum of log intensities of events 2..N, in the tasks' unit),
    ``integral`` (expected events between the first and the last), ``n_events`` (N - 1), ``n_zero`` (events the
    truth gives zero intensity: 0 unless the truth and the events disagree)."""

    event_ll: float
    integral: float
    n_events: int
    n_zero: int


def sequence_log_likelihood(truth: TPPTruth, user: int, t_ms: np.ndarray, types: np.ndarray,
                            minutes_per_unit: float, window_ms: tuple[int, int]) -> SequenceScore:
    """Oracle log-likelihood of one sequence (events' own epoch ms ``t_ms``, ties equal, in mark order).

    ``window_ms`` is the task window ``[start, end)`` (for the user's mean click probability)."""
    t_ms, types = np.asarray(t_ms, np.int64), np.asarray(types, np.int64)
    pbar = truth.mean_p_click(user, *window_ms)
    q = t_ms[1:]
    room = truth.room_intensities(user, q)
    click = pbar * truth.exposure_intensity(user, q)
    per_min = np.where(types[1:] == _CLICK, click, 0.0)
    for col, mark in enumerate((_LIKE, _COMMENT, _GIFT)):
        per_min = np.where(types[1:] == mark, room[:, col], per_min)
    dens = per_min * minutes_per_unit  # per time unit of the tasks
    # a gift at its click's own millisecond: the point mass, spread over POINT_MASS_GAPS tie gaps
    mass = GIFT_AT_CLICK * truth.gift_prob_at(user, q)
    dens = dens + np.where(types[1:] == _GIFT, mass / (POINT_MASS_GAPS * MIN_GAP), 0.0)
    a, b = int(t_ms[0]), int(t_ms[-1])
    integral = pbar * truth.exposure_integral(user, a, b) + truth.room_integral(user, a, b)
    # point masses of the clicks among events 1..N-1 (a click that is the last event puts its mass after the end)
    clicks_inside = t_ms[:-1][types[:-1] == _CLICK]
    integral += float(GIFT_AT_CLICK * truth.gift_prob_at(user, clicks_inside).sum())
    zero = dens <= 0
    return SequenceScore(float(np.log(np.where(zero, 1e-30, dens)).sum()), float(integral), int(q.size),
                         int(zero.sum()))


def window_bounds_ms(tasks: TPPTasks, t: int, window_days: int) -> tuple[int, int]:
    """``[start, end)`` epoch ms of task ``t``'s window."""
    start = tasks.tasks[t].start_ms
    return start, start + window_days * MS_PER_DAY


def oracle_log_likelihood(truth: TPPTruth, tasks: TPPTasks, t: int, seqs: SequenceArrays, window_days: int
                          ) -> dict[str, float]:
    """Oracle ``ll_per_event`` of task ``t``'s sequences ``seqs`` (rows of ``tasks.tasks[t].splits[...]``, matched
    to the raw sequences by user), with ``n_events`` and ``n_zero``."""
    raw = tasks.sequences[t]
    if not raw.timestamps_ms:
        raise ValueError("oracle_log_likelihood: the tasks were built without raw timestamps")
    bounds = window_bounds_ms(tasks, t, window_days)
    ll = n = zero = 0.0
    for u, i in zip(seqs.user_id, raw.rows_of(seqs.user_id)):
        s = sequence_log_likelihood(truth, int(u), raw.timestamps_ms[i], raw.types[i], tasks.time_scale_min, bounds)
        ll += s.event_ll - s.integral
        n += s.n_events
        zero += s.n_zero
    return {"ll_per_event": ll / max(n, 1.0), "n_events": n, "n_zero": zero}


def true_total_intensity(truth: TPPTruth, user: int, t_ms: np.ndarray, window_ms: tuple[int, int]) -> np.ndarray:
    """Continuous total intensity (click + like + comment + gift) per minute at ``t_ms`` (point masses excluded)."""
    t_ms = np.asarray(t_ms, np.int64)
    return (truth.mean_p_click(user, *window_ms) * truth.exposure_intensity(user, t_ms)
            + truth.room_intensities(user, t_ms).sum(1))


__all__ = ["GIFT_AT_CLICK", "POINT_MASS_GAPS", "SequenceScore", "TPPTruth", "oracle_log_likelihood",
           "sequence_log_likelihood", "true_total_intensity", "window_bounds_ms"]
