"""Ranking features: everything the multi-task ranker reads about an exposure (user, room, t), from the past only.

The layout follows the token groups of the ranking brief (§9):

| group | content | arrays |
|---|---|---|
| user profile | user id, 20 profile buckets, past activity counts | ``user_idx``, ``user_profile``, dense ``user`` |
| streamer profile | candidate streamer id, 22 profile buckets, past popularity | ``streamer_idx``, ``streamer_profile``, dense ``streamer`` |
| room and context | live type, category, CST hour and weekday, room-age bucket, title embedding | ``context``, ``title`` |
| short-term interest | the user's last ``seq_len`` clicked streamers with time-gap buckets | ``hist["hist_click"]``, ``hist_gap`` |
| multi-behaviour | the user's last ``behaviour_len`` commented / liked / gifted streamers | ``hist["hist_comment"|...]`` |
| user x streamer | past clicks, finished watch minutes, comments, likes, gifts on this streamer; hours since last visit | dense ``cross`` |
| real-time | clicks / comments / gifts in the room in the last 5 and 30 minutes, room age | dense ``realtime`` |

**Point in time.** A feature of a sample at ``t`` reads events with timestamp strictly before ``t``; a past click's
watch time counts only once the session is over (``ts + watch <= t``). Histories are stored once, sorted by
(user, time), and every sample keeps the *end position* of its window (``searchsorted(..., side="left")``), so a
batch gathers ``[end - L, end)`` and can never see ``t`` or later.

**Labels** (clicked rows only, except click): watch time as ``log1p(seconds)``; comment / like / gift when the user
did it in the same room during the watched session ``[t, t + watch]``; gift value = the sum of those gift prices.

``FeatureArrays`` is the model input in plain numpy, shared by training (from the tables) and serving (from the
online store); :class:`RankingFeatureSpec` is what a model needs to be built and served (vocabulary sizes and
encoders), saved next to every exported model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.builders import attach_oracle, ctr_samples
from recsys.data.features import context_features, count_before, count_window, last_before, sum_before
from recsys.data.loaders import KuaiLiveData
from recsys.data.schema import STREAMER_PROFILE_COLUMNS, TITLE_EMBEDDING_DIM, USER_PROFILE_COLUMNS, VOCABULARIES
from recsys.timeutil import MS_PER_HOUR, MS_PER_MINUTE

SEQ_KEYS: tuple[str, ...] = ("hist_click", "hist_comment", "hist_like", "hist_gift")
CONTEXT_COLUMNS: tuple[str, ...] = ("live_type", "live_content_category", "hour", "weekday", "room_age_bucket")
DENSE_FEATURES: dict[str, tuple[str, ...]] = {
    "user": ("u_clicks", "u_watch_min", "u_comments", "u_likes", "u_gifts", "u_exposures", "u_ctr"),
    "streamer": ("s_clicks", "s_gifts", "s_exposures", "s_ctr"),
    "cross": ("us_clicks", "us_watch_min", "us_comments", "us_likes", "us_gifts", "us_hours_since_last", "us_never",
              "us_exposures", "us_ctr", "uc_clicks", "uc_exposures", "uc_ctr"),
    "realtime": ("room_clicks_5m", "room_clicks_30m", "room_comments_30m", "room_gifts_30m", "room_clicks_before",
                 "room_age_min"),
}
DENSE_COLUMNS: tuple[str, ...] = tuple(c for cols in DENSE_FEATURES.values() for c in cols)
#: Multi-task targets: click on every row, the rest on clicked rows.
TASKS: tuple[str, ...] = ("click", "watch", "comment", "like", "gift")
N_GAP_BUCKETS = 16
N_AGE_BUCKETS = 14
_SHIFT = 36


def _events(tables: dict[str, pl.DataFrame], name: str) -> pl.DataFrame:
    """An event table, or an empty one with the event columns when the dataset has none of that kind."""
    df = tables.get(name)
    if df is None:
        return pl.DataFrame(schema={"user_id": pl.Int64, "streamer_id": pl.Int64, "live_id": pl.Int64,
                                    "timestamp": pl.Int64})
    return df


def _profile_strings(df: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """Profile columns as strings; date-like columns reduced to the year (thousands of dates, few years)."""
    exprs = []
    for c in columns:
        e = pl.col(c).cast(pl.String)
        if "timestamp" in c:
            e = e.str.slice(0, 4)
        exprs.append(e.fill_null("<null>").alias(c))
    return df.select(exprs)


@dataclass
class CategoricalVocab:
    """Several categorical columns in one embedding table: id = 1 + offset(column) + rank of the value; 0 = unseen."""

    columns: tuple[str, ...]
    values: dict[str, list[str]]

    @classmethod
    def fit(cls, df: pl.DataFrame, columns: tuple[str, ...]) -> "CategoricalVocab":
        return cls(columns=tuple(columns), values={c: sorted(set(df[c].cast(pl.String).to_list())) for c in columns})

    @property
    def offsets(self) -> list[int]:
        out, acc = [], 0
        for c in self.columns:
            out.append(acc)
            acc += len(self.values[c])
        return out

    @property
    def size(self) -> int:
        """Rows of the table, including the unseen id 0."""
        return 1 + sum(len(v) for v in self.values.values())

    def value_ids(self) -> list[dict[str, int]]:
        """Per column, value -> id (``1 + offset(column) + rank``); a value not in the map is unseen (id 0)."""
        return [{v: 1 + off + i for i, v in enumerate(self.values[c])} for c, off in zip(self.columns, self.offsets)]

    def encode(self, df: pl.DataFrame) -> np.ndarray:
        """[n, n_columns] int64 ids; values never seen at fit time map to 0."""
        out = np.zeros((df.height, len(self.columns)), dtype=np.int64)
        for j, (c, ids) in enumerate(zip(self.columns, self.value_ids())):
            mapping = pl.DataFrame({c: list(ids), "_id": list(ids.values())}, schema={c: pl.String, "_id": pl.Int64})
            ids = df.select(pl.col(c).cast(pl.String)).join(mapping, on=c, how="left", maintain_order="left")["_id"]
            out[:, j] = ids.fill_null(0).to_numpy()
        return out


@dataclass
class IdIndex:
    """Raw ids -> contiguous rows 1..n (0 = unknown id)."""

    ids: np.ndarray  # sorted unique raw ids

    def lookup(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.int64)
        if self.ids.size == 0:
            return np.zeros(raw.shape, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, raw), 0, self.ids.size - 1)
        return np.where(self.ids[pos] == raw, pos + 1, 0).astype(np.int64)

    @property
    def size(self) -> int:
        return int(self.ids.size) + 1


@dataclass
class RankingFeatureSpec:
    """Sizes and encoders: what a ranker needs to be built, and what serving needs to encode raw inputs."""

    n_users: int  # table rows incl. the unknown row 0
    n_streamers: int
    user_vocab: CategoricalVocab
    streamer_vocab: CategoricalVocab
    context_vocab: CategoricalVocab
    seq_len: int = 50
    behaviour_len: int = 20
    title_dim: int = TITLE_EMBEDDING_DIM
    dense_features: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DENSE_FEATURES))
    #: the training period ``[time_origin_ms, time_origin_ms + time_span_ms]`` (first and last training sample), from
    #: which the ranker's encoder derives a row's drift time (``models.ranking.encoder.RankingEncoder.drift_time``).
    #: ``time_span_ms = 0`` (exports from before the field existed): no time-dependent features.
    time_origin_ms: int = 0
    time_span_ms: int = 0

    @property
    def seq_lengths(self) -> dict[str, int]:
        return {k: (self.seq_len if k == "hist_click" else self.behaviour_len) for k in SEQ_KEYS}

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "RankingFeatureSpec":
        d = json.loads(text)
        for k in ("user_vocab", "streamer_vocab", "context_vocab"):
            v = d[k]
            d[k] = CategoricalVocab(columns=tuple(v["columns"]), values=v["values"])
        d["dense_features"] = {k: tuple(v) for k, v in d["dense_features"].items()}
        return cls(**d)


@dataclass
class FeatureArrays:
    """One batch of model inputs (numpy). Shapes: B rows; L_k per history key."""

    user_idx: np.ndarray  # [B] int64
    streamer_idx: np.ndarray  # [B] int64
    user_profile: np.ndarray  # [B, 20] int64 (user_vocab ids)
    streamer_profile: np.ndarray  # [B, 22] int64
    context: np.ndarray  # [B, 5] int64 (context_vocab ids)
    title: np.ndarray  # [B, title_dim] float32
    dense: np.ndarray  # [B, n_dense] float32, already log1p-scaled
    hist: dict[str, np.ndarray]  # key -> [B, L_k] int64 streamer rows, oldest first, left-aligned
    hist_len: dict[str, np.ndarray]  # key -> [B] int64
    hist_gap: np.ndarray  # [B, seq_len] int64 time-gap bucket of each hist_click event (0 = padding)
    time_ms: np.ndarray  # [B] int64 epoch ms of the exposure (the request time in serving)

    def __len__(self) -> int:
        return int(self.user_idx.shape[0])


@dataclass
class EventHistory:
    """Events of one kind sorted by (user row, time); ``window`` gathers the ``L`` events before each end position."""

    items: np.ndarray  # streamer rows
    times: np.ndarray  # epoch ms
    user_start: np.ndarray  # [n_users] first position of each user row
    composite: np.ndarray  # (user << 36) | (time - origin), sorted
    origin: int

    @classmethod
    def build(cls, user_rows: np.ndarray, times: np.ndarray, items: np.ndarray, n_users: int,
              origin: int) -> "EventHistory":
        comp = (np.asarray(user_rows, np.int64) << _SHIFT) | (np.asarray(times, np.int64) - origin)
        order = np.argsort(comp, kind="stable")
        comp = comp[order]
        user_start = np.searchsorted(comp, np.arange(n_users, dtype=np.int64) << _SHIFT, side="left")
        return cls(items=np.asarray(items, np.int64)[order], times=np.asarray(times, np.int64)[order],
                   user_start=user_start, composite=comp, origin=origin)

    def end_positions(self, user_rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Position one past the user's last event strictly before ``t``."""
        # a time at or before the origin (one before the first event) has no past: clamp it there
        q = (np.asarray(user_rows, np.int64) << _SHIFT) | np.maximum(np.asarray(t, np.int64) - self.origin, 0)
        return np.searchsorted(self.composite, q, side="left")

    def window(self, user_rows: np.ndarray, end: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items [B, L], times [B, L], lengths [B]) of the events in [max(user start, end - L), end)."""
        start = np.maximum(self.user_start[user_rows], end - length)
        lengths = (end - start).astype(np.int64)
        pos = start[:, None] + np.arange(length)[None, :]
        valid = np.arange(length)[None, :] < lengths[:, None]
        pos = np.where(valid, pos, 0)
        if self.items.size == 0:
            return np.zeros(pos.shape, np.int64), np.zeros(pos.shape, np.int64), lengths
        return np.where(valid, self.items[pos], 0), np.where(valid, self.times[pos], 0), lengths


def gap_bucket(gap_ms: np.ndarray) -> np.ndarray:
    """Time-gap buckets 1..N_GAP_BUCKETS-1 on a log2 scale of minutes (0 is reserved for padding)."""
    minutes = np.maximum(np.asarray(gap_ms, np.float64), 0) / MS_PER_MINUTE
    return np.clip(1 + np.floor(np.log2(1 + minutes)).astype(np.int64), 1, N_GAP_BUCKETS - 1)


def age_bucket(age_min: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(np.log2(1 + np.maximum(age_min, 0))).astype(np.int64), 0, N_AGE_BUCKETS - 1)


# ------------------------------------------------------------------------------------------------ per-sample tables
def _count_recent(keys: np.ndarray, times: np.ndarray, q_keys: np.ndarray, t: np.ndarray, minutes: int) -> np.ndarray:
    """Events with the same key in [t - minutes, t)."""
    return count_before(keys, times, q_keys, t) - count_before(keys, times, q_keys, t - minutes * MS_PER_MINUTE)


#: Prior of the smoothed click-through rates: (clicks + PRIOR_CTR * PRIOR_N) / (exposures + PRIOR_N).
PRIOR_CTR, PRIOR_N = 0.28, 5.0


def smoothed_ctr(clicks: np.ndarray, exposures: np.ndarray) -> np.ndarray:
    return (clicks + PRIOR_CTR * PRIOR_N) / (exposures + PRIOR_N)


def dense_features(samples: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The raw (unscaled) dense features of :data:`DENSE_COLUMNS` for each (user, live, streamer, t) sample.

    Exposures are the past rows of ``click.csv`` and ``negative.csv`` (the impression log); ``*_ctr`` are their
    smoothed click-through rates for the user, the streamer, the user x streamer pair and the user x room category.
    """
    su, ss, sl, st = (samples[c].to_numpy() for c in ("user_id", "streamer_id", "live_id", "timestamp"))
    qpair = np.stack([su, ss], axis=1)
    clicks = tables["click"]
    cu, cs, cl, ct, cw = (clicks[c].to_numpy() for c in ("user_id", "streamer_id", "live_id", "timestamp",
                                                          "watch_live_time"))
    pair = np.stack([cu, cs], axis=1)
    ended = ct + cw
    out: dict[str, np.ndarray] = {
        "u_clicks": count_before(cu, ct, su, st),
        "u_watch_min": sum_before(cu, ended, cw / MS_PER_MINUTE, su, st, inclusive=True),
        "s_clicks": count_before(cs, ct, ss, st),
        "us_clicks": count_before(pair, ct, qpair, st),
        "us_watch_min": sum_before(pair, ended, cw / MS_PER_MINUTE, qpair, st, inclusive=True),
        "room_clicks_5m": _count_recent(cl, ct, sl, st, 5),
        "room_clicks_30m": _count_recent(cl, ct, sl, st, 30),
        "room_clicks_before": count_before(cl, ct, sl, st),
    }
    neg = tables["negative"]
    nu, ns, nt = (neg[c].to_numpy() for c in ("user_id", "streamer_id", "timestamp"))
    eu, es, et = np.r_[cu, nu], np.r_[cs, ns], np.r_[ct, nt]
    out["u_exposures"] = count_before(eu, et, su, st)
    out["s_exposures"] = count_before(es, et, ss, st)
    out["us_exposures"] = count_before(np.stack([eu, es], axis=1), et, qpair, st)
    room_index, room_cat = _room_category(tables["rooms"])
    q_cat = room_cat[room_index.lookup(sl)]
    e_cat = room_cat[room_index.lookup(np.r_[cl, neg["live_id"].to_numpy()])]
    c_cat = e_cat[: cl.size]
    out["uc_clicks"] = count_before(np.stack([cu, c_cat], axis=1), ct, np.stack([su, q_cat], axis=1), st)
    out["uc_exposures"] = count_before(np.stack([eu, e_cat], axis=1), et, np.stack([su, q_cat], axis=1), st)
    out["u_ctr"] = smoothed_ctr(out["u_clicks"], out["u_exposures"])
    out["s_ctr"] = smoothed_ctr(out["s_clicks"], out["s_exposures"])
    out["us_ctr"] = smoothed_ctr(out["us_clicks"], out["us_exposures"])
    out["uc_ctr"] = smoothed_ctr(out["uc_clicks"], out["uc_exposures"])
    last = last_before(pair, ct, qpair, st)
    out["us_never"] = (last < 0).astype(np.float64)
    out["us_hours_since_last"] = np.where(last < 0, 0.0, (st - last) / MS_PER_HOUR)
    for name in ("comment", "like", "gift"):
        df = _events(tables, name)
        eu, es, el, et = (df[c].to_numpy() for c in ("user_id", "streamer_id", "live_id", "timestamp"))
        out[f"u_{name}s"] = count_before(eu, et, su, st)
        out[f"us_{name}s"] = count_before(np.stack([eu, es], axis=1), et, qpair, st)
        if name != "like":
            out[f"room_{name}s_30m"] = _count_recent(el, et, sl, st, 30)
        if name == "gift":
            out["s_gifts"] = count_before(es, et, ss, st)
    rooms = tables["rooms"].select("live_id", "start_timestamp")
    start = samples.select("live_id").join(rooms, on="live_id", how="left", maintain_order="left")["start_timestamp"]
    out["room_age_min"] = np.maximum(st - start.fill_null(pl.Series(st)).to_numpy(), 0) / MS_PER_MINUTE
    return pl.DataFrame({c: np.asarray(out[c], dtype=np.float64) for c in DENSE_COLUMNS})


