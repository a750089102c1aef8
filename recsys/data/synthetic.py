"""Synthetic KuaiLive: the same files, columns and id conventions, generated from a planted latent model.

The generative story (every quantity is written to ``truth/`` so that models can be scored against it):

1. **Users** have latent factors ``u`` with a linear drift over the 21 days, category tastes, an activity level, and
   comment/like/gift propensities. Some profile columns (age, gender, device, the encrypted ``onehot_feat*``) are
   correlated with the latent factors and tastes, so side features carry signal as in the real data.
2. **Streamers** have latent factors ``v``, a heavy-tailed popularity, a category, a broadcast rate and a preferred
   broadcast hour (evening peak). Titles: 1-3 per streamer, embedded in 128 dimensions as a noisy linear image of
   (``v``, category), like the PCA-reduced BGE embeddings of the real file.
3. **Rooms**: per (streamer, day) a Poisson number of back-to-back broadcast sessions starting near the preferred
   hour; log-normal durations with a long tail. Rooms still live at the end of collection get a *censored* end at
   a CST midnight, and ``room.csv`` repeats a room once per CST date it spans, as the real file does.
4. **Feed requests** of each user follow a self-exciting (Hawkes) process with an hour-of-day / day-of-week base rate:
   ``lambda_u(t) = mu_u * h[hour(t)] * w[day(t)] + sum_{t_i < t} n * beta * exp(-beta (t - t_i))``.
   Each request exposes one room live at t: from the user's favourite streamers when one is live (familiarity),
   otherwise a popularity-weighted draw among live rooms.
5. **Click** with probability ``p = sigmoid(b0 + a_aff * <u(t), v> + taste[u, cat] + a_pop * log pop + hour, room-age
   and live-type effects + context noise)``; ``b0`` is calibrated so that the click rate is KuaiLive's 27.87 %.
   Exposures that were not clicked are ``negative.csv``.
6. **Watch time** of a click: a bounce/engaged log-normal mixture whose engaged share grows with affinity, cut at the
   room's true end. **Comments, likes** are Poisson per click with rates growing with watch time and user
   propensity, at uniform times within the watch; a **gift** (one per click at most) is a Bernoulli with a heavy
   user/streamer propensity, 86 % at the click timestamp, with a heavy-tailed price.

Scales: ``tiny`` (tests, seconds), ``small`` (quickstart, ~1/20), ``full`` (KuaiLive's published row counts).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from recsys.data.live_index import LiveIndex
from recsys.data.schema import PUBLISHED_COUNTS, VOCABULARIES
from recsys.timeutil import (
    MS_PER_DAY,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    N_WINDOW_DAYS,
    WINDOW_END_MS,
    WINDOW_START_MS,
    cst_day,
    cst_hour,
    cst_midnight,
    p_date,
)

log = logging.getLogger(__name__)

SCALES: dict[str, float] = {"tiny": 0.004, "small": 0.05, "full": 1.0}
GENERATOR_VERSION = "1"

#: Click-through rate of KuaiLive: clicks / (clicks + negatives).
TARGET_CTR = 0.2787
#: Per-click rates of the other behaviours in KuaiLive.
TARGET_COMMENT_PER_CLICK = 196_526 / 4_909_515
TARGET_LIKE_PER_CLICK = 179_311 / 4_909_515
TARGET_GIFT_PER_CLICK = 72_646 / 4_909_515

#: Relative request activity by CST hour: low at night, a small noon peak, the main peak 18:00-24:00.
USER_HOUR_PROFILE = np.array(
    [0.55, 0.35, 0.2, 0.12, 0.1, 0.12, 0.2, 0.35, 0.5, 0.6, 0.65, 0.75,
     0.95, 0.9, 0.7, 0.65, 0.65, 0.75, 1.0, 1.3, 1.55, 1.7, 1.6, 1.05]
)
#: Relative broadcast start rate by CST hour: peak 18:00-22:00.
BROADCAST_HOUR_PROFILE = np.array(
    [0.3, 0.15, 0.08, 0.05, 0.05, 0.08, 0.2, 0.35, 0.5, 0.6, 0.6, 0.65,
     0.7, 0.7, 0.65, 0.65, 0.7, 0.85, 1.2, 1.5, 1.6, 1.5, 1.0, 0.6]
)
CATEGORY_PROBS = {"shop": 0.10, "game": 0.15, "other": 0.30, "chat": 0.22, "talent": 0.17, "outdoor": 0.06}
CATEGORY_TAG = {
    "shop": ("E-Commerce",),
    "game": ("Game",),
    "other": ("Lifestyle", "Education", "Beauty"),
    "chat": ("Chat", "Relationship"),
    "talent": ("Talent", "Beauty"),
    "outdoor": ("Lifestyle",),
}


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the planted model. ``scale`` multiplies every KuaiLive row count."""

    scale: str = "tiny"
    seed: int = 0
    n_factors: int = 8
    # click model
    affinity_weight: float = 1.6
    taste_sd: float = 0.7
    popularity_weight: float = 0.25
    drift_sd: float = 0.9
    context_noise_sd: float = 0.3
    # request process (Hawkes)
    branching: float = 0.5
    excitation_minutes: float = 10.0
    activity_sigma: float = 0.9
    # exposure policy
    familiar_share: float = 0.4
    n_favourites: int = 32
    favourite_tries: int = 8
    # rooms
    room_median_minutes: float = 12.0
    room_sigma: float = 1.1
    long_room_share: float = 0.004
    popularity_sigma: float = 1.3

    @property
    def fraction(self) -> float:
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; choose one of {sorted(SCALES)}")
        return SCALES[self.scale]

    def target(self, name: str) -> int:
        """Row-count target of one file at this scale (published count x fraction)."""
        return max(1, int(round(PUBLISHED_COUNTS[name] * self.fraction)))


