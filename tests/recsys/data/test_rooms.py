"""Tests for recsys.data.rooms.aggregate_rooms: one row per live_id from the per-(live_id, p_date) room rows.

Brief section 6: ``start = min``, ``end = max``, ``n_days = count(p_date)``, constant attributes are checked and
violations reported (not silently resolved), ``end_censored = end % 86_400_000 == 57_600_000`` (CST midnight).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.data.rooms import ROOM_CONSTANT_COLUMNS, aggregate_rooms
from recsys.timeutil import MS_PER_DAY, MS_PER_HOUR, WINDOW_START_MS, p_date

S = WINDOW_START_MS  # 2025-05-05 00:00 CST
CST_MIDNIGHT_0527 = 1_748_275_200_000  # 2025-05-27 00:00:00 CST (the brief's censored example)

SCHEMA = {
    "p_date": pl.Int64,
    "live_id": pl.Int64,
    "streamer_id": pl.Int64,
    "live_type": pl.Int64,
    "start_timestamp": pl.Int64,
    "end_timestamp": pl.Int64,
    "live_content_category": pl.String,
    "live_name_id": pl.Int64,
}


def _row(p, live, streamer, start, end, live_type=1, cat="shop", name=0) -> dict:
    return {
        "p_date": p, "live_id": live, "streamer_id": streamer, "live_type": live_type,
        "start_timestamp": start, "end_timestamp": end, "live_content_category": cat, "live_name_id": name,
    }


def _small_table() -> pl.DataFrame:
    rows = [
        # room 101 spans 3 p_dates; min start and max end are both on the middle row
        _row(20250507, 101, 1, S + 20 * MS_PER_HOUR + 123, S + 46 * MS_PER_HOUR, name=11),
        _row(20250505, 101, 1, S + 20 * MS_PER_HOUR + 123, S + 24 * MS_PER_HOUR - 1, name=11),
        _row(20250506, 101, 1, S + 20 * MS_PER_HOUR + 100, S + 47 * MS_PER_HOUR + 5, name=11),
        # room 102 ends exactly on a CST midnight -> censored
        _row(20250526, 102, 2, S + 21 * MS_PER_DAY + 3 * MS_PER_HOUR, CST_MIDNIGHT_0527, cat="game", name=12),
        # room 103: streamer_id differs across rows (the later p_date row comes first in the input)
        _row(20250511, 103, 4, S + 6 * MS_PER_DAY + 22 * MS_PER_HOUR, S + 7 * MS_PER_DAY + 2 * MS_PER_HOUR, name=13),
        _row(20250510, 103, 3, S + 5 * MS_PER_DAY + 22 * MS_PER_HOUR, S + 6 * MS_PER_DAY + 1 * MS_PER_HOUR, name=13),
        # room 104 ends on a UTC midnight (08:00 CST): not censored
        _row(20250506, 104, 5, S + MS_PER_DAY + 1000, 1_746_576_000_000, name=14),
        # room 105: category differs across rows
        _row(20250508, 105, 6, S + 3 * MS_PER_DAY, S + 3 * MS_PER_DAY + MS_PER_HOUR, cat="shop", name=15),
        _row(20250508, 105, 6, S + 3 * MS_PER_DAY, S + 3 * MS_PER_DAY + 2 * MS_PER_HOUR, cat="game", name=15),
        # rooms 107 and 106 start at the same instant: tie broken by live_id
        _row(20250505, 107, 7, S + 5 * MS_PER_HOUR, S + 6 * MS_PER_HOUR, name=16),
        _row(20250505, 106, 8, S + 5 * MS_PER_HOUR, S + 7 * MS_PER_HOUR, name=17),
    ]
    return pl.DataFrame(rows, schema=SCHEMA)


def test_aggregate_small_table() -> None:
    rooms, violations = aggregate_rooms(_small_table())
    assert rooms.height == 7
    assert rooms["live_id"].n_unique() == 7
    for c in ("live_id", "start_timestamp", "end_timestamp", "n_days", "end_censored", *ROOM_CONSTANT_COLUMNS):
        assert c in rooms.columns
    by_id = {r["live_id"]: r for r in rooms.iter_rows(named=True)}

    r = by_id[101]
    assert r["start_timestamp"] == S + 20 * MS_PER_HOUR + 100
    assert r["end_timestamp"] == S + 47 * MS_PER_HOUR + 5
    assert r["n_days"] == 3
    assert r["end_censored"] is False
    assert (r["streamer_id"], r["live_type"], r["live_content_category"], r["live_name_id"]) == (1, 1, "shop", 11)

    r = by_id[102]
    assert CST_MIDNIGHT_0527 % MS_PER_DAY == 57_600_000
    assert r["end_censored"] is True and r["n_days"] == 1
    assert r["end_timestamp"] == CST_MIDNIGHT_0527

    assert by_id[104]["end_censored"] is False  # UTC midnight is not a CST midnight
    assert by_id[104]["end_timestamp"] % MS_PER_DAY == 0

    r = by_id[103]  # violation: reported; the first row in p_date order is kept
    assert r["n_days"] == 2
    assert r["streamer_id"] == 3
    assert r["start_timestamp"] == S + 5 * MS_PER_DAY + 22 * MS_PER_HOUR
    assert r["end_timestamp"] == S + 7 * MS_PER_DAY + 2 * MS_PER_HOUR
    assert by_id[105]["n_days"] == 2 and by_id[105]["end_timestamp"] == S + 3 * MS_PER_DAY + 2 * MS_PER_HOUR

    # sorted by start_timestamp, then live_id
    assert rooms["live_id"].to_list() == [106, 107, 101, 104, 105, 103, 102]
    starts = rooms["start_timestamp"].to_numpy()
    assert np.all(np.diff(starts) >= 0)

    # violations: exactly 103 (streamer) and 105 (category), with the distinct counts
    assert sorted(violations["live_id"].to_list()) == [103, 105]
    v = {row["live_id"]: row for row in violations.iter_rows(named=True)}
    assert v[103]["distinct_streamer_id"] == 2
    assert v[103]["distinct_live_type"] == 1
    assert v[103]["distinct_live_content_category"] == 1
    assert v[103]["distinct_live_name_id"] == 1
    assert v[105]["distinct_streamer_id"] == 1
    assert v[105]["distinct_live_content_category"] == 2


def test_aggregate_matches_brute_force_on_random_rows() -> None:
    rng = np.random.default_rng(11)
    rows = []
    for live in range(1, 301):
        n_days = int(rng.integers(1, 5))
        day0 = int(rng.integers(0, 18))
        streamer = int(rng.integers(1, 50))
        live_type = int(rng.integers(1, 4))
        cat = str(rng.choice(["shop", "game", "other"]))
        name = int(rng.integers(0, 1000))
        bad = rng.random() < 0.15
        for d in range(n_days):
            start = S + (day0 + d) * MS_PER_DAY + int(rng.integers(0, MS_PER_DAY))
            end = start + int(rng.integers(0, 6 * MS_PER_HOUR))
            if rng.random() < 0.2:  # some censored ends on a CST midnight
                end = S + (day0 + d + 1 + int(rng.integers(0, 3))) * MS_PER_DAY
            attrs = [streamer, live_type, cat, name]
            if bad and d > 0:
                j = int(rng.integers(0, 4))
                attrs[j] = attrs[j] + 1000 if j != 2 else attrs[j] + "_x"
            rows.append(_row(int(p_date(start)), live, attrs[0], start, end, attrs[1], attrs[2], attrs[3]))
    table = pl.DataFrame([rows[i] for i in rng.permutation(len(rows))], schema=SCHEMA)
    rooms, violations = aggregate_rooms(table)

    # brute force
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["live_id"], []).append(r)
    expected = []
    expected_viol = {}
    for live, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["p_date"])
        end = max(r["end_timestamp"] for r in rs)
        expected.append((min(r["start_timestamp"] for r in rs), live, end, len(rs),
                         end % MS_PER_DAY == 57_600_000,
                         *(rs[0][c] for c in ROOM_CONSTANT_COLUMNS)))
        distinct = {c: len({r[c] for r in rs}) for c in ROOM_CONSTANT_COLUMNS}
        if any(v > 1 for v in distinct.values()):
            expected_viol[live] = distinct
    expected.sort(key=lambda x: (x[0], x[1]))

    got = list(zip(rooms["start_timestamp"], rooms["live_id"], rooms["end_timestamp"], rooms["n_days"],
                   rooms["end_censored"], *(rooms[c] for c in ROOM_CONSTANT_COLUMNS)))
    assert got == expected
    assert sum(x[4] for x in expected) > 20  # censored ends are exercised
    assert len(expected_viol) > 10
    got_viol = {
        row["live_id"]: {c: row[f"distinct_{c}"] for c in ROOM_CONSTANT_COLUMNS}
        for row in violations.iter_rows(named=True)
    }
    assert got_viol == expected_viol
