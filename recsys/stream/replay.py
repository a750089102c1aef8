"""Turn KuaiLive-format tables into one event-time-ordered stream of :class:`Event` envelopes.

Event ids are deterministic (``<type>-<row in its file>``; rooms ``room_start-<live_id>`` / ``room_end-<live_id>``),
so replaying the same files twice yields the same ids and the stream worker's writes stay idempotent.
At equal times the order is room_start < click < like < comment < gift < room_end.
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from recsys.data.loaders import KuaiLiveData
from recsys.stream.envelope import Event
from recsys.timeutil import WINDOW_END_MS

TYPE_ORDER = {"room_start": 0, "click": 1, "like": 2, "comment": 3, "gift": 4, "room_end": 5}
_COLUMNS = ("type", "event_id", "event_time", "user_id", "live_id", "streamer_id", "watch_live_time",
            "gift_price", "live_type", "category")


def event_table(data: KuaiLiveData, until: int = WINDOW_END_MS - 1, since: int | None = None) -> pl.DataFrame:
    """All user events and room starts/ends with ``since <= event_time <= until``, sorted in replay order."""
    t = data.tables
    parts = []
    for name in ("click", "comment", "like", "gift"):
        df = t[name].with_row_index("_row")
        parts.append(df.select(
            pl.lit(name).alias("type"),
            (pl.lit(f"{name}-") + pl.col("_row").cast(pl.String)).alias("event_id"),
            pl.col("timestamp").alias("event_time"),
            "user_id", "live_id", "streamer_id",
            (pl.col("watch_live_time") if name == "click" else pl.lit(None, pl.Int64)).alias("watch_live_time"),
            (pl.col("gift_price") if name == "gift" else pl.lit(None, pl.Int64)).alias("gift_price"),
            pl.lit(None, pl.Int64).alias("live_type"),
            pl.lit(None, pl.String).alias("category"),
        ))
    rooms = t["rooms"]
    for name, col in (("room_start", "start_timestamp"), ("room_end", "end_timestamp")):
        parts.append(rooms.select(
            pl.lit(name).alias("type"),
            (pl.lit(f"{name}-") + pl.col("live_id").cast(pl.String)).alias("event_id"),
            pl.col(col).alias("event_time"),
            pl.lit(None, pl.Int64).alias("user_id"),
            "live_id", "streamer_id",
            pl.lit(None, pl.Int64).alias("watch_live_time"),
            pl.lit(None, pl.Int64).alias("gift_price"),
            "live_type",
            pl.col("live_content_category").alias("category"),
        ))
    df = pl.concat(parts).filter(pl.col("event_time") <= until)
    if since is not None:
        df = df.filter(pl.col("event_time") >= since)
    order = pl.col("type").replace_strict(TYPE_ORDER, return_dtype=pl.Int8)
    return df.with_columns(order.alias("_o")).sort("event_time", "_o", "event_id").drop("_o").select(_COLUMNS)


def to_event(row: dict) -> Event:
    """One row of :func:`event_table` as an envelope."""
    etype = row["type"]
    if etype in ("room_start", "room_end"):
        payload = {"live_id": row["live_id"], "streamer_id": row["streamer_id"]}
        if etype == "room_start":
            payload.update(live_type=row["live_type"], category=row["category"])
    else:
        payload = {"user_id": row["user_id"], "live_id": row["live_id"], "streamer_id": row["streamer_id"]}
        if etype == "click":
            payload["watch_live_time"] = row["watch_live_time"]
        elif etype == "gift":
            payload["gift_price"] = row["gift_price"]
    return Event(etype, row["event_id"], row["event_time"], payload)


def iter_events(table: pl.DataFrame) -> Iterator[Event]:
    """The rows of :func:`event_table` as envelopes, in order."""
    for row in table.iter_rows(named=True):
        yield to_event(row)