@dataclass
class SynthResult:
    out_dir: Path
    counts: dict[str, int]
    wall_s: float


# --------------------------------------------------------------------------------------------------------- helpers
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _categorical(rng: np.random.Generator, probs: np.ndarray, size: int) -> np.ndarray:
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(size), side="right"), len(probs) - 1)


def _bucket_by_rank(values: np.ndarray, vocab: tuple[str, ...], shares: tuple[float, ...]) -> np.ndarray:
    """Map values to bucket strings so that bucket k holds ``shares[k]`` of the rows, in increasing value order."""
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable") / max(len(values) - 1, 1)
    edges = np.cumsum(shares)[:-1] / np.sum(shares)
    return np.asarray(vocab, dtype=object)[np.searchsorted(edges, ranks, side="right")]


def _dates_before(rng: np.random.Generator, n: int, lo_days: int, hi_days: int) -> np.ndarray:
    days = rng.integers(lo_days, hi_days, size=n)
    return (np.datetime64("2025-05-05") - days.astype("timedelta64[D]")).astype(str)


def _choice_str(rng: np.random.Generator, values: tuple[str, ...], probs: tuple[float, ...], n: int) -> np.ndarray:
    return np.asarray(values, dtype=object)[_categorical(rng, np.asarray(probs), n)]


# --------------------------------------------------------------------------------------------------------- entities
@dataclass
class _Users:
    factors: np.ndarray  # (U, d) at the window start
    drift: np.ndarray  # (U, d): factors move by drift * (day/20 - 0.5)
    taste: np.ndarray  # (U, C)
    activity: np.ndarray  # (U,), mean 1
    comment_z: np.ndarray
    like_z: np.ndarray
    gift_z: np.ndarray
    profile: pl.DataFrame


@dataclass
class _Streamers:
    factors: np.ndarray  # (S, d)
    popularity: np.ndarray  # (S,), mean 1
    category: np.ndarray  # (S,) int index into categories
    live_type: np.ndarray
    room_rate: np.ndarray  # expected rooms over the window
    pref_hour: np.ndarray
    gift_z: np.ndarray
    title_start: np.ndarray  # first title id of the streamer
    n_titles: np.ndarray
    profile: pl.DataFrame


CATEGORIES: tuple[str, ...] = tuple(CATEGORY_PROBS)


def _make_users(cfg: SynthConfig, rng: np.random.Generator, n: int) -> _Users:
    d, C = cfg.n_factors, len(CATEGORIES)
    factors = rng.normal(0, 1 / np.sqrt(d), size=(n, d))
    drift = rng.normal(0, cfg.drift_sd / np.sqrt(d), size=(n, d))
    activity = rng.lognormal(0, cfg.activity_sigma, size=n)
    activity /= activity.mean()
    age = _categorical(rng, np.array([0.03, 0.14, 0.15, 0.15, 0.14, 0.20, 0.19]), n)
    male = rng.random(n) < 0.6185
    taste = rng.normal(0, cfg.taste_sd, size=(n, C))
    ci = {c: i for i, c in enumerate(CATEGORIES)}
    taste[:, ci["game"]] += np.where(male & (age <= 3), 0.8, -0.2)
    taste[:, ci["shop"]] += np.where(~male & (age >= 3), 0.8, -0.2)
    taste[:, ci["chat"]] += np.where(male & (age >= 4), 0.5, 0.0)
    taste[:, ci["talent"]] += np.where(age <= 2, 0.5, 0.0)
    device_price_idx = np.clip((activity > 1).astype(int) + _categorical(rng, np.array([0.05, 0.2, 0.3, 0.3, 0.15]), n), 0, 5)
    onehot = {f"onehot_feat{k}": (factors[:, k] * 3 + rng.normal(0, 1, n) > 0).astype(np.int64) for k in range(5)}
    onehot["onehot_feat5"] = (rng.random(n) < 0.2).astype(np.int64)
    onehot["onehot_feat6"] = (taste[:, ci["shop"]] + rng.normal(0, 0.5, n) > 0.5).astype(np.int64)
    reg_days = rng.integers(30, 3000, size=n)
    profile = pl.DataFrame(
        {
            "user_id": np.arange(1, n + 1, dtype=np.int64),
            "age": np.asarray(VOCABULARIES["age"], dtype=object)[age],
            "gender": np.where(male, "M", "F"),
            "country": np.where(rng.random(n) < 0.992, "China", _choice_str(rng, ("Malaysia", "Japan", "USA", "Thailand"), (0.4, 0.2, 0.2, 0.2), n)),
            "device_brand": _choice_str(rng, ("Apple", "HUAWEI", "OPPO", "vivo", "Xiaomi", "HONOR", "other"), (0.22, 0.2, 0.16, 0.16, 0.12, 0.08, 0.06), n),
            "device_price": np.asarray(VOCABULARIES["device_price"], dtype=object)[device_price_idx],
            "reg_timestamp": (np.datetime64("2025-05-05") - reg_days.astype("timedelta64[D]")).astype(str),
            "fans_num": _bucket_by_rank(rng.lognormal(0, 2, n), VOCABULARIES["fans_num"], (0.55, 0.3, 0.11, 0.03, 0.01)),
            "follow_num": _bucket_by_rank(activity * rng.lognormal(0, 1, n), VOCABULARIES["follow_num"], (0.2, 0.45, 0.3, 0.045, 0.005)),
            "first_watch_live_timestamp": (np.datetime64("2025-05-05") - (reg_days * rng.uniform(0.1, 1.0, n)).astype(np.int64).astype("timedelta64[D]")).astype(str),
            "accu_watch_live_cnt": _bucket_by_rank(activity * rng.lognormal(0, 0.3, n), VOCABULARIES["accu_watch_live_cnt"], (0.7, 0.15, 0.12, 0.03)),
            "accu_watch_live_duration": _bucket_by_rank(activity * rng.lognormal(0, 0.5, n), ("0-3600000", "3600000-36000000", "36000000-360000000", "360000000+"), (0.3, 0.4, 0.25, 0.05)),
            "is_live_streamer": (rng.random(n) < 0.04).astype(np.int64),
            "is_photo_author": (rng.random(n) < 0.35).astype(np.int64),
            **onehot,
        }
    )
    return _Users(
        factors=factors, drift=drift, taste=taste, activity=activity,
        comment_z=rng.normal(0, 0.8, n), like_z=rng.normal(0, 0.8, n), gift_z=rng.normal(0, 1.4, n),
        profile=profile,
    )


