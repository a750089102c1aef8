"""Retrieval data: items of one granularity, the user's past at any time t, and live-at-t candidate sampling.

Everything a retriever reads about a request ``(user, t)`` comes from events strictly before ``t``:

| array | content |
|---|---|
| ``user``, ``profile`` | user row and 20 profile buckets |
| ``hour``, ``weekday`` | CST hour and weekday of ``t`` |
| ``hist``, ``hist_gap`` | the last ``long_len`` clicked items, right-aligned, with log2-minute gap buckets to ``t`` |
| ``behaviour`` | per kind (comment, like, gift, long view) the last ``behaviour_len`` items |

Right-aligned: the most recent event is in the last column, padding (0) on the left. A long view is a click with
``watch_live_time >= 60 s``, counted once the session is over (``ts + watch < t``).

The generator reads the last ``short_len`` columns of ``hist``; the ranker reads all of it.

**Items.** Row 0 is padding / unknown. Streamer granularity: one row per streamer. Room granularity: one row per
``live_id``, carrying its streamer row, category, live type and title row so that a model can build a room vector
from shared parts (rooms are one broadcast each, far too cold for a free id table).

**Training examples** are the leave-one-out ``train`` clicks; the ``valid`` and ``test`` targets and their sampled
live-at-t negatives are the :class:`~recsys.data.builders.TopKEvalSet` of the protocol. Training negatives are sampled
per anchor among the items **live at the anchor's t** (never an item that was not live then, never the target), as
the retrieval brief recommends instead of time-invalid in-batch negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from recsys.data.builders import TopKEvalSet, leave_last_out, topk_eval_set
from recsys.data.live_index import LiveIndex
from recsys.data.loaders import KuaiLiveData
from recsys.data.ranking import (
    CategoricalVocab,
    EventHistory,
    IdIndex,
    _events,
    _profile_strings,
    _title_table,
    gap_bucket,
)
from recsys.data.schema import USER_PROFILE_COLUMNS, VOCABULARIES
from recsys.timeutil import MS_PER_HOUR, cst_hour, cst_weekday

Granularity = Literal["streamer", "room"]
GRANULARITIES: tuple[str, ...] = ("streamer", "room")
BEHAVIOURS: tuple[str, ...] = ("comment", "like", "gift", "long_view")
LONG_VIEW_S = 60  # a long view is a click watched at least this long
CATEGORIES: tuple[str, ...] = tuple(VOCABULARIES["live_content_category"])
N_LIVE_TYPES = 5  # 0..3 plus unknown
POPULARITY_WINDOW_MS = 24 * MS_PER_HOUR


@dataclass
class ItemCatalog:
    """Items of one granularity (row 0 = padding). For streamers, ``category`` is the streamer's most frequent room
    category and ``title_row``/``live_type`` are 0."""

    granularity: str
    index: IdIndex  # raw item ids (streamer_id or live_id) -> rows
    streamer_row: np.ndarray  # (n_items,) row into the streamer table (1..n_streamers)
    category: np.ndarray  # (n_items,) 0 = unknown, 1.. = CATEGORIES
    live_type: np.ndarray  # (n_items,) 0 = unknown, 1 + live_type
    title_row: np.ndarray  # (n_items,) row into ``titles`` (0 = none)
    titles: np.ndarray  # (n_titles + 1, 128) float32
    n_streamers: int  # streamer-table rows including padding

    @property
    def n_items(self) -> int:
        return int(self.streamer_row.size)

    def rows(self, raw_ids: np.ndarray) -> np.ndarray:
        return self.index.lookup(raw_ids)

    def raw_ids(self, rows: np.ndarray) -> np.ndarray:
        """Raw ids of item rows (0 for padding)."""
        rows = np.asarray(rows, np.int64)
        return np.where(rows > 0, self.index.ids[np.maximum(rows - 1, 0)], 0)


def _category_ids(values: pl.Series) -> np.ndarray:
    lookup = {c: i + 1 for i, c in enumerate(CATEGORIES)}
    return np.array([lookup.get(v, 0) for v in values.fill_null("<unk>").to_list()], dtype=np.int64)


def build_catalog(data: KuaiLiveData, granularity: Granularity, streamer_index: IdIndex) -> ItemCatalog:
    """The item table of one granularity from ``rooms`` (one row per live_id) and ``streamer``."""
    rooms = data.tables["rooms"].sort("live_id")
    titles = _title_table(data)
    if granularity == "room":
        index = IdIndex(rooms["live_id"].to_numpy().astype(np.int64))
        title = rooms["live_name_id"].fill_null(-1).to_numpy().astype(np.int64) + 1
        title = np.where((title > 0) & (title < titles.shape[0]), title, 0)
        cat = _category_ids(rooms["live_content_category"])
        ltype = np.clip(rooms["live_type"].fill_null(-1).to_numpy().astype(np.int64) + 1, 0, N_LIVE_TYPES - 1)
        streamer = streamer_index.lookup(rooms["streamer_id"].to_numpy())
        pad = np.zeros(1, np.int64)
        return ItemCatalog("room", index, np.r_[pad, streamer], np.r_[pad, cat], np.r_[pad, ltype],
                           np.r_[pad, title], titles, streamer_index.size)
    if granularity != "streamer":
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    n = streamer_index.size
    mode = (rooms.group_by("streamer_id", "live_content_category").len()
            .sort("len", "live_content_category", descending=[True, False])
            .unique("streamer_id", keep="first"))
    cat = np.zeros(n, np.int64)
    cat[streamer_index.lookup(mode["streamer_id"].to_numpy())] = _category_ids(mode["live_content_category"])
    cat[0] = 0
    zeros = np.zeros(n, np.int64)
    return ItemCatalog("streamer", streamer_index, np.arange(n, dtype=np.int64), cat, zeros, zeros.copy(),
                       titles, n)


def right_window(hist: EventHistory, user_rows: np.ndarray, end: np.ndarray, length: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(items [B, L], times [B, L]) of the ``length`` events before each end position, right-aligned: column
    ``L - 1`` is the most recent event, missing positions on the left are 0."""
    pos = np.asarray(end, np.int64)[:, None] - length + np.arange(length)[None, :]
    valid = pos >= hist.user_start[user_rows][:, None]
    if hist.items.size == 0:
        return np.zeros(pos.shape, np.int64), np.zeros(pos.shape, np.int64)
    pos = np.where(valid, pos, 0)
    return np.where(valid, hist.items[pos], 0), np.where(valid, hist.times[pos], 0)


