"""Temporal-point-process tasks: the event stream cut into time windows, one sequence per (window, user).

The continual protocol of the TPP brief (§7): consecutive CST windows of ``window_days`` days are the tasks; within
a window each user's marked events (0 click, 1 like, 2 comment, 3 gift; ties broken by that order plus 1 ms, see
:func:`recsys.data.builders.tpp_windows`) form one sequence, truncated to the last ``max_len`` events; the users of
each window are split 70/10/20 into train/dev/test with a seeded permutation.

Times are minutes since the window start divided by ``time_scale`` (the median inter-event minutes of the first
window's training sequences), so that the median gap is about 1 and one unit is the same in every task;
``dtime_max`` is the 99th percentile of the first training window's gaps in those units (the thinning horizon).
Events tied at the same millisecond (86 % of gifts share their click's timestamp) are already ordered and 1 ms apart;
after rescaling they are kept at least ``MIN_GAP`` units apart so that float32 times are strictly increasing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from recsys.data.builders import tpp_windows
from recsys.data.schema import EVENT_TYPES
from recsys.timeutil import WINDOW_START_MS, cst_day, cst_midnight

TPP_SPLITS: tuple[str, ...] = ("train", "dev", "test")
SPLIT_SHARES: tuple[float, float, float] = (0.7, 0.1, 0.2)


@dataclass
class SequenceArrays:
    """Padded event sequences (left-aligned: valid events first, padding after)."""

    user_id: np.ndarray  # (N,)
    times: np.ndarray  # (N, S) float32, in time_scale units since the window start
    types: np.ndarray  # (N, S) int64 in 0..n_types-1
    valid: np.ndarray  # (N, S) bool

    def __len__(self) -> int:
        return int(self.user_id.size)

    @property
    def n_events(self) -> int:
        return int(self.valid.sum())

    def take(self, rows: np.ndarray) -> "SequenceArrays":
        rows = np.asarray(rows)
        width = int(self.valid[rows].sum(1).max(initial=1))
        return SequenceArrays(self.user_id[rows], self.times[rows, :width], self.types[rows, :width],
                              self.valid[rows, :width])


@dataclass
class TPPTask:
    """One time window: its train / dev / test sequences."""

    window: int
    splits: dict[str, SequenceArrays]
    start_ms: int  # window start (CST midnight)


@dataclass
class TPPTasks:
    tasks: list[TPPTask]
    time_scale_min: float
    dtime_max: float
    n_types: int = len(EVENT_TYPES)
    info: dict[str, float] = field(default_factory=dict)
    #: the raw per-window sequences the tasks were cut from (same order as ``tasks``), for ground-truth comparisons
    sequences: list[WindowSequences] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.tasks)


MIN_GAP = 1e-4  # time units between tied events after rescaling, so float32 times stay strictly increasing


def separate_ties(t: np.ndarray, gap: float = MIN_GAP) -> np.ndarray:
    """Push each time to at least ``gap`` after the previous one (order kept; untied times move by < gap * n)."""
    steps = gap * np.arange(t.size)
    return np.maximum.accumulate(t - steps) + steps


def _pad(times: list[np.ndarray], types: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    width = max((t.size for t in times), default=1)
    n = len(times)
    t_out = np.zeros((n, width), np.float32)
    k_out = np.zeros((n, width), np.int64)
    valid = np.arange(width)[None, :] < np.array([t.size for t in times])[:, None]
    if n:
        t_out[valid] = np.concatenate(times)
        k_out[valid] = np.concatenate(types)
    return t_out, k_out, valid


def split_users(users: np.ndarray, seed: int, window: int) -> dict[str, np.ndarray]:
    """Row indices of ``users`` per split (70/10/20), a seeded permutation per window."""
    order = np.random.default_rng([seed, window]).permutation(users.size)
    n_train = int(round(SPLIT_SHARES[0] * users.size))
    n_dev = int(round(SPLIT_SHARES[1] * users.size))
    return {"train": np.sort(order[:n_train]), "dev": np.sort(order[n_train:n_train + n_dev]),
            "test": np.sort(order[n_train + n_dev:])}


@dataclass
class WindowSequences:
    """The raw sequences of one window: users and their event times (minutes since the window start, ties 1 ms
    apart), marks and the events' own epoch-ms timestamps (ties equal; what ground truth is keyed by)."""

    window: int
    users: np.ndarray
    times_min: list[np.ndarray]
    types: list[np.ndarray]
    timestamps_ms: list[np.ndarray] = field(default_factory=list)

    def rows_of(self, users: np.ndarray) -> np.ndarray:
        """Row index of each of ``users`` here (a user has one sequence per window); ``KeyError`` for a stranger."""
        row = {int(u): i for i, u in enumerate(self.users)}
        return np.array([row[int(u)] for u in users], dtype=np.int64)