def _make_streamers(cfg: SynthConfig, rng: np.random.Generator, n: int, n_titles_target: int) -> _Streamers:
    d = cfg.n_factors
    factors = rng.normal(0, 1 / np.sqrt(d), size=(n, d))
    popularity = rng.lognormal(0, cfg.popularity_sigma, size=n)
    popularity /= popularity.mean()
    category = _categorical(rng, np.array(list(CATEGORY_PROBS.values())), n)
    live_type = 1 + _categorical(rng, np.array([0.86, 0.1, 0.04]), n)
    rate = rng.lognormal(0, 1.0, size=n) * popularity**0.3
    rate *= cfg.target("room") / rate.sum()
    pref_hour = _categorical(rng, BROADCAST_HOUR_PROFILE, n)
    extra = n_titles_target / n - 1.0
    n_titles = 1 + rng.binomial(2, np.clip(extra / 2, 0, 1), size=n)
    title_start = np.cumsum(n_titles) - n_titles
    tags = np.array([rng.choice(CATEGORY_TAG[CATEGORIES[c]]) for c in range(len(CATEGORIES))], dtype=object)
    tag = tags[category]
    mixed = rng.random(n) < 0.15  # some streamers' tag does not follow the category
    tag[mixed] = rng.choice(np.asarray(VOCABULARIES["live_operation_tag"], dtype=object), size=int(mixed.sum()))
    onehot = {f"onehot_feat{k}": (factors[:, k] * 3 + rng.normal(0, 1, n) > 0).astype(np.int64) for k in range(5)}
    onehot["onehot_feat5"] = (rng.random(n) < 0.3).astype(np.int64)
    onehot["onehot_feat6"] = (live_type > 1).astype(np.int64)
    fans_vocab = ("0-10", "10-100", "100-1000", "1000-10000", "10000-100000", "100000-1000000", "1000000-10000000", "10000000+")
    reg_days = rng.integers(30, 3500, size=n)
    age = _categorical(rng, np.array([0.01, 0.06, 0.2, 0.24, 0.18, 0.16, 0.15]), n)
    profile = pl.DataFrame(
        {
            "streamer_id": np.arange(1, n + 1, dtype=np.int64),
            "gender": np.where(rng.random(n) < 0.6283, "F", "M"),
            "age": np.asarray(VOCABULARIES["age"], dtype=object)[age],
            "country": np.where(rng.random(n) < 0.995, "China", "Malaysia"),
            "device_brand": _choice_str(rng, ("Apple", "HUAWEI", "OPPO", "vivo", "Xiaomi", "HONOR", "other"), (0.25, 0.2, 0.15, 0.15, 0.12, 0.08, 0.05), n),
            "device_price": _choice_str(rng, VOCABULARIES["device_price"], (0.05, 0.15, 0.3, 0.3, 0.12, 0.08), n),
            "live_operation_tag": tag,
            "fans_user_num": _bucket_by_rank(popularity * rng.lognormal(0, 0.5, n), fans_vocab, (0.2, 0.3, 0.25, 0.15, 0.07, 0.025, 0.004, 0.001)),
            "fans_group_fans_num": _bucket_by_rank(popularity * rng.lognormal(0, 1, n), fans_vocab[:6], (0.6, 0.25, 0.1, 0.04, 0.009, 0.001)),
            "follow_user_num": _bucket_by_rank(rng.lognormal(0, 1, n), fans_vocab[:5], (0.2, 0.4, 0.3, 0.09, 0.01)),
            "first_live_timestamp": (np.datetime64("2025-05-05") - (reg_days * rng.uniform(0.05, 1.0, n)).astype(np.int64).astype("timedelta64[D]")).astype(str),
            "reg_timestamp": (np.datetime64("2025-05-05") - reg_days.astype("timedelta64[D]")).astype(str),
            "accu_live_cnt": _bucket_by_rank(rate * rng.lognormal(0, 0.3, n), ("0-10", "10-100", "100-1000", "1000+"), (0.3, 0.45, 0.22, 0.03)),
            "accu_live_duration": _bucket_by_rank(rate * rng.lognormal(0, 0.6, n), ("0-3600000", "3600000-360000000", "360000000-36000000000", "36000000000+"), (0.25, 0.5, 0.22, 0.03)),
            "accu_play_cnt": _bucket_by_rank(popularity * rate, ("0-1000", "1000-100000", "100000-10000000", "10000000+"), (0.4, 0.4, 0.18, 0.02)),
            "accu_play_duration": _bucket_by_rank(popularity * rate * rng.lognormal(0, 0.5, n), ("0-1000000000", "1000000000-100000000000", "100000000000-100000000000000", "100000000000000+"), (0.4, 0.4, 0.18, 0.02)),
            **onehot,
        }
    )
    return _Streamers(
        factors=factors, popularity=popularity, category=category, live_type=live_type, room_rate=rate,
        pref_hour=pref_hour, gift_z=rng.normal(0, 1.0, n), title_start=title_start, n_titles=n_titles,
        profile=profile,
    )


