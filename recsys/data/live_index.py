"""Which rooms and streamers are live at time t.

Rule (project convention, as the official ``preneg.py``): a room is live on the half-open interval
``[start, end)``; when a streamer has several rooms live at t, the one with the latest start wins.

Two structures answer the two kinds of question fast:
- time buckets (default 15 min) listing the rooms that overlap each bucket: "all rooms live at t" filters a few
  thousand candidates instead of scanning every room;
- rooms sorted by (streamer, start) with a per-streamer running max of ``end``: "the room of streamer s at t" is one
  binary search, vectorised over many (s, t) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.timeutil import MS_PER_MINUTE

_KEY_SHIFT = 36  # (streamer << 36) | (start - origin): 2**36 ms ~ 795 days of start times


@dataclass
class LiveIndex:
    """Live-at-time index over rooms. Arrays are aligned and sorted by ``start`` (then live_id)."""

    live_id: np.ndarray
    streamer_id: np.ndarray
    start: np.ndarray
    end: np.ndarray
    bucket_ms: int
    origin: int
    bucket_offsets: np.ndarray  # (n_buckets + 1,) into bucket_rows
    bucket_rows: np.ndarray  # room rows overlapping each bucket
    by_streamer: np.ndarray  # room rows sorted by (streamer, start)
    streamer_keys: np.ndarray  # (streamer << 36) | (start - origin), aligned with by_streamer
    streamer_run_max_end: np.ndarray  # running max of end within each streamer, aligned with by_streamer
    id_order: np.ndarray | None = None  # rows sorted by live_id, built on first is_live()

    @classmethod
    def from_rooms(cls, rooms: pl.DataFrame, bucket_ms: int = 15 * MS_PER_MINUTE) -> "LiveIndex":
        """Build from a table with ``live_id, streamer_id, start_timestamp, end_timestamp`` (one row per room)."""
        if rooms.height == 0:
            raise ValueError("LiveIndex needs at least one room")
        r = rooms.select("live_id", "streamer_id", "start_timestamp", "end_timestamp").sort(
            "start_timestamp", "live_id"
        )
        live_id = r["live_id"].to_numpy().astype(np.int64)
        streamer = r["streamer_id"].to_numpy().astype(np.int64)
        start = r["start_timestamp"].to_numpy().astype(np.int64)
        end = r["end_timestamp"].to_numpy().astype(np.int64)
        return cls.from_arrays(live_id, streamer, start, end, bucket_ms)

    @classmethod
    def from_arrays(
        cls, live_id: np.ndarray, streamer_id: np.ndarray, start: np.ndarray, end: np.ndarray,
        bucket_ms: int = 15 * MS_PER_MINUTE,
    ) -> "LiveIndex":
        order = np.lexsort((live_id, start))
        live_id, streamer_id, start, end = (np.ascontiguousarray(a[order]) for a in (live_id, streamer_id, start, end))
        origin = int(start.min())
        if int(start.max()) - origin >= 1 << _KEY_SHIFT:
            raise ValueError("room start times span more than 795 days; LiveIndex cannot key them")
        # bucket lists: room i overlaps buckets [b0, b1] (end exclusive); zero-length rooms are never live
        valid = end > start
        b0 = (start - origin) // bucket_ms
        b1 = (end - 1 - origin) // bucket_ms
        counts = np.where(valid, b1 - b0 + 1, 0)
        rows = np.repeat(np.arange(len(start)), counts)
        within = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        buckets = np.repeat(b0, counts) + within
        n_buckets = int(b1[valid].max()) + 1 if valid.any() else 1
        order_b = np.argsort(buckets, kind="stable")
        bucket_rows = rows[order_b].astype(np.int64)
        bucket_offsets = np.zeros(n_buckets + 1, dtype=np.int64)
        np.cumsum(np.bincount(buckets, minlength=n_buckets), out=bucket_offsets[1:])
        # per-streamer order
        by_streamer = np.lexsort((start, streamer_id))
        keys = (streamer_id[by_streamer] << _KEY_SHIFT) | (start[by_streamer] - origin)
        run_max = _grouped_running_max(streamer_id[by_streamer], end[by_streamer])
        return cls(live_id, streamer_id, start, end, bucket_ms, origin, bucket_offsets, bucket_rows,
                   by_streamer, keys, run_max)

    @property
    def n_rooms(self) -> int:
        return int(self.live_id.size)

    def _candidate_rows(self, t: int) -> np.ndarray:
        b = (int(t) - self.origin) // self.bucket_ms
        if b < 0 or b >= self.bucket_offsets.size - 1:
            return np.empty(0, dtype=np.int64)
        return self.bucket_rows[self.bucket_offsets[b]: self.bucket_offsets[b + 1]]

    def live_rows(self, t: int) -> np.ndarray:
        """Row indices (into the index arrays) of rooms live at ``t``."""
        cand = self._candidate_rows(t)
        return cand[(self.start[cand] <= t) & (self.end[cand] > t)]

    def live_rooms(self, t: int) -> np.ndarray:
        """Sorted live_ids of rooms live at ``t``."""
        return np.sort(self.live_id[self.live_rows(t)])

    def live_streamers(self, t: int) -> np.ndarray:
        """Sorted unique streamer_ids with at least one room live at ``t``."""
        return np.unique(self.streamer_id[self.live_rows(t)])

    def n_live(self, times: np.ndarray) -> np.ndarray:
        """Number of rooms live at each time."""
        return np.array([self.live_rows(int(t)).size for t in np.asarray(times)], dtype=np.int64)

    def room_of_streamer(self, streamer_ids: np.ndarray, times: np.ndarray | int) -> np.ndarray:
        """live_id of the room of each streamer live at each time (latest start wins), 0 where not live.

        Vectorised over pairs; ``times`` may be a scalar. Exact also when a streamer's rooms overlap.
        """
        s = np.asarray(streamer_ids, dtype=np.int64)
        t = np.broadcast_to(np.asarray(times, dtype=np.int64), s.shape)
        out = np.zeros(s.shape, dtype=np.int64)
        rel = t - self.origin
        ok_time = rel >= 0
        q = (s << _KEY_SHIFT) | np.clip(rel, 0, (1 << _KEY_SHIFT) - 1)
        pos = np.searchsorted(self.streamer_keys, q, side="right") - 1
        srt = self.streamer_id[self.by_streamer]
        pending = ok_time & (pos >= 0)
        pending[pending] &= srt[pos[pending]] == s[pending]
        # a room of s with start <= t exists; some room up to pos is live iff the running max end > t
        pending[pending] &= self.streamer_run_max_end[pos[pending]] > t[pending]
        idx = np.flatnonzero(pending)
        p = pos[idx]
        while idx.size:
            rows = self.by_streamer[p]
            live = self.end[rows] > t[idx]
            out[idx[live]] = self.live_id[rows[live]]
            idx, p = idx[~live], p[~live] - 1  # step back to the previous room of the same streamer
        return out

    def is_live(self, live_ids: np.ndarray, times: np.ndarray | int) -> np.ndarray:
        """Whether each room is live at each time (False for unknown live_ids)."""
        if self.id_order is None:
            self.id_order = np.argsort(self.live_id, kind="stable")
        ids = np.asarray(live_ids, dtype=np.int64)
        t = np.broadcast_to(np.asarray(times, dtype=np.int64), ids.shape)
        sorted_ids = self.live_id[self.id_order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, sorted_ids.size - 1)
        known = sorted_ids[pos] == ids
        rows = self.id_order[pos]
        return known & (self.start[rows] <= t) & (self.end[rows] > t)


def _grouped_running_max(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Running max of ``values`` restarting at each change of ``groups`` (groups must be contiguous)."""
    if values.size == 0:
        return values.copy()
    # shift each group by a large offset so that a global running max never crosses group boundaries
    starts = np.r_[True, groups[1:] != groups[:-1]]
    gid = np.cumsum(starts) - 1
    lo, hi = values.min(), values.max()
    span = hi - lo + 1
    shifted = (values - lo) + gid * span
    return np.maximum.accumulate(shifted) - gid * span + lo
