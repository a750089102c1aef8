"""Room lifecycles: ``room.csv`` has one row per (live_id, p_date); aggregate to one row per live_id."""

from __future__ import annotations

import polars as pl

from recsys.timeutil import CST_MIDNIGHT_MOD, MS_PER_DAY

#: Attributes that must be constant across the p_date rows of one live_id.
ROOM_CONSTANT_COLUMNS = ("streamer_id", "live_type", "live_content_category", "live_name_id")


def aggregate_rooms(room_rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One row per live_id: ``start = min(start)``, ``end = max(end)``, ``n_days``, ``end_censored``.

    Returns ``(rooms, violations)``; ``violations`` lists live_ids whose constant attributes differ across rows
    (with the number of distinct values per attribute) so that they are reported, not silently resolved. For such
    rooms the first row in (p_date) order is kept. Output is sorted by ``start_timestamp, live_id``.
    """
    ordered = room_rows.sort("live_id", "p_date")
    rooms = ordered.group_by("live_id", maintain_order=True).agg(
        pl.col("start_timestamp").min(),
        pl.col("end_timestamp").max(),
        pl.len().alias("n_days").cast(pl.Int32),
        *[pl.col(c).first() for c in ROOM_CONSTANT_COLUMNS],
        *[pl.col(c).n_unique().alias(f"_nu_{c}") for c in ROOM_CONSTANT_COLUMNS],
    )
    nu_cols = [f"_nu_{c}" for c in ROOM_CONSTANT_COLUMNS]
    violations = rooms.filter(pl.any_horizontal([pl.col(c) > 1 for c in nu_cols])).select(
        "live_id", *[pl.col(f"_nu_{c}").alias(f"distinct_{c}") for c in ROOM_CONSTANT_COLUMNS]
    )
    rooms = (
        rooms.drop(nu_cols)
        .with_columns((pl.col("end_timestamp") % MS_PER_DAY == CST_MIDNIGHT_MOD).alias("end_censored"))
        .sort("start_timestamp", "live_id")
    )
    return rooms, violations