def _title_embeddings(cfg: SynthConfig, rng: np.random.Generator, st: _Streamers) -> np.ndarray:
    """(n_titles, 128) float32: a fixed linear image of (streamer factors, category) plus noise."""
    n_titles = int(st.n_titles.sum())
    owner = np.repeat(np.arange(st.factors.shape[0]), st.n_titles)
    C = len(CATEGORIES)
    W = rng.normal(0, 1, size=(cfg.n_factors + C, 128)).astype(np.float32)
    out = np.empty((n_titles, 128), dtype=np.float32)
    step = 200_000
    for lo in range(0, n_titles, step):
        o = owner[lo: lo + step]
        x = np.concatenate([st.factors[o] * np.sqrt(cfg.n_factors), np.eye(C)[st.category[o]]], axis=1).astype(np.float32)
        out[lo: lo + step] = x @ W + rng.normal(0, 1.0, size=(o.size, 128)).astype(np.float32)
    out /= np.float32(np.sqrt(cfg.n_factors + C))
    return out


@dataclass
class _Rooms:
    live_id: np.ndarray  # 1..R in start order
    streamer: np.ndarray  # 0-based streamer index
    start: np.ndarray
    true_end: np.ndarray
    reported_end: np.ndarray  # censored at a CST midnight after the window when still live
    live_type: np.ndarray
    category: np.ndarray
    name_id: np.ndarray


def _make_rooms(cfg: SynthConfig, rng: np.random.Generator, st: _Streamers) -> _Rooms:
    """Per (streamer, day) a Poisson number of back-to-back sessions around the streamer's preferred hour."""
    n_s = st.factors.shape[0]
    per_day = st.room_rate / N_WINDOW_DAYS
    k = rng.poisson(np.repeat(per_day, N_WINDOW_DAYS))  # (S*D,), streamer-major
    grp_streamer = np.repeat(np.arange(n_s), N_WINDOW_DAYS)
    grp_day = np.tile(np.arange(N_WINDOW_DAYS), n_s)
    nz = k > 0
    k, grp_streamer, grp_day = k[nz], grp_streamer[nz], grp_day[nz]
    R = int(k.sum())
    streamer = np.repeat(grp_streamer, k)
    long_room = rng.random(R) < cfg.long_room_share
    dur_min = np.where(
        long_room,
        rng.lognormal(np.log(300.0), 0.6, R),
        rng.lognormal(np.log(cfg.room_median_minutes), cfg.room_sigma, R),
    )
    dur = np.maximum((dur_min * MS_PER_MINUTE).astype(np.int64), 30_000)
    gap = (rng.exponential(20.0, R) * MS_PER_MINUTE).astype(np.int64)
    first_hour = np.where(
        rng.random(k.size) < 0.7,
        st.pref_hour[grp_streamer] + rng.normal(0, 1.2, k.size),
        _categorical(rng, BROADCAST_HOUR_PROFILE, k.size) + rng.random(k.size),
    )
    first_start = (cst_midnight(cst_day(WINDOW_START_MS) + grp_day)
                   + (np.clip(first_hour, 0, 23.99) * MS_PER_HOUR).astype(np.int64))
    # start_j = first_start + sum_{i<j} (dur_i + gap_i) within the group
    step = dur + gap
    csum = np.cumsum(step) - step
    group_base = np.repeat(csum[np.cumsum(k) - k], k)
    start = np.repeat(first_start, k) + (csum - group_base)
    start = start + rng.integers(0, 1000, R)  # millisecond jitter
    true_end = start + dur
    keep = start < WINDOW_END_MS
    streamer, start, true_end = streamer[keep], start[keep], true_end[keep]
    order = np.lexsort((streamer, start))
    streamer, start, true_end = streamer[order], start[order], true_end[order]
    R = start.size
    censored = true_end > WINDOW_END_MS
    censor_at = cst_midnight(cst_day(WINDOW_END_MS) + 1)  # 2025-05-27 00:00 CST, as in the real file
    reported_end = np.where(censored, censor_at, true_end)
    title = st.title_start[streamer] + (rng.random(R) * st.n_titles[streamer]).astype(np.int64)
    return _Rooms(
        live_id=np.arange(1, R + 1, dtype=np.int64), streamer=streamer, start=start, true_end=true_end,
        reported_end=reported_end, live_type=st.live_type[streamer], category=st.category[streamer], name_id=title,
    )


# --------------------------------------------------------------------------------------------------------- requests
def _day_weights() -> np.ndarray:
    """Day-of-week effect: window day 0 is Monday 2025-05-05; weekends +12 %."""
    dow = np.arange(N_WINDOW_DAYS) % 7
    return np.where(dow >= 5, 1.12, 1.0)