@dataclass
class QueryArrays:
    """What a retriever reads about a batch of requests (numpy; see the module docstring)."""

    user: np.ndarray  # (B,)
    profile: np.ndarray  # (B, F)
    hour: np.ndarray  # (B,)
    weekday: np.ndarray  # (B,)
    hist: np.ndarray  # (B, L_long) item rows, right-aligned
    hist_gap: np.ndarray  # (B, L_long) gap buckets, 0 = padding
    behaviour: np.ndarray  # (B, len(BEHAVIOURS), L_b) item rows

    def __len__(self) -> int:
        return int(self.user.size)


@dataclass
class RetrievalDataset:
    """Users, items, histories and the protocol's targets of one granularity."""

    granularity: str
    catalog: ItemCatalog
    user_index: IdIndex
    user_profile: np.ndarray  # (n_users, F) profile ids, row 0 = unknown
    profile_vocab: CategoricalVocab
    histories: dict[str, EventHistory]  # "click" and BEHAVIOURS, items are catalog rows
    live: LiveIndex
    train_user: np.ndarray  # (n_train,) user rows of the training clicks
    train_item: np.ndarray  # (n_train,) target item rows
    train_time: np.ndarray  # (n_train,) ms
    eval_sets: dict[str, TopKEvalSet]  # "valid", "test"
    popularity: EventHistory  # clicks keyed by streamer row (user slot = streamer row), for the popularity scores
    long_len: int = 256
    short_len: int = 64
    behaviour_len: int = 20

    @property
    def profile_vocab_size(self) -> int:
        return self.profile_vocab.size

    @property
    def n_users(self) -> int:
        return self.user_index.size

    def query(self, user_rows: np.ndarray, times: np.ndarray) -> QueryArrays:
        """Query arrays of requests ``(user row, t)``, from events strictly before ``t``."""
        u = np.asarray(user_rows, np.int64)
        t = np.asarray(times, np.int64)
        click = self.histories["click"]
        hist, htime = right_window(click, u, click.end_positions(u, t), self.long_len)
        gap = np.where(hist > 0, gap_bucket(t[:, None] - htime), 0)
        behaviour = np.stack([
            right_window(self.histories[k], u, self.histories[k].end_positions(u, t), self.behaviour_len)[0]
            for k in BEHAVIOURS
        ], axis=1)
        return QueryArrays(user=u, profile=self.user_profile[u], hour=np.asarray(cst_hour(t), np.int64),
                           weekday=np.asarray(cst_weekday(t), np.int64), hist=hist, hist_gap=gap,
                           behaviour=behaviour)

    def live_items(self, t: int) -> np.ndarray:
        """Sorted item rows live at ``t``."""
        rows = self.live.live_rows(t)
        raw = self.live.streamer_id[rows] if self.granularity == "streamer" else self.live.live_id[rows]
        return np.unique(self.catalog.rows(raw))

    def sample_live_negatives(self, times: np.ndarray, targets: np.ndarray, n: int, rng: np.random.Generator
                              ) -> tuple[np.ndarray, np.ndarray]:
        """(items [B, n], valid [B, n]): per anchor, ``n`` items drawn uniformly among the rooms live at its ``t``
        (with replacement, streamers through their rooms), never the anchor's target. ``valid`` is False where the
        live pool was too small to fill the row."""
        t = np.asarray(times, np.int64)
        b = (t - self.live.origin) // self.live.bucket_ms
        nb = self.live.bucket_offsets.size - 1
        ok_b = (b >= 0) & (b < nb)
        bb = np.clip(b, 0, nb - 1)
        lo = self.live.bucket_offsets[bb]
        cnt = np.where(ok_b, self.live.bucket_offsets[bb + 1] - lo, 0)
        draws = 3 * n
        pick = lo[:, None] + np.floor(rng.random((t.size, draws)) * cnt[:, None]).astype(np.int64)
        rows = self.live.bucket_rows[np.minimum(pick, self.live.bucket_rows.size - 1)]
        live = (cnt[:, None] > 0) & (self.live.start[rows] <= t[:, None]) & (self.live.end[rows] > t[:, None])
        raw = self.live.streamer_id[rows] if self.granularity == "streamer" else self.live.live_id[rows]
        items = self.catalog.rows(raw)
        good = live & (items > 0) & (items != np.asarray(targets)[:, None])
        order = np.argsort(~good, axis=1, kind="stable")[:, :n]  # the first n good draws of each row
        return np.take_along_axis(items, order, 1) * np.take_along_axis(good, order, 1), \
            np.take_along_axis(good, order, 1)

    def streamer_clicks(self, items: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(clicks in the 24 h before ``t``, all clicks before ``t``) of each item's streamer; items [B, C], times [B]
        -> two int64 [B, C] arrays."""
        s = self.catalog.streamer_row[np.asarray(items, np.int64)]
        t = np.broadcast_to(np.asarray(times, np.int64)[:, None], s.shape)
        p = self.popularity
        before = p.end_positions(s.ravel(), t.ravel())
        since = p.end_positions(s.ravel(), (t - POPULARITY_WINDOW_MS).ravel())
        return (before - since).reshape(s.shape), (before - p.user_start[s.ravel()]).reshape(s.shape)

    def popularity_scores(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Popularity among live items: the streamer's clicks in the last 24 h, ties broken by all past clicks."""
        recent, total = self.streamer_clicks(items, times)
        return recent + 1e-3 * np.log1p(total)


def build_retrieval_dataset(data: KuaiLiveData, granularity: Granularity, n_negatives: int = 10_000,
                            seed: int = 42, long_len: int = 256, short_len: int = 64, behaviour_len: int = 20,
                            progress: bool = False) -> RetrievalDataset:
    """Leave-one-out retrieval data of one granularity from KuaiLive-format tables (click, rooms, user, streamer;
    comment/like/gift when present)."""
    t = data.tables
    for name in ("click", "rooms", "user", "streamer"):
        if name not in t:
            raise ValueError(f"the retrieval dataset needs the {name!r} table; load it with load_kuailive")
    if short_len > long_len:
        raise ValueError(f"short_len ({short_len}) must not exceed long_len ({long_len})")
    user_index = IdIndex(np.unique(t["user"]["user_id"].to_numpy()))
    streamer_index = IdIndex(np.unique(t["streamer"]["streamer_id"].to_numpy()))
    catalog = build_catalog(data, granularity, streamer_index)
    uprof = _profile_strings(t["user"].sort("user_id"), tuple(USER_PROFILE_COLUMNS))
    vocab = CategoricalVocab.fit(uprof, tuple(USER_PROFILE_COLUMNS))
    user_profile = np.vstack([np.zeros((1, len(USER_PROFILE_COLUMNS)), np.int64), vocab.encode(uprof)])

    key = "streamer_id" if granularity == "streamer" else "live_id"
    clicks = t["click"]
    tables = {"click": clicks, "comment": _events(t, "comment"), "like": _events(t, "like"),
              "gift": _events(t, "gift")}
    watch = clicks["watch_live_time"].fill_null(0).to_numpy().astype(np.int64)  # ms
    long_view = clicks.filter(pl.Series(watch >= LONG_VIEW_S * 1000))
    lv_end = long_view["timestamp"].to_numpy() + long_view["watch_live_time"].to_numpy().astype(np.int64)
    origin = int(min(int(df["timestamp"].min()) for df in tables.values() if df.height)) - 1
    histories: dict[str, EventHistory] = {}
    for name, df in tables.items():
        histories[name] = EventHistory.build(user_index.lookup(df["user_id"].to_numpy()), df["timestamp"].to_numpy(),
                                             catalog.rows(df[key].to_numpy()), user_index.size, origin)
    histories["long_view"] = EventHistory.build(
        user_index.lookup(long_view["user_id"].to_numpy()), lv_end,
        catalog.rows(long_view[key].to_numpy()), user_index.size, origin)
    popularity = EventHistory.build(streamer_index.lookup(clicks["streamer_id"].to_numpy()),
                                    clicks["timestamp"].to_numpy(), np.zeros(clicks.height, np.int64),
                                    streamer_index.size, origin - POPULARITY_WINDOW_MS)

    live = LiveIndex.from_rooms(t["rooms"])
    loo = leave_last_out(clicks, granularity).filter(pl.col("split") == "train")
    evals = topk_eval_set(clicks, live, granularity, n_negatives=n_negatives, seed=seed, progress=progress)
    eval_sets = {}
    for split in ("valid", "test"):
        mask = (evals.targets["split"] == split).to_numpy()
        rows = np.flatnonzero(mask)
        offsets = np.r_[0, np.cumsum(evals.neg_offsets[rows + 1] - evals.neg_offsets[rows])]
        items = np.concatenate([evals.negatives(i) for i in rows]) if rows.size else np.empty(0, np.int64)
        eval_sets[split] = TopKEvalSet(granularity, evals.targets.filter(pl.Series(mask)), offsets, items,
                                       n_negatives, seed, evals.exclude_history)
    return RetrievalDataset(
        granularity=granularity, catalog=catalog, user_index=user_index, user_profile=user_profile,
        profile_vocab=vocab, histories=histories, live=live,
        train_user=user_index.lookup(loo["user_id"].to_numpy()), train_item=catalog.rows(loo["item_id"].to_numpy()),
        train_time=loo["timestamp"].to_numpy().astype(np.int64), eval_sets=eval_sets, popularity=popularity,
        long_len=long_len, short_len=short_len, behaviour_len=behaviour_len,
    )


def eval_candidates(ds: RetrievalDataset, split: str, full_pool: bool = False, rows: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user rows, times, candidates [n, C], valid [n, C]) of a split's targets (``rows`` of it, all by default);
    column 0 is the target. ``full_pool`` ranks against every item live at t instead of the sampled negatives."""
    ev = ds.eval_sets[split]
    rows = np.arange(ev.targets.height) if rows is None else np.asarray(rows, np.int64)
    users = ds.user_index.lookup(ev.targets["user_id"].to_numpy()[rows])
    times = ev.targets["timestamp"].to_numpy().astype(np.int64)[rows]
    target = ds.catalog.rows(ev.targets["item_id"].to_numpy()[rows])
    if full_pool:
        pools = []
        for tgt, ts in zip(target, times):
            p = ds.live_items(int(ts))
            pools.append(p[p != tgt])
        width = max((p.size for p in pools), default=0)
        negs = np.zeros((times.size, width), np.int64)
        mask = np.arange(width)[None, :] < np.array([p.size for p in pools])[:, None]
        if width:
            negs[mask] = np.concatenate(pools)
    else:
        raw, mask = ev.padded(rows)
        negs = ds.catalog.rows(raw) * mask
    cands = np.concatenate([target[:, None], negs], axis=1)
    valid = np.concatenate([np.ones((times.size, 1), bool), mask], axis=1)
    return users, times, cands, valid


__all__ = ["BEHAVIOURS", "GRANULARITIES", "ItemCatalog", "QueryArrays", "RetrievalDataset", "build_catalog",
           "build_retrieval_dataset", "eval_candidates", "right_window"]
