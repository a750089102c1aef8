"""Tests for recsys.data.live_index.LiveIndex against brute-force ``start <= t < end`` scans.

Project rule (brief section 6): a room is live on the half-open interval ``[start, end)``; when a streamer has
several rooms live at t, the one with the latest start wins; 0 when the streamer has no live room.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data.live_index import LiveIndex
from recsys.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, WINDOW_START_MS

BUCKETS = [7_777, MS_PER_MINUTE, 15 * MS_PER_MINUTE, MS_PER_DAY, 10 * MS_PER_DAY]
N_STREAMERS = 40
BACK_TO_BACK_STREAMER = 777  # owns only two back-to-back rooms


# --------------------------------------------------------------------------- data


def _make_rooms(seed: int = 0) -> dict[str, np.ndarray]:
    """A few hundred random rooms over 3 days, with overlapping rooms of one streamer and zero-length rooms."""
    rng = np.random.default_rng(seed)
    n = 300
    # half minute-aligned (boundaries fall on bucket edges), half at arbitrary ms
    start = WINDOW_START_MS + rng.integers(0, 3 * MS_PER_DAY, n)
    dur = rng.exponential(2 * MS_PER_HOUR, n).astype(np.int64) + 1
    aligned = np.arange(n) < n // 2
    start[aligned] = WINDOW_START_MS + (start[aligned] - WINDOW_START_MS) // MS_PER_MINUTE * MS_PER_MINUTE
    dur[aligned] = np.maximum(dur[aligned] // MS_PER_MINUTE, 1) * MS_PER_MINUTE
    dur[aligned & (rng.random(n) < 0.15)] += 1  # last live ms is the first ms of a bucket
    start[aligned & (rng.random(n) < 0.15)] -= 1  # first live ms is the last ms of a bucket
    dur[rng.random(n) < 0.03] = 1  # one-ms rooms
    dur[rng.random(n) < 0.08] = 0  # zero-length rooms: never live
    start[0], dur[0] = WINDOW_START_MS, 2 * MS_PER_HOUR  # the earliest start, so that aligned rooms sit on bucket edges
    streamer = rng.integers(1, N_STREAMERS + 1, n)
    starts, ends, streamers = [start], [start + dur], [streamer]
    # deliberate overlaps: streamers 1..10 get a long room with nested short rooms (and a zero-length one) inside
    for s in range(1, 11):
        s0 = WINDOW_START_MS + int(rng.integers(0, 2 * MS_PER_DAY))
        long_end = s0 + 20 * MS_PER_HOUR
        nested = s0 + np.sort(rng.integers(MS_PER_HOUR, 19 * MS_PER_HOUR, 4))
        nested_end = nested + rng.integers(1, 30 * MS_PER_MINUTE, 4)
        nested_end[-1] = nested[-1]  # zero-length room as the latest start
        starts += [np.r_[s0, nested]]
        ends += [np.r_[long_end, nested_end]]
        streamers += [np.full(5, s)]
    # back-to-back rooms of one streamer: the second starts exactly when the first ends
    b = WINDOW_START_MS + MS_PER_DAY + 12_345
    starts += [np.array([b, b + MS_PER_HOUR])]
    ends += [np.array([b + MS_PER_HOUR, b + 2 * MS_PER_HOUR])]
    streamers += [np.array([BACK_TO_BACK_STREAMER, BACK_TO_BACK_STREAMER])]
    start, end, streamer = np.concatenate(starts), np.concatenate(ends), np.concatenate(streamers)
    live_id = rng.permutation(np.arange(10_000, 10_000 + 3 * start.size))[: start.size]  # unique, not time-ordered
    return {
        "live_id": live_id.astype(np.int64),
        "streamer_id": streamer.astype(np.int64),
        "start": start.astype(np.int64),
        "end": end.astype(np.int64),
    }


@pytest.fixture(scope="module")
def rooms() -> dict[str, np.ndarray]:
    return _make_rooms(0)


def _query_times(r: dict[str, np.ndarray], bucket_ms: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = int(r["start"].min()), int(r["end"].max())
    rand = rng.integers(lo - 2 * MS_PER_HOUR, hi + 2 * MS_PER_HOUR, 600)
    edges = lo + bucket_ms * np.arange(0, (hi - lo) // bucket_ms + 2)
    edges = rng.choice(edges, size=min(edges.size, 200), replace=False)
    return np.unique(
        np.concatenate([rand, r["start"], r["end"], r["start"] - 1, r["end"] - 1, edges, edges - 1, [lo, hi]])
    )


def _brute_live(r: dict[str, np.ndarray], t: int) -> np.ndarray:
    return (r["start"] <= t) & (t < r["end"])


def _rooms_df(r: dict[str, np.ndarray], seed: int = 2) -> pl.DataFrame:
    perm = np.random.default_rng(seed).permutation(r["live_id"].size)  # unsorted input
    return pl.DataFrame(
        {
            "live_id": r["live_id"][perm],
            "streamer_id": r["streamer_id"][perm],
            "start_timestamp": r["start"][perm],
            "end_timestamp": r["end"][perm],
            "live_type": np.ones(perm.size, dtype=np.int64),
        }
    )


# --------------------------------------------------------------------------- live at t


@pytest.mark.parametrize(
    ("builder", "bucket_ms"),
    [("arrays", b) for b in BUCKETS] + [("rooms", 7_777), ("rooms", 15 * MS_PER_MINUTE)],
)
def test_live_sets_match_brute_force(rooms: dict[str, np.ndarray], bucket_ms: int, builder: str) -> None:
    if builder == "arrays":
        idx = LiveIndex.from_arrays(rooms["live_id"], rooms["streamer_id"], rooms["start"], rooms["end"], bucket_ms)
    else:
        idx = LiveIndex.from_rooms(_rooms_df(rooms), bucket_ms=bucket_ms)
    assert idx.n_rooms == rooms["live_id"].size
    times = _query_times(rooms, bucket_ms)
    expected_n = np.empty(times.size, dtype=np.int64)
    n_nonempty = 0
    for i, t in enumerate(times):
        t = int(t)
        m = _brute_live(rooms, t)
        expected_n[i] = m.sum()
        n_nonempty += bool(m.any())
        rows = idx.live_rows(t)
        # row indices point at rooms that really are live, with no duplicates
        assert np.unique(rows).size == rows.size
        np.testing.assert_array_equal(np.sort(idx.live_id[rows]), np.sort(rooms["live_id"][m]))
        assert np.all((idx.start[rows] <= t) & (idx.end[rows] > t))
        np.testing.assert_array_equal(idx.live_rooms(t), np.sort(rooms["live_id"][m]))
        np.testing.assert_array_equal(idx.live_streamers(t), np.unique(rooms["streamer_id"][m]))
    np.testing.assert_array_equal(idx.n_live(times), expected_n)
    assert n_nonempty > times.size // 2  # the test data really exercises non-empty live sets


@pytest.mark.parametrize("bucket_ms", BUCKETS)
def test_half_open_boundaries(rooms: dict[str, np.ndarray], bucket_ms: int) -> None:
    idx = LiveIndex.from_arrays(rooms["live_id"], rooms["streamer_id"], rooms["start"], rooms["end"], bucket_ms)
    n_zero = 0
    for lid, s, e in zip(rooms["live_id"], rooms["start"], rooms["end"]):
        if e > s:
            assert lid in idx.live_rooms(int(s)), "t == start must be live"
            assert lid in idx.live_rooms(int(e) - 1), "t == end - 1 must be live"
            assert lid not in idx.live_rooms(int(e)), "t == end must not be live (half-open)"
            assert lid not in idx.live_rooms(int(s) - 1)
        else:
            n_zero += 1
            for t in (int(s) - 1, int(s), int(s) + 1):
                assert lid not in idx.live_rooms(t), "a zero-length room is never live"
    assert n_zero >= 5
    # back-to-back rooms: at the hand-over instant only the second is live
    first, second = np.flatnonzero(rooms["streamer_id"] == BACK_TO_BACK_STREAMER)
    assert rooms["end"][first] == rooms["start"][second]
    t = int(rooms["start"][second])
    live = idx.live_rooms(t)
    assert rooms["live_id"][second] in live and rooms["live_id"][first] not in live
    got = idx.room_of_streamer(np.array([BACK_TO_BACK_STREAMER] * 3), np.array([t - 1, t, rooms["end"][second]]))
    np.testing.assert_array_equal(got, [rooms["live_id"][first], rooms["live_id"][second], 0])


@pytest.mark.parametrize("bucket_ms", BUCKETS)
def test_outside_all_rooms_is_empty(rooms: dict[str, np.ndarray], bucket_ms: int) -> None:
    idx = LiveIndex.from_arrays(rooms["live_id"], rooms["streamer_id"], rooms["start"], rooms["end"], bucket_ms)
    lo, hi = int(rooms["start"].min()), int(rooms["end"].max())
    outside = [lo - 1, lo - MS_PER_HOUR, lo - 30 * MS_PER_DAY, hi, hi + 1, hi + bucket_ms, hi + 30 * MS_PER_DAY]
    for t in outside:
        assert idx.live_rows(t).size == 0
        assert idx.live_rooms(t).size == 0
        assert idx.live_streamers(t).size == 0
    np.testing.assert_array_equal(idx.n_live(np.array(outside)), np.zeros(len(outside), dtype=np.int64))
    assert idx.live_rooms(lo).size >= 1  # the earliest room is live at its own start
    s = np.full(len(outside), 1, dtype=np.int64)
    np.testing.assert_array_equal(idx.room_of_streamer(s, np.array(outside)), np.zeros(len(outside)))
    np.testing.assert_array_equal(idx.is_live(np.full(len(outside), rooms["live_id"][0]), np.array(outside)),
                                  np.zeros(len(outside), dtype=bool))


def test_index_arrays_sorted_by_start_then_live_id(rooms: dict[str, np.ndarray]) -> None:
    idx = LiveIndex.from_rooms(_rooms_df(rooms))
    order = np.lexsort((rooms["live_id"], rooms["start"]))
    np.testing.assert_array_equal(idx.live_id, rooms["live_id"][order])
    np.testing.assert_array_equal(idx.start, rooms["start"][order])
    np.testing.assert_array_equal(idx.end, rooms["end"][order])
    np.testing.assert_array_equal(idx.streamer_id, rooms["streamer_id"][order])


def test_empty_rooms_table_raises() -> None:
    empty = pl.DataFrame(
        {"live_id": [], "streamer_id": [], "start_timestamp": [], "end_timestamp": []},
        schema={c: pl.Int64 for c in ("live_id", "streamer_id", "start_timestamp", "end_timestamp")},
    )
    with pytest.raises(ValueError):
        LiveIndex.from_rooms(empty)


# --------------------------------------------------------------------------- room of streamer


def _brute_room_sets(r: dict[str, np.ndarray], s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, n_rooms) mask of the acceptable answers (live rooms with the latest start) and (m,) any-live flags."""
    live = (r["streamer_id"][None, :] == s[:, None]) & (r["start"][None, :] <= t[:, None]) & (
        t[:, None] < r["end"][None, :]
    )
    best = np.where(live, r["start"][None, :], np.iinfo(np.int64).min).max(axis=1)
    return live & (r["start"][None, :] == best[:, None]), live.any(axis=1)