def _base_intensity_integral() -> float:
    """Integral over the window (in minutes) of h[hour] * w[day]."""
    return float(_day_weights().sum() * USER_HOUR_PROFILE.sum() * 60.0)


def _sample_immigrants(rng: np.random.Generator, mu_per_min: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Base-rate events of every user: counts ~ Poisson(mu * integral), times from the hour x day profile."""
    counts = rng.poisson(mu_per_min * _base_intensity_integral())
    user = np.repeat(np.arange(mu_per_min.size), counts)
    n = user.size
    cells = np.outer(_day_weights(), USER_HOUR_PROFILE).ravel()  # (D*24,)
    cell = _categorical(rng, cells, n)
    t = WINDOW_START_MS + cell * MS_PER_HOUR + (rng.random(n) * MS_PER_HOUR).astype(np.int64)
    return user, t


def _hawkes_offspring(
    cfg: SynthConfig, rng: np.random.Generator, user: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All descendants of the given events: Poisson(n) children each, exponential delays, cut at the window end."""
    out_u, out_t = [], []
    beta_ms = cfg.excitation_minutes * MS_PER_MINUTE
    while user.size:
        kids = rng.poisson(cfg.branching, user.size)
        user = np.repeat(user, kids)
        t = np.repeat(t, kids) + np.maximum(1, (rng.exponential(beta_ms, user.size)).astype(np.int64))
        inside = t < WINDOW_END_MS
        user, t = user[inside], t[inside]
        out_u.append(user)
        out_t.append(t)
    return np.concatenate(out_u), np.concatenate(out_t)


class _RoomSampler:
    """Draw rooms live at given times: popularity-weighted, or from a user's favourites when one is live."""

    def __init__(self, rooms: _Rooms, st: _Streamers, bucket_ms: int = 30 * MS_PER_MINUTE) -> None:
        self.rooms = rooms
        self.index = LiveIndex.from_arrays(rooms.live_id, rooms.streamer, rooms.start, rooms.true_end, bucket_ms)
        idx = self.index
        # live_id is 1..R in start order, so index rows are live_id - 1
        weights = st.popularity[idx.streamer_id[idx.bucket_rows]]
        self.cum = np.cumsum(weights)
        self.bucket_lo = np.r_[0.0, self.cum][idx.bucket_offsets[:-1]]
        self.bucket_hi = np.r_[0.0, self.cum][idx.bucket_offsets[1:]]
        # (bucket, streamer) live bitmap for cheap favourite checks
        n_b = idx.bucket_offsets.size - 1
        self.n_streamers = st.factors.shape[0]
        self.live_bs = np.zeros((n_b, self.n_streamers), dtype=bool)
        b_of_entry = np.repeat(np.arange(n_b), np.diff(idx.bucket_offsets))
        self.live_bs[b_of_entry, idx.streamer_id[idx.bucket_rows]] = True

    def _bucket(self, t: np.ndarray) -> np.ndarray:
        return np.clip((t - self.index.origin) // self.index.bucket_ms, 0, self.bucket_lo.size - 1)

    def popular(self, rng: np.random.Generator, t: np.ndarray, max_tries: int = 60) -> np.ndarray:
        """Row of a popularity-weighted room live at each t (-1 where none was found)."""
        out = np.full(t.size, -1, dtype=np.int64)
        pending = np.arange(t.size)
        b_all = self._bucket(t)
        for _ in range(max_tries):
            if not pending.size:
                break
            b = b_all[pending]
            lo, hi = self.bucket_lo[b], self.bucket_hi[b]
            has = hi > lo
            u = lo + rng.random(pending.size) * (hi - lo)
            pos = np.minimum(np.searchsorted(self.cum, u, side="right"), self.cum.size - 1)
            row = self.index.bucket_rows[pos]
            tt = t[pending]
            ok = has & (self.index.start[row] <= tt) & (self.index.end[row] > tt)
            out[pending[ok]] = row[ok]
            pending = pending[~ok & has]
        return out

    def favourite(self, rng: np.random.Generator, t: np.ndarray, fav: np.ndarray, fav_cdf: np.ndarray,
                  tries: int) -> np.ndarray:
        """Row of the room of a favourite streamer live at t (-1 where none of ``tries`` draws is live).

        ``fav`` (n, K) are favourite streamer indices of each request's user, ``fav_cdf`` (n, K) their draw CDF.
        """
        n = t.size
        b = self._bucket(t)
        draws = (fav_cdf[:, None, :] < rng.random((n, tries, 1))).sum(axis=2)  # (n, tries)
        cand = np.take_along_axis(fav, np.minimum(draws, fav.shape[1] - 1), axis=1)
        live = self.live_bs[b[:, None], cand]
        first = np.argmax(live, axis=1)
        any_live = live[np.arange(n), first]
        out = np.full(n, -1, dtype=np.int64)
        idx = np.flatnonzero(any_live)
        s = cand[idx, first[idx]]
        live_id = self.index.room_of_streamer(s, t[idx])
        got = live_id > 0
        out[idx[got]] = live_id[got] - 1
        return out


def _favourites(cfg: SynthConfig, rng: np.random.Generator, users: _Users, st: _Streamers
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per user the ``n_favourites`` streamers of highest affinity among a popularity-weighted candidate pool."""
    n_u, K = users.factors.shape[0], cfg.n_favourites
    pool = min(400, st.factors.shape[0])
    p = st.popularity / st.popularity.sum()
    cdf = np.cumsum(p)
    fav = np.empty((n_u, K), dtype=np.int64)
    w = np.empty((n_u, K))
    for lo in range(0, n_u, 2000):
        hi = min(n_u, lo + 2000)
        cand = np.minimum(np.searchsorted(cdf, rng.random((hi - lo, pool))), p.size - 1)
        score = cfg.affinity_weight * np.einsum("ud,upd->up", users.factors[lo:hi], st.factors[cand]) \
            + users.taste[lo:hi][np.arange(hi - lo)[:, None], st.category[cand]]
        top = np.argpartition(-score, min(K, pool) - 1, axis=1)[:, :K]
        fav[lo:hi] = np.take_along_axis(cand, top, axis=1)
        w[lo:hi] = np.exp(np.take_along_axis(score, top, axis=1))
    fav_cdf = np.cumsum(w, axis=1)
    fav_cdf /= fav_cdf[:, -1:]
    return fav, fav_cdf


# --------------------------------------------------------------------------------------------------------- outcomes
def drift_fraction(t: np.ndarray) -> np.ndarray:
    """Where ``t`` (epoch ms) lies in the 21-day window, centred: -1/2 at its start, +1/2 at its end. A user's taste
    vector at ``t`` is ``factors + drift_fraction(t) * drift``."""
    return (np.asarray(t) - WINDOW_START_MS) / (N_WINDOW_DAYS * MS_PER_DAY) - 0.5


def _drift_slope(cfg: SynthConfig, users: _Users, st: _Streamers, rooms: _Rooms, u: np.ndarray,
                 r: np.ndarray) -> np.ndarray:
    """d logit / d drift_fraction of an exposure: the affinity term's part that moves with the user's drift."""
    drift_aff = np.einsum("nd,nd->n", users.drift[u], st.factors[rooms.streamer[r]])
    return cfg.affinity_weight * drift_aff * np.sqrt(cfg.n_factors)


def _click_logit_no_bias(cfg: SynthConfig, users: _Users, st: _Streamers, rooms: _Rooms, u: np.ndarray,
                         r: np.ndarray, t: np.ndarray, noise: np.ndarray) -> np.ndarray:
    s = rooms.streamer[r]
    frac = drift_fraction(t)
    uf = users.factors[u] + frac[:, None] * users.drift[u]
    aff = np.einsum("nd,nd->n", uf, st.factors[s])
    hour = cst_hour(t)
    evening = np.isin(hour, (19, 20, 21, 22)).astype(np.float64)
    age_min = (t - rooms.start[r]) / MS_PER_MINUTE
    room_age = -0.25 * np.abs(np.log1p(age_min) - np.log1p(20.0))
    return (
        cfg.affinity_weight * aff * np.sqrt(cfg.n_factors)
        + users.taste[u, rooms.category[r]]
        + cfg.popularity_weight * np.log(st.popularity[s])
        + 0.2 * evening
        + room_age
        + np.where(rooms.live_type[r] == 1, 0.0, -0.2)
        + noise
    )


def _calibrate_bias(logit: np.ndarray, target_mean: float) -> float:
    """Intercept b such that mean(sigmoid(logit + b)) equals the target (bisection)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(logit + mid).mean() > target_mean:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _gift_prices(rng: np.random.Generator, n: int, wealth: np.ndarray) -> np.ndarray:
    """Heavy-tailed integer prices: ~44 % equal 1, median ~2, mean ~80, capped at 56,246."""
    ones = rng.random(n) < 0.44
    big = 1 + np.ceil(np.exp(rng.normal(np.log(4.0) + 0.3 * wealth, 2.4, n)))
    return np.where(ones, 1, np.clip(big, 1, 56_246)).astype(np.int64)


# --------------------------------------------------------------------------------------------------------- main
def generate(
    out_dir: str | Path,
    config: SynthConfig | None = None,
    progress: bool = True,
) -> SynthResult:
    """Write a synthetic KuaiLive dataset (the eight CSVs, title embeddings, and ``truth/``) to ``out_dir``."""
    cfg = config or SynthConfig()
    _ = cfg.fraction  # validates the scale name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(8)]
    bar = tqdm(total=7, desc=f"synth {cfg.scale}", disable=not progress, unit="step")

    def step(name: str, fn: Callable[[], object]) -> object:
        bar.set_postfix_str(name)
        value = fn()
        bar.update(1)
        return value

    n_u, n_s = cfg.target("user"), cfg.target("streamer")
    users: _Users = step("users", lambda: _make_users(cfg, streams[0], n_u))
    st: _Streamers = step("streamers", lambda: _make_streamers(cfg, streams[1], n_s, cfg.target("title_embeddings")))
    rooms: _Rooms = step("rooms", lambda: _make_rooms(cfg, streams[2], st))

    # requests: immigrants scaled so that the expected total (immigrants / (1 - n)) hits the exposure target
    def make_requests() -> tuple[np.ndarray, ...]:
        rng = streams[3]
        sampler = _RoomSampler(rooms, st)  # local: its bitmap and bucket lists are freed before writing
        target = cfg.target("click") + cfg.target("negative")
        mu = users.activity * target * (1 - cfg.branching) / (n_u * _base_intensity_integral())
        iu, it = _sample_immigrants(rng, mu)
        ou, ot = _hawkes_offspring(cfg, rng, iu, it)
        user, t = np.concatenate([iu, ou]), np.concatenate([it, ot])
        # one room per request: a live favourite with probability familiar_share, else popularity-weighted
        fav, fav_cdf = _favourites(cfg, rng, users, st)
        room = np.full(user.size, -1, dtype=np.int64)
        familiar = rng.random(user.size) < cfg.familiar_share
        for lo in range(0, user.size, 500_000):
            sl = slice(lo, lo + 500_000)
            f = np.flatnonzero(familiar[sl]) + lo
            room[f] = sampler.favourite(rng, t[f], fav[user[f]], fav_cdf[user[f]], cfg.favourite_tries)
        source = (room >= 0).astype(np.int8)  # 1: a live favourite, 0: popularity-weighted draw
        for lo in range(0, user.size, 500_000):
            rest = np.flatnonzero(room[lo: lo + 500_000] < 0) + lo
            room[rest] = sampler.popular(rng, t[rest])
        ok = room >= 0
        order = np.lexsort((user[ok], t[ok]))
        return user[ok][order], t[ok][order], room[ok][order], source[ok][order], mu

    user, t, room_row, source, mu = step("requests", make_requests)

    def outcomes() -> dict[str, object]:
        rng = streams[4]
        noise = rng.normal(0, cfg.context_noise_sd, t.size)
        logit, slope = np.empty(t.size), np.empty(t.size)
        for lo in range(0, t.size, 1_000_000):
            sl = slice(lo, lo + 1_000_000)
            logit[sl] = _click_logit_no_bias(cfg, users, st, rooms, user[sl], room_row[sl], t[sl], noise[sl])
            slope[sl] = _drift_slope(cfg, users, st, rooms, user[sl], room_row[sl])
        b0 = _calibrate_bias(logit, TARGET_CTR)
        p = _sigmoid(logit + b0)
        clicked = rng.random(t.size) < p
        # watch time for clicks: bounce / engaged mixture, cut at the room's true end
        ci = np.flatnonzero(clicked)
        aff_std = (logit[ci] - logit.mean()) / (logit.std() + 1e-9)
        engaged = rng.random(ci.size) < _sigmoid(-1.3 + 1.0 * aff_std)
        watch = np.where(
            engaged,
            rng.lognormal(np.log(600_000), 1.5, ci.size),
            rng.lognormal(np.log(3_000), 0.8, ci.size),
        ).astype(np.int64)
        r = room_row[ci]
        watch = np.clip(watch, 1, np.maximum(1, rooms.true_end[r] - t[ci]))
        return {"b0": b0, "p": p, "clicked": clicked, "ci": ci, "watch": watch, "engaged": engaged, "noise": noise,
                "drift_slope": slope}

    oc = step("clicks", outcomes)

    def interactions() -> dict[str, pl.DataFrame]:
        rng = streams[5]
        ci, watch = oc["ci"], oc["watch"]
        cu, ct, cr = user[ci], t[ci], room_row[ci]
        cs = rooms.streamer[cr]
        wmin = np.log1p(watch / MS_PER_MINUTE)
        n_clicks = ci.size
        events = {}
        rates = {}
        for name, z, target in (("comment", users.comment_z, TARGET_COMMENT_PER_CLICK),
                                ("like", users.like_z, TARGET_LIKE_PER_CLICK)):
            raw = np.exp(z[cu] + 0.8 * wmin)
            lam = raw * (target * n_clicks / raw.sum())
            k = rng.poisson(lam)
            idx = np.repeat(np.arange(n_clicks), k)
            ts = ct[idx] + (rng.random(idx.size) * watch[idx]).astype(np.int64)
            rates[name] = lam
            events[name] = (idx, ts)
        raw = np.exp(users.gift_z[cu] + st.gift_z[cs] + 0.5 * wmin)
        scale = 1.0
        for _ in range(50):  # fixed point: sum(min(1, scale * raw)) equals the gift target
            tot = np.minimum(1.0, scale * raw).sum()
            scale *= (TARGET_GIFT_PER_CLICK * n_clicks) / max(tot, 1e-12)
        p_gift = np.minimum(1.0, scale * raw)
        gave = rng.random(n_clicks) < p_gift
        gidx = np.flatnonzero(gave)
        at_click = rng.random(gidx.size) < 0.86
        gts = ct[gidx] + np.where(at_click, 0, (rng.random(gidx.size) * watch[gidx]).astype(np.int64))
        price = _gift_prices(rng, gidx.size, users.gift_z[cu[gidx]])
        rates["gift"] = p_gift
        events["gift"] = (gidx, gts)
        tables = {}
        for name, (idx, ts) in events.items():
            inside = ts < WINDOW_END_MS
            cols = {
                "user_id": cu[idx][inside] + 1,
                "live_id": rooms.live_id[cr[idx]][inside],
                "streamer_id": cs[idx][inside] + 1,
                "timestamp": ts[inside],
            }
            if name == "gift":
                cols["gift_price"] = price[inside]
            tables[name] = pl.DataFrame(cols).sort("timestamp", "user_id")
        tables["_rates"] = pl.DataFrame(
            {"comment_rate": rates["comment"], "like_rate": rates["like"], "gift_prob": rates["gift"]}
        )
        return tables

    inter = step("interactions", interactions)

    def write() -> dict[str, int]:
        counts: dict[str, int] = {}
        clicked = oc["clicked"]
        ci = oc["ci"]
        ev = pl.DataFrame(
            {
                "user_id": user + 1,
                "live_id": rooms.live_id[room_row],
                "streamer_id": rooms.streamer[room_row] + 1,
                "timestamp": t,
            }
        )
        click = ev[ci].with_columns(pl.Series("watch_live_time", oc["watch"]))
        click.write_csv(out / "click.csv")
        ev.filter(pl.Series(~clicked)).write_csv(out / "negative.csv")
        counts["click"], counts["negative"] = click.height, int((~clicked).sum())
        for name in ("comment", "like", "gift"):
            inter[name].write_csv(out / f"{name}.csv")
            counts[name] = inter[name].height
        # room.csv: one row per CST date the room spans (start .. reported end)
        d0 = cst_day(rooms.start)
        d1 = cst_day(rooms.reported_end - 1)
        nd = np.maximum(d1 - d0 + 1, 1)
        rep = np.repeat(np.arange(rooms.live_id.size), nd)
        day = np.repeat(d0, nd) + (np.arange(rep.size) - np.repeat(np.cumsum(nd) - nd, nd))
        cats = np.asarray(CATEGORIES, dtype=object)
        room_df = pl.DataFrame(
            {
                "p_date": p_date(cst_midnight(day)),
                "live_id": rooms.live_id[rep],
                "streamer_id": rooms.streamer[rep] + 1,
                "live_type": rooms.live_type[rep].astype(np.int64),
                "start_timestamp": rooms.start[rep],
                "end_timestamp": rooms.reported_end[rep],
                "live_content_category": pl.Series(cats[rooms.category]).gather(pl.Series(rep)),
                "live_name_id": rooms.name_id[rep],
            }
        ).sort("p_date", "live_id")
        room_df.write_csv(out / "room.csv")
        counts["room_rows"], counts["room"] = room_df.height, int(rooms.live_id.size)
        users.profile.write_csv(out / "user.csv")
        st.profile.write_csv(out / "streamer.csv")
        counts["user"], counts["streamer"] = users.profile.height, st.profile.height
        emb = _title_embeddings(cfg, streams[6], st)
        np.save(out / "title_embeddings.npy", emb)
        counts["title_embeddings"] = int(emb.shape[0])
        # ---- ground truth
        rates = inter["_rates"]
        n = t.size
        full_rates = {
            name: np.full(n, np.nan) for name in ("comment_rate", "like_rate", "gift_prob")
        }
        wt = np.full(n, -1, dtype=np.int64)
        wt[ci] = oc["watch"]
        for name in full_rates:
            full_rates[name][ci] = rates[name].to_numpy()
        pl.DataFrame(
            {
                "user_id": user + 1,
                "live_id": rooms.live_id[room_row],
                "streamer_id": rooms.streamer[room_row] + 1,
                "timestamp": t,
                "p_click": oc["p"].astype(np.float32),
                "click_noise": oc["noise"].astype(np.float32),
                "drift_slope": oc["drift_slope"].astype(np.float32),
                "clicked": clicked,
                "source": source,
                "watch_live_time": wt,
                **{k: v.astype(np.float32) for k, v in full_rates.items()},
            }
        ).write_parquet(out / "truth" / "exposures.parquet")
        d = cfg.n_factors
        pl.DataFrame(
            {
                "user_id": np.arange(1, n_u + 1),
                "mu_per_min": mu,
                "activity": users.activity,
                **{f"f{k}": users.factors[:, k] for k in range(d)},
                **{f"drift{k}": users.drift[:, k] for k in range(d)},
                **{f"taste_{c}": users.taste[:, i] for i, c in enumerate(CATEGORIES)},
            }
        ).write_parquet(out / "truth" / "users.parquet")
        pl.DataFrame(
            {
                "streamer_id": np.arange(1, n_s + 1),
                "popularity": st.popularity,
                "category": cats[st.category],
                **{f"f{k}": st.factors[:, k] for k in range(d)},
            }
        ).write_parquet(out / "truth" / "streamers.parquet")
        pl.DataFrame(
            {"live_id": rooms.live_id, "true_end": rooms.true_end, "censored": rooms.true_end > WINDOW_END_MS}
        ).write_parquet(out / "truth" / "rooms.parquet")
        meta = {
            "generator_version": GENERATOR_VERSION,
            "config": asdict(cfg),
            "counts": counts,
            "click_bias_b0": float(oc["b0"]),
            "request_intensity": {
                "formula": "lambda_u(t) = mu_u * h[hour_cst(t)] * w[day(t)] + sum_{t_i < t} n * beta * exp(-beta * (t - t_i))",
                "events": "all exposures of the user (truth/exposures.parquet rows), clicked or not",
                "time_unit": "minute",
                "h": USER_HOUR_PROFILE.tolist(),
                "w": _day_weights().tolist(),
                "n": cfg.branching,
                "beta_per_min": 1.0 / cfg.excitation_minutes,
                "mu": "truth/users.parquet:mu_per_min",
            },
            "mark_intensities": {
                "click": "each exposure is clicked with probability p_click (truth/exposures.parquet)",
                "click_logit": "logit(p_click) = clean(t) + click_noise; clean(t) moves with the user's drift as "
                               "drift_slope * drift_fraction(t), drift_fraction = (t - window start) / 21 days - 1/2",
                "comment": "Poisson(comment_rate) comments per click, uniform on [t, t + watch_live_time)",
                "like": "Poisson(like_rate) likes per click, uniform on [t, t + watch_live_time)",
                "gift": "Bernoulli(gift_prob) per click; at t with prob 0.86, else uniform on [t, t + watch)",
                "cutoff": "events at or after the window end are dropped",
            },
        }
        (out / "truth" / "meta.json").write_text(json.dumps(meta, indent=2))
        return counts

    counts = step("write", write)
    bar.close()
    return SynthResult(out_dir=out, counts=counts, wall_s=time.perf_counter() - t0)