def window_sequences(events: pl.DataFrame, window_days: int = 3, max_len: int = 128, min_events: int = 2
                     ) -> list[WindowSequences]:
    """Per-window sequences of users with at least ``min_events`` events, in window order."""
    if min_events < 2:
        raise ValueError(f"min_events must be >= 2 (a sequence needs one inter-event interval), got {min_events}")
    windows = tpp_windows(events, window_days=window_days, max_len=max_len)
    windows = windows.filter(pl.col("time_min").list.len() >= min_events)
    out = []
    for w in sorted(windows["window"].unique().to_list()):
        part = windows.filter(pl.col("window") == w)
        out.append(WindowSequences(int(w), part["user_id"].to_numpy(),
                                   [np.asarray(x, np.float64) for x in part["time_min"].to_list()],
                                   [np.asarray(x, np.int64) for x in part["type"].to_list()],
                                   [np.asarray(x, np.int64) for x in part["timestamp"].to_list()]))
    return out


def time_scale(first: WindowSequences, seed: int) -> tuple[float, float, float]:
    """(minutes per time unit, dtime_max in units, censored share) from the training users of the first window."""
    train = split_users(first.users, seed, first.window)["train"]
    gaps = np.concatenate([np.diff(first.times_min[i]) for i in train]) if train.size else np.ones(1)
    positive = gaps[gaps > 0]
    scale = float(np.median(positive)) if positive.size else 1.0
    dtime_max = float(np.percentile(gaps / scale, 99)) if gaps.size else 1.0
    return scale, dtime_max, float(np.mean(gaps / scale > dtime_max)) if gaps.size else 0.0


def make_task(seqs: WindowSequences, scale: float, seed: int, window_days: int) -> TPPTask:
    """The train / dev / test :class:`SequenceArrays` of one window in ``scale`` units."""
    splits = {}
    for name, rows in split_users(seqs.users, seed, seqs.window).items():
        t, k, v = _pad([separate_ties(seqs.times_min[i] / scale) for i in rows], [seqs.types[i] for i in rows])
        splits[name] = SequenceArrays(seqs.users[rows], t, k, v)
    return TPPTask(window=seqs.window, splits=splits, start_ms=window_start_ms(seqs.window, window_days))


def window_start_ms(window: int, window_days: int) -> int:
    """Epoch ms of the CST midnight that starts task window ``window`` (as :func:`recsys.data.builders.tpp_windows`
    numbers them)."""
    return int(cst_midnight(int(cst_day(WINDOW_START_MS)) + window * window_days))


def build_tpp_tasks(events: pl.DataFrame, window_days: int = 3, max_len: int = 128, seed: int = 0,
                    min_events: int = 2) -> TPPTasks:
    """Tasks from the marked event table of :func:`recsys.data.builders.event_sequences`."""
    raw = window_sequences(events, window_days, max_len, min_events)
    if not raw:
        raise ValueError("no window holds a user with at least two events")
    scale, dtime_max, censored = time_scale(raw[0], seed)
    tasks = [make_task(w, scale, seed, window_days) for w in raw]
    info = {"sequences": float(sum(len(w.users) for w in raw)),
            "events": float(sum(sum(t.size for t in w.times_min) for w in raw)),
            "median_gap_min": scale, "censored_share": censored}
    return TPPTasks(tasks=tasks, time_scale_min=scale, dtime_max=dtime_max, info=info, sequences=raw)


__all__ = ["MIN_GAP", "SPLIT_SHARES", "TPP_SPLITS", "SequenceArrays", "TPPTask", "TPPTasks", "WindowSequences",
           "build_tpp_tasks", "make_task", "separate_ties", "split_users", "time_scale", "window_sequences",
           "window_start_ms"]