def _room_category(rooms: pl.DataFrame) -> tuple[IdIndex, np.ndarray]:
    """Room index and category codes by index row: 0..C-1 in :data:`VOCABULARIES` order, C for a category outside
    it, 99 for an unknown room (row 0)."""
    cats = list(VOCABULARIES["live_content_category"])
    r = rooms.select("live_id", "live_content_category").sort("live_id")
    code = r["live_content_category"].replace_strict(cats, list(range(len(cats))), default=len(cats),
                                                     return_dtype=pl.Int64).to_numpy()
    return IdIndex(r["live_id"].to_numpy()), np.r_[99, code].astype(np.int64)


def scale_dense(raw: np.ndarray) -> np.ndarray:
    """log1p of the non-negative counts and durations (the one transform, at training and at serving)."""
    return np.log1p(np.maximum(np.asarray(raw, np.float64), 0)).astype(np.float32)


def task_labels(samples: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Multi-task labels; behaviour labels count events by the user in the same room during ``[t, t + watch]``."""
    su, sl, st = (samples[c].to_numpy() for c in ("user_id", "live_id", "timestamp"))
    clicked = samples["label"].to_numpy().astype(bool)
    watch = samples["watch_live_time"].fill_null(0).to_numpy().astype(np.int64)
    end = st + np.where(clicked, watch, 0)
    q = np.stack([su, sl], axis=1)
    out = {"click": clicked.astype(np.float32), "watch": np.where(clicked, np.log1p(watch / 1000.0), 0.0)}
    for name in ("comment", "like", "gift"):
        df = _events(tables, name)
        keys = np.stack([df["user_id"].to_numpy(), df["live_id"].to_numpy()], axis=1)
        et = df["timestamp"].to_numpy()
        n = count_window(keys, et, q, st, end)
        out[name] = np.where(clicked, (n > 0).astype(np.float64), 0.0)
        if name == "gift":
            price = df["gift_price"].to_numpy() if "gift_price" in df.columns else np.zeros(df.height)
            value = count_window(keys, et, q, st, end, values=price)
            out["gift_value"] = np.where(clicked, value, 0.0)
    return pl.DataFrame({k: np.asarray(v, dtype=np.float32) for k, v in out.items()})


# ------------------------------------------------------------------------------------------------ serving tables
@dataclass
class ServingTables:
    """What the ranking service needs besides the model to encode a request the way training did: the profile and
    title tables by row, each known room's title row, and the per-user / per-streamer dense groups materialised from
    the full history at ``as_of`` (batch features: a request after ``as_of`` reads them as they were then; the
    real-time and user x streamer groups come from the online store)."""

    user_profile: np.ndarray  # [n_users, 20] int64 by user row
    streamer_profile: np.ndarray  # [n_streamers, 22] int64 by streamer row
    title_table: np.ndarray  # [n_titles + 1, title_dim] float32
    room_ids: np.ndarray  # [n_rooms] sorted live ids
    room_title_row: np.ndarray  # [n_rooms] row of ``title_table`` (0 = none)
    user_dense: np.ndarray  # [n_users, len(DENSE_FEATURES["user"])] float64 raw (unscaled), row 0 = zeros
    streamer_dense: np.ndarray  # [n_streamers, len(DENSE_FEATURES["streamer"])] float64 raw
    as_of: int  # epoch ms of the materialisation

    ARRAYS = ("user_profile", "streamer_profile", "title_table", "room_ids", "room_title_row", "user_dense",
              "streamer_dense")

    def title_rows(self, live_ids: np.ndarray) -> np.ndarray:
        """Title rows of rooms (0 for a room not in the table)."""
        pos = IdIndex(self.room_ids).lookup(live_ids)
        if self.room_title_row.size == 0:
            return np.zeros(pos.shape, np.int64)
        # index the table by pos - 1 (never a copy of the whole table: this runs once per served request)
        return np.where(pos > 0, self.room_title_row[np.maximum(pos - 1, 0)], 0)


def build_serving_tables(ds: "RankingDataset", tables: dict[str, pl.DataFrame], as_of: int | None = None
                         ) -> ServingTables:
    """Materialise :class:`ServingTables` from the dataset's tables at ``as_of`` (default: just after the last
    click)."""
    t = int(tables["click"]["timestamp"].max()) + 1 if as_of is None else int(as_of)
    users, streamers = ds.user_index.ids, ds.streamer_index.ids

    def group(ids: np.ndarray, column: str, name: str) -> np.ndarray:
        n = ids.size
        other = "streamer_id" if column == "user_id" else "user_id"
        samples = pl.DataFrame({column: ids, other: np.full(n, -1, np.int64), "live_id": np.full(n, -1, np.int64),
                                "timestamp": np.full(n, t, np.int64)})
        values = dense_features(samples, tables).select(DENSE_FEATURES[name]).to_numpy() if n else np.zeros(
            (0, len(DENSE_FEATURES[name])))
        return np.vstack([np.zeros((1, len(DENSE_FEATURES[name]))), values]).astype(np.float64)

    rooms = tables["rooms"].sort("live_id")
    title = rooms["live_name_id"].fill_null(-1).to_numpy().astype(np.int64) + 1
    title = np.where((title > 0) & (title < ds.title_table.shape[0]), title, 0)
    return ServingTables(user_profile=ds.user_profile, streamer_profile=ds.streamer_profile,
                         title_table=ds.title_table, room_ids=rooms["live_id"].to_numpy().astype(np.int64),
                         room_title_row=title, user_dense=group(users, "user_id", "user"),
                         streamer_dense=group(streamers, "streamer_id", "streamer"), as_of=t)


# ------------------------------------------------------------------------------------------------ the dataset
@dataclass
class RankingDataset:
    """CTR samples with their features; :meth:`arrays` assembles a batch of :class:`FeatureArrays`."""

    spec: RankingFeatureSpec
    user_index: IdIndex
    streamer_index: IdIndex
    samples: pl.DataFrame  # user_id, live_id, streamer_id, timestamp, split, labels, p_true (synthetic)
    dense: np.ndarray  # [N, n_dense] float32 scaled
    context: np.ndarray  # [N, 5]
    title_row: np.ndarray  # [N] row of ``title_table``
    user_profile: np.ndarray  # [n_users, 20] by user row
    streamer_profile: np.ndarray  # [n_streamers, 22] by streamer row
    title_table: np.ndarray  # [n_titles + 1, title_dim] float32, row 0 = zeros
    histories: dict[str, EventHistory]
    ends: dict[str, np.ndarray]  # key -> [N] end positions
    user_rows: np.ndarray  # [N]
    streamer_rows: np.ndarray  # [N]
    timestamps: np.ndarray  # [N]
    info: dict[str, int] = field(default_factory=dict)
    serving: ServingTables | None = None  # what an export needs for the ranking service

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero((self.samples["split"] == split).to_numpy())

    def labels(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: self.samples[k].to_numpy()[rows] for k in (*TASKS, "gift_value")}

    def with_samples(self, samples: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> "RankingDataset":
        """This dataset's vocabularies, tables and histories over other samples (columns ``user_id``, ``live_id``,
        ``streamer_id``, ``timestamp``; labels are carried along when present): every per-sample feature computed
        from the past of ``tables`` exactly as for the dataset's own samples. The feed environment scores its
        requests this way with the ranker that the service runs."""
        missing = [c for c in ("user_id", "live_id", "streamer_id", "timestamp") if c not in samples.columns]
        if missing:
            raise ValueError(f"samples lack the column(s) {', '.join(missing)}")
        ctx = context_table(samples, tables["rooms"])
        title_row = ctx["_title_row"].to_numpy()
        title_row = np.where((title_row >= 0) & (title_row < self.title_table.shape[0]), title_row, 0)
        user_rows = self.user_index.lookup(samples["user_id"].to_numpy())
        ts = samples["timestamp"].to_numpy().astype(np.int64)
        return replace(
            self, samples=samples, dense=scale_dense(dense_features(samples, tables).to_numpy()),
            context=self.spec.context_vocab.encode(ctx), title_row=title_row, user_rows=user_rows,
            streamer_rows=self.streamer_index.lookup(samples["streamer_id"].to_numpy()), timestamps=ts,
            ends={key: h.end_positions(user_rows, ts) for key, h in self.histories.items()})

    def arrays(self, rows: np.ndarray) -> FeatureArrays:
        rows = np.asarray(rows)
        u = self.user_rows[rows]
        t = self.timestamps[rows]
        hist, hist_len = {}, {}
        gap = np.zeros((rows.size, self.spec.seq_len), np.int64)
        for key, length in self.spec.seq_lengths.items():
            items, times, lens = self.histories[key].window(u, self.ends[key][rows], length)
            hist[key], hist_len[key] = items, lens
            if key == "hist_click":
                valid = np.arange(length)[None, :] < lens[:, None]
                gap = np.where(valid, gap_bucket(t[:, None] - times), 0)
        return FeatureArrays(
            user_idx=u, streamer_idx=self.streamer_rows[rows], user_profile=self.user_profile[u],
            streamer_profile=self.streamer_profile[self.streamer_rows[rows]], context=self.context[rows],
            title=self.title_table[self.title_row[rows]], dense=self.dense[rows], hist=hist, hist_len=hist_len,
            hist_gap=gap, time_ms=t,
        )


def _title_table(data: KuaiLiveData) -> np.ndarray:
    emb = data.title_embeddings
    if emb is None:
        return np.zeros((1, TITLE_EMBEDDING_DIM), np.float32)
    return np.vstack([np.zeros((1, emb.shape[1]), np.float32), np.asarray(emb, np.float32)])


def context_table(samples: pl.DataFrame, rooms: pl.DataFrame) -> pl.DataFrame:
    """Context columns as strings (``"<null>"`` for an unknown room or a missing category) and the title row of
    each sample, from :func:`recsys.data.features.context_features`."""
    ctx = context_features(samples, rooms).with_columns(samples["live_id"].is_in(rooms["live_id"]).alias("_known"))
    return ctx.select(
        pl.when(pl.col("_known")).then(pl.col("live_type").cast(pl.String)).otherwise(pl.lit("<null>"))
        .alias("live_type"),
        pl.col("live_content_category").replace("<unk>", "<null>"),
        pl.col("hour").cast(pl.String),
        pl.col("weekday").cast(pl.String),
        pl.Series("room_age_bucket", age_bucket(ctx["room_age_min"].to_numpy())).cast(pl.String),
        (pl.col("live_name_id") + 1).cast(pl.Int64).alias("_title_row"),
    )


def _context_vocab() -> CategoricalVocab:
    """Context values are known in advance; the vocabulary does not depend on the data."""
    values = {
        "live_type": sorted({"0", "1", "2", "3", "<null>"}),
        "live_content_category": sorted({*VOCABULARIES["live_content_category"], "<null>"}),
        "hour": sorted(str(h) for h in range(24)),
        "weekday": sorted(str(d) for d in range(7)),
        "room_age_bucket": sorted(str(b) for b in range(N_AGE_BUCKETS)),
    }
    return CategoricalVocab(columns=CONTEXT_COLUMNS, values=values)


def build_ranking_dataset(data: KuaiLiveData, truth_dir: str | Path | None = None, seq_len: int = 50,
                          behaviour_len: int = 20) -> RankingDataset:
    """CTR samples (clicks vs negatives, chronological 8:1:1) with every ranking feature and task label."""
    t = data.tables
    for name in ("click", "negative", "rooms", "user", "streamer"):
        if name not in t:
            raise ValueError(f"the ranking dataset needs the {name!r} table; load it with load_kuailive")
    samples, info = ctr_samples(t["click"], t["negative"])
    if truth_dir is not None and Path(truth_dir, "exposures.parquet").exists():
        samples = attach_oracle(samples, truth_dir)
    labels = task_labels(samples, t)
    samples = pl.concat([samples, labels.drop("click")], how="horizontal").with_columns(
        pl.col("label").cast(pl.Float32).alias("click"))
    user_index = IdIndex(np.unique(t["user"]["user_id"].to_numpy()))
    streamer_index = IdIndex(np.unique(t["streamer"]["streamer_id"].to_numpy()))
    uprof = _profile_strings(t["user"].sort("user_id"), tuple(USER_PROFILE_COLUMNS))
    sprof = _profile_strings(t["streamer"].sort("streamer_id"), tuple(STREAMER_PROFILE_COLUMNS))
    user_vocab = CategoricalVocab.fit(uprof, tuple(USER_PROFILE_COLUMNS))
    streamer_vocab = CategoricalVocab.fit(sprof, tuple(STREAMER_PROFILE_COLUMNS))
    user_profile = np.vstack([np.zeros((1, len(USER_PROFILE_COLUMNS)), np.int64), user_vocab.encode(uprof)])
    streamer_profile = np.vstack([np.zeros((1, len(STREAMER_PROFILE_COLUMNS)), np.int64),
                                  streamer_vocab.encode(sprof)])
    title_table = _title_table(data)

    ts = samples["timestamp"].to_numpy()
    train_ts = ts[(samples["split"] == "train").to_numpy()]
    t_lo, t_hi = (int(train_ts.min()), int(train_ts.max())) if train_ts.size else (0, 0)
    spec = RankingFeatureSpec(n_users=user_index.size, n_streamers=streamer_index.size, user_vocab=user_vocab,
                              streamer_vocab=streamer_vocab, context_vocab=_context_vocab(), seq_len=seq_len,
                              behaviour_len=behaviour_len, title_dim=title_table.shape[1], time_origin_ms=t_lo,
                              time_span_ms=t_hi - t_lo)
    seq_tables = {key: _events(t, name) for key, name in zip(SEQ_KEYS, ("click", "comment", "like", "gift"))}
    origin = min([int(ts.min())] + [int(v["timestamp"].min()) for v in seq_tables.values() if v.height]) - 1
    histories = {key: EventHistory.build(user_index.lookup(df["user_id"].to_numpy()), df["timestamp"].to_numpy(),
                                         streamer_index.lookup(df["streamer_id"].to_numpy()), user_index.size,
                                         origin)
                 for key, df in seq_tables.items()}
    empty = np.zeros(0, np.int64)
    ds = RankingDataset(
        spec=spec, user_index=user_index, streamer_index=streamer_index, samples=samples.clear(),
        dense=np.zeros((0, len(DENSE_COLUMNS)), np.float32), context=np.zeros((0, len(CONTEXT_COLUMNS)), np.int64),
        title_row=empty, user_profile=user_profile, streamer_profile=streamer_profile, title_table=title_table,
        histories=histories, ends={key: empty for key in histories}, user_rows=empty, streamer_rows=empty,
        timestamps=empty, info={**info, "n_samples": samples.height},
    ).with_samples(samples, t)
    ds.serving = build_serving_tables(ds, t)
    return ds


__all__ = [
    "CONTEXT_COLUMNS", "DENSE_COLUMNS", "DENSE_FEATURES", "SEQ_KEYS", "TASKS", "CategoricalVocab", "EventHistory",
    "FeatureArrays", "IdIndex", "RankingDataset", "RankingFeatureSpec", "ServingTables", "build_ranking_dataset",
    "build_serving_tables", "context_table",
    "dense_features", "gap_bucket", "scale_dense", "smoothed_ctr", "task_labels",
]