def _check_room_of_streamer(r: dict[str, np.ndarray], got: np.ndarray, s: np.ndarray, t: np.ndarray) -> None:
    ok_set, any_live = _brute_room_sets(r, s, t)
    assert got.shape == s.shape
    assert np.all(got[~any_live] == 0), "no live room -> 0"
    hit = (r["live_id"][None, :] == got[:, None]) & ok_set
    bad = np.flatnonzero(any_live & ~hit.any(axis=1))
    assert bad.size == 0, (
        f"{bad.size} wrong answers, e.g. streamer {s[bad[0]]} t {t[bad[0]]}: got {got[bad[0]]}, "
        f"expected one of {r['live_id'][ok_set[bad[0]]]}"
    )


def _pairs(r: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = 3000
    k = rng.integers(0, r["live_id"].size, m)
    s = r["streamer_id"][k].copy()
    kind = rng.integers(0, 6, m)
    t = np.where(
        kind == 0, r["start"][k],
        np.where(kind == 1, r["end"][k],
                 np.where(kind == 2, r["end"][k] - 1,
                          r["start"][k] + rng.integers(-MS_PER_HOUR, 21 * MS_PER_HOUR, m))),
    )
    # some streamers unknown to the index, some random times anywhere
    unknown = rng.random(m) < 0.05
    s[unknown] = rng.integers(N_STREAMERS + 100, N_STREAMERS + 200, unknown.sum())
    anywhere = rng.random(m) < 0.1
    t[anywhere] = rng.integers(int(r["start"].min()) - MS_PER_DAY, int(r["end"].max()) + MS_PER_DAY,
                               anywhere.sum())
    return s.astype(np.int64), t.astype(np.int64)


@pytest.mark.parametrize("bucket_ms", [MS_PER_MINUTE, 15 * MS_PER_MINUTE])
def test_room_of_streamer_matches_brute_force(rooms: dict[str, np.ndarray], bucket_ms: int) -> None:
    idx = LiveIndex.from_rooms(_rooms_df(rooms), bucket_ms=bucket_ms)
    s, t = _pairs(rooms, seed=3)
    got = idx.room_of_streamer(s, t)
    _check_room_of_streamer(rooms, got, s, t)
    # the data exercises the step-back case: the streamer's latest-started room (start <= t) has ended but an
    # earlier one is still live
    started = (rooms["streamer_id"][None, :] == s[:, None]) & (rooms["start"][None, :] <= t[:, None])
    latest = np.where(started, rooms["start"][None, :], np.iinfo(np.int64).min).argmax(axis=1)
    latest_live = started.any(axis=1) & (rooms["end"][latest] > t)
    _, any_live = _brute_room_sets(rooms, s, t)
    assert np.sum(any_live & ~latest_live) >= 20
    assert np.sum(any_live) >= 1000 and np.sum(~any_live) >= 200


def test_room_of_streamer_steps_back_over_ended_rooms() -> None:
    # streamer 7: A [0, 100) long; B [10, 20) and C [30, 40) nested; D [45, 45) zero-length; E [60, 70) nested
    # streamer 3 rooms interleave in time (must not be picked for streamer 7)
    base = WINDOW_START_MS
    live_id = np.array([1, 2, 3, 4, 5, 50, 51])
    streamer = np.array([7, 7, 7, 7, 7, 3, 3])
    start = base + np.array([0, 10, 30, 45, 60, 5, 50])
    end = base + np.array([100, 20, 40, 45, 70, 200, 55])
    cases = {  # offset -> expected room of streamer 7
        -1: 0, 0: 1, 9: 1, 10: 2, 19: 2, 20: 1, 25: 1, 30: 3, 39: 3, 40: 1, 44: 1, 45: 1, 50: 1,
        59: 1, 60: 5, 69: 5, 70: 1, 99: 1, 100: 0, 150: 0,
    }
    for bucket_ms in (1, 7, 1000):
        idx = LiveIndex.from_arrays(live_id, streamer, start, end, bucket_ms)
        offs = np.array(list(cases))
        got = idx.room_of_streamer(np.full(offs.size, 7), base + offs)
        np.testing.assert_array_equal(got, np.array(list(cases.values())), err_msg=f"bucket_ms={bucket_ms}")
        # streamer 3: room 51 (latest start) wins over room 50 while both are live
        got3 = idx.room_of_streamer(np.array([3, 3, 3, 3, 3]), base + np.array([49, 50, 54, 55, 199]))
        np.testing.assert_array_equal(got3, [50, 51, 51, 50, 50])
        # unknown streamers (below, between and above the known ids) -> 0
        np.testing.assert_array_equal(idx.room_of_streamer(np.array([1, 5, 99]), base + 30), [0, 0, 0])


def test_room_of_streamer_equal_starts_picks_a_latest_start_room() -> None:
    base = WINDOW_START_MS
    live_id = np.array([20, 10, 30])
    streamer = np.array([1, 1, 1])
    start = base + np.array([5, 5, 0])
    end = base + np.array([50, 50, 100])
    idx = LiveIndex.from_arrays(live_id, streamer, start, end, 10)
    got = idx.room_of_streamer(np.array([1, 1, 1]), base + np.array([5, 49, 50]))
    assert got[0] in (10, 20) and got[1] in (10, 20)
    assert got[2] == 30


def test_room_of_streamer_scalar_time_broadcasts(rooms: dict[str, np.ndarray]) -> None:
    idx = LiveIndex.from_arrays(rooms["live_id"], rooms["streamer_id"], rooms["start"], rooms["end"])
    rng = np.random.default_rng(4)
    s = np.arange(0, N_STREAMERS + 5, dtype=np.int64)
    n_nonzero = 0
    for t in rng.integers(int(rooms["start"].min()), int(rooms["end"].max()), 30):
        got = idx.room_of_streamer(s, int(t))
        assert got.shape == s.shape
        np.testing.assert_array_equal(got, idx.room_of_streamer(s, np.full(s.size, t)))
        _check_room_of_streamer(rooms, got, s, np.full(s.size, t))
        n_nonzero += int((got != 0).sum())
    assert n_nonzero > 30


# --------------------------------------------------------------------------- is_live


def test_is_live_matches_brute_force(rooms: dict[str, np.ndarray]) -> None:
    idx = LiveIndex.from_rooms(_rooms_df(rooms))
    rng = np.random.default_rng(5)
    m = 4000
    k = rng.integers(0, rooms["live_id"].size, m)
    ids = rooms["live_id"][k].copy()
    kind = rng.integers(0, 5, m)
    t = np.where(kind == 0, rooms["start"][k],
                 np.where(kind == 1, rooms["end"][k],
                          np.where(kind == 2, rooms["start"][k] - 1,
                                   rooms["start"][k] + rng.integers(-MS_PER_HOUR, 4 * MS_PER_HOUR, m))))
    unknown = rng.random(m) < 0.1
    pool = np.setdiff1d(np.r_[0, 1, 9_999, rooms["live_id"] + 1, 10**9], rooms["live_id"])
    ids[unknown] = rng.choice(pool, unknown.sum())
    got = idx.is_live(ids, t)
    row = {int(lid): i for i, lid in enumerate(rooms["live_id"])}
    expected = np.array(
        [i in row and rooms["start"][row[i]] <= tt < rooms["end"][row[i]] for i, tt in zip(ids.tolist(), t.tolist())]
    )
    np.testing.assert_array_equal(got, expected)
    assert expected.sum() > 500 and (~expected & ~unknown).sum() > 500
    assert not got[unknown].any()
    # scalar time broadcasts
    t0 = int(rooms["start"][0]) + 1
    np.testing.assert_array_equal(idx.is_live(rooms["live_id"], t0), _brute_live(rooms, t0))
