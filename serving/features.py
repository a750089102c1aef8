"""Model inputs of one request, encoded from the online store the way the training datasets encode them.

Exact at serving (same definition as training, read from the stream-fed store): the click / comment / like / gift
histories (the store keeps the last ``OnlineFeatureSpec.seq_len`` of each), their time gaps, the candidate's live
type, category, room age, CST hour and weekday, the room's recent entries, the streamer's day clicks (the GRank
ranker's popularity input). From the export's :class:`~recsys.data.ranking.ServingTables` (batch features frozen at
the export's ``as_of``): profiles, titles, the per-user and per-streamer dense groups. Approximated (the online store
keeps no impression log, no watch times and no 30-minute room windows): see :data:`DENSE_SOURCES`; the skew is
documented in ARCHITECTURE.md. The retriever's long-view behaviour (watch >= 60 s) needs watch times: it is empty.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from models.ranking.export import LoadedRanker
from models.retrieval.export import LoadedRetriever
from recsys.data.ranking import (
    CONTEXT_COLUMNS,
    FeatureArrays,
    age_bucket,
    gap_bucket,
    scale_dense,
    smoothed_ctr,
)
from recsys.data.retrieval import BEHAVIOURS, QueryArrays
from recsys.feed.env import n_groups_of
from recsys.stream.features import LiveRoom, RecentEvent
from recsys.timeutil import MS_PER_HOUR, MS_PER_MINUTE, cst_hour, cst_hour_angle, cst_weekday
from serving.store_reader import UserState

#: Where each dense ranker feature comes from at serving: ``exact`` (same definition as training, online),
#: ``batch`` (materialised at the export's ``as_of``), or ``approx: <what is used instead>``.
DENSE_SOURCES: dict[str, str] = {
    **{c: "batch" for c in ("u_clicks", "u_watch_min", "u_comments", "u_likes", "u_gifts", "u_exposures", "u_ctr",
                            "s_clicks", "s_gifts", "s_exposures", "s_ctr")},
    "us_clicks": "approx: clicks on the streamer among the user's last seq_len clicks",
    "us_watch_min": "approx: 0 (the store keeps no watch times)",
    "us_comments": "approx: among the user's last seq_len comments",
    "us_likes": "approx: among the user's last seq_len likes",
    "us_gifts": "approx: among the user's last seq_len gifts",
    "us_hours_since_last": "approx: from the user's last seq_len clicks",
    "us_never": "approx: no click on the streamer among the last seq_len",
    "us_exposures": "approx: us_clicks (the store keeps no impressions)",
    "us_ctr": "approx: smoothed from the two approximations above",
    "uc_clicks": "approx: 0 (no per-category counters online)",
    "uc_exposures": "approx: 0",
    "uc_ctr": "approx: the prior",
    "room_clicks_5m": "exact",
    "room_clicks_30m": "approx: the 5-minute entries (a lower bound)",
    "room_comments_30m": "approx: 0",
    "room_gifts_30m": "approx: 0",
    "room_clicks_before": "approx: the 5-minute entries (a lower bound)",
    "room_age_min": "exact",
}


def hour_weekday(now: int) -> tuple[int, int]:
    """CST hour and weekday of a request time (the context columns of both encoders)."""
    return int(cst_hour(now)), int(cst_weekday(now))


# ------------------------------------------------------------------------------------------------------ retrieval
class RetrievalEncoder:
    """:class:`QueryArrays` of one request for a loaded retriever."""

    def __init__(self, retriever: LoadedRetriever) -> None:
        self.r = retriever
        opts = retriever.config.options
        self.long_len = int(opts.get("long_len", opts.get("short_len", 64)))
        self.behaviour_len = int(retriever.meta.get("behaviour_len", 20))
        self.streamer_items = retriever.catalog.granularity == "streamer"

    def known_user(self, user_id: int) -> bool:
        return bool(self.r.user_index.lookup(np.array([user_id]))[0] > 0)

    def _rows(self, events: Sequence[RecentEvent]) -> np.ndarray:
        raw = [e.streamer_id if self.streamer_items else e.live_id for e in events]
        return self.r.catalog.rows(np.asarray(raw, np.int64))

    def _right(self, events: Sequence[RecentEvent], length: int) -> tuple[np.ndarray, np.ndarray]:
        ev = list(events)[-length:]
        items, times = np.zeros(length, np.int64), np.zeros(length, np.int64)
        if ev:
            items[length - len(ev):] = self._rows(ev)
            times[length - len(ev):] = [e.time for e in ev]
        return items, times

    def query(self, state: UserState) -> QueryArrays:
        now = state.now
        user = self.r.user_index.lookup(np.array([state.user_id]))
        hist, htime = self._right(state.recent.get("click", []), self.long_len)
        gap = np.where(hist > 0, gap_bucket(now - htime), 0)
        behaviour = np.zeros((1, len(BEHAVIOURS), self.behaviour_len), np.int64)
        for j, kind in enumerate(BEHAVIOURS):
            if kind in state.recent:  # long_view needs watch times the store does not keep
                behaviour[0, j] = self._right(state.recent[kind], self.behaviour_len)[0]
        hour, weekday = hour_weekday(now)
        return QueryArrays(user=user, profile=self.r.user_profile[user], hour=np.array([hour]),
                           weekday=np.array([weekday]), hist=hist[None], hist_gap=gap[None], behaviour=behaviour)


# ------------------------------------------------------------------------------------------------------ ranking
class RankingEncoder:
    """:class:`FeatureArrays` of one request's candidates for a loaded ranker (row 0 carries the user's histories,
    shared by every row through ``user_of``)."""

    def __init__(self, ranker: LoadedRanker) -> None:
        if ranker.tables is None:
            raise ValueError("this ranker export has no serving.npz (profile tables and batch features); export it "
                             "again with `recsys train ranker`")
        self.ranker = ranker
        self.spec = ranker.model.spec
        self.tables = ranker.tables
        self.context_ids = self.spec.context_vocab.value_ids()
        if tuple(self.spec.context_vocab.columns) != CONTEXT_COLUMNS:
            raise ValueError(f"the ranker's context columns {self.spec.context_vocab.columns} are not "
                             f"{CONTEXT_COLUMNS}")
        self.columns = [c for cols in self.spec.dense_features.values() for c in cols]
        unknown = sorted(set(self.columns) - set(DENSE_SOURCES))
        if unknown:
            raise ValueError(f"the ranker reads dense features the service cannot build: {unknown}")

    def _context(self, rooms: Sequence[LiveRoom], now: int) -> np.ndarray:
        hour, weekday = hour_weekday(now)
        ltype, cat, hid, wid, aid = self.context_ids
        ages = age_bucket(np.array([(now - r.start) / MS_PER_MINUTE for r in rooms], np.float64))
        out = np.empty((len(rooms), 5), np.int64)
        out[:, 0] = [ltype.get(str(r.live_type), 0) for r in rooms]
        out[:, 1] = [cat.get(r.category if r.category and r.category != "<unk>" else "<null>", 0) for r in rooms]
        out[:, 2] = hid.get(str(hour), 0)
        out[:, 3] = wid.get(str(weekday), 0)
        out[:, 4] = [aid.get(str(int(a)), 0) for a in ages]
        return out

    def _history(self, state: UserState, b: int) -> tuple[dict, dict, np.ndarray]:
        hist, hist_len = {}, {}
        gap = np.zeros((b, self.spec.seq_len), np.int64)
        for key, length in self.spec.seq_lengths.items():
            ev = state.recent.get(key.removeprefix("hist_"), [])[-length:]
            items, lens = np.zeros((b, length), np.int64), np.zeros(b, np.int64)
            if ev:
                items[0, :len(ev)] = self.ranker.streamer_index.lookup(np.array([e.streamer_id for e in ev]))
                lens[0] = len(ev)
                if key == "hist_click":
                    gap[0, :len(ev)] = gap_bucket(state.now - np.array([e.time for e in ev]))
            hist[key], hist_len[key] = items, lens
        return hist, hist_len, gap

    def _dense(self, state: UserState, urow: int, srows: np.ndarray, rooms: Sequence[LiveRoom],
               entries: np.ndarray) -> np.ndarray:
        now, b = state.now, len(rooms)
        sids = np.array([r.streamer_id for r in rooms], np.int64)
        recent = state.recent

        def per_streamer(kind: str) -> np.ndarray:
            ev = np.array([e.streamer_id for e in recent.get(kind, [])], np.int64)
            return (ev[None, :] == sids[:, None]).sum(1).astype(np.float64) if ev.size else np.zeros(b)

        clicks = per_streamer("click")
        last = {}
        for e in recent.get("click", []):
            last[e.streamer_id] = e.time
        since = np.array([(now - last[s]) / MS_PER_HOUR if s in last else 0.0 for s in sids])
        cols: dict[str, np.ndarray] = {}
        for j, c in enumerate(self.spec.dense_features["user"]):
            cols[c] = np.full(b, self.tables.user_dense[urow, j])
        for j, c in enumerate(self.spec.dense_features["streamer"]):
            cols[c] = self.tables.streamer_dense[srows, j]
        cols.update({
            "us_clicks": clicks, "us_watch_min": np.zeros(b), "us_comments": per_streamer("comment"),
            "us_likes": per_streamer("like"), "us_gifts": per_streamer("gift"), "us_hours_since_last": since,
            "us_never": (clicks == 0).astype(np.float64), "us_exposures": clicks,
            "us_ctr": smoothed_ctr(clicks, clicks), "uc_clicks": np.zeros(b), "uc_exposures": np.zeros(b),
            "uc_ctr": smoothed_ctr(np.zeros(b), np.zeros(b)),
            "room_clicks_5m": entries.astype(np.float64), "room_clicks_30m": entries.astype(np.float64),
            "room_comments_30m": np.zeros(b), "room_gifts_30m": np.zeros(b),
            "room_clicks_before": entries.astype(np.float64),
            "room_age_min": np.array([max(now - r.start, 0) / MS_PER_MINUTE for r in rooms]),
        })
        return scale_dense(np.column_stack([cols[c] for c in self.columns]))

    def arrays(self, state: UserState, rooms: Sequence[LiveRoom], entries: np.ndarray | None) -> FeatureArrays:
        b = len(rooms)
        urow = int(self.ranker.user_index.lookup(np.array([state.user_id]))[0])
        srows = self.ranker.streamer_index.lookup(np.array([r.streamer_id for r in rooms], np.int64))
        ent = np.zeros(b, np.int64) if entries is None else np.asarray(entries, np.int64)
        hist, hist_len, gap = self._history(state, b)
        title = self.tables.title_table[self.tables.title_rows(np.array([r.live_id for r in rooms], np.int64))]
        return FeatureArrays(
            user_idx=np.full(b, urow, np.int64), streamer_idx=srows,
            user_profile=np.repeat(self.tables.user_profile[urow][None], b, axis=0),
            streamer_profile=self.tables.streamer_profile[srows], context=self._context(rooms, state.now),
            title=np.asarray(title, np.float32), dense=self._dense(state, urow, srows, rooms, ent), hist=hist,
            hist_len=hist_len, hist_gap=gap, time_ms=np.full(b, state.now, np.int64),
        )


# ------------------------------------------------------------------------------------------------------ batching
def stack_queries(parts: Sequence[QueryArrays]) -> QueryArrays:
    """One :class:`QueryArrays` of the requests of a batch (rows in order)."""
    return QueryArrays(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                          for f in dataclasses.fields(QueryArrays)})


def concat_features(parts: Sequence[FeatureArrays]) -> tuple[FeatureArrays, np.ndarray, np.ndarray]:
    """The candidates of a batch of requests as one :class:`FeatureArrays`, ``user_of`` (each row reads the histories
    of its request's first row) and the row offsets of the requests (``len(parts) + 1``)."""
    sizes = np.array([len(p) for p in parts], np.int64)
    offsets = np.r_[0, np.cumsum(sizes)]
    user_of = np.repeat(offsets[:-1], sizes)

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    keys = parts[0].hist.keys()
    return FeatureArrays(
        user_idx=cat("user_idx"), streamer_idx=cat("streamer_idx"), user_profile=cat("user_profile"),
        streamer_profile=cat("streamer_profile"), context=cat("context"), title=cat("title"), dense=cat("dense"),
        hist={k: np.concatenate([p.hist[k] for p in parts]) for k in keys},
        hist_len={k: np.concatenate([p.hist_len[k] for p in parts]) for k in keys}, hist_gap=cat("hist_gap"),
        time_ms=cat("time_ms"),
    ), user_of, offsets


# ------------------------------------------------------------------------------------------------------ allocation
def allocation_features(names: Sequence[str], *, p_click: float, watch_min: float, log_popularity: float,
                        fatigue: float, request_index: int, now: int, has_candidate: bool, group: int) -> np.ndarray:
    """The allocator's state ``(1, F)`` in the column order ``names`` (:func:`recsys.feed.env.feature_names`); the
    candidate columns are 0 without a candidate, as in the environment."""
    angle = float(cst_hour_angle(now))
    has = 1.0 if has_candidate else 0.0
    values = {"p_click_hat": p_click * has, "watch_hat": watch_min * has, "score_hat": p_click * watch_min * has,
              "log_popularity": log_popularity * has, "fatigue": fatigue, "request_index": float(request_index),
              "hour_sin": math.sin(angle), "hour_cos": math.cos(angle), "has_candidate": has}
    try:
        n_groups_of(names)
    except ValueError as exc:
        raise ValueError(f"unexpected allocator feature layout: {exc}") from None
    x = np.zeros((1, len(names)))
    for j, n in enumerate(names):
        x[0, j] = values[n] if n in values else float(n == f"group_{group}")
    return x


__all__ = ["DENSE_SOURCES", "RankingEncoder", "RetrievalEncoder", "allocation_features", "concat_features",
           "hour_weekday", "stack_queries"]
