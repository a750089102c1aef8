"""Tests for recsys.data.ranking (and ``last_before`` / pair keys of recsys.data.features).

The most important property is point in time: a feature built for a sample at ``t`` never reads an event at or
after ``t`` (dense aggregates, histories), while labels read exactly the watched session ``[t, t + watch]``.
Everything is checked against brute-force recomputations on the tiny synthetic twin (``tiny_data``).
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from recsys.data.features import count_before, last_before, sum_before
from recsys.data.ranking import (
    CONTEXT_COLUMNS,
    DENSE_COLUMNS,
    N_GAP_BUCKETS,
    PRIOR_CTR,
    PRIOR_N,
    SEQ_KEYS,
    TASKS,
    CategoricalVocab,
    IdIndex,
    RankingDataset,
    RankingFeatureSpec,
    ServingTables,
    build_ranking_dataset,
    dense_features,
    gap_bucket,
)
from recsys.data.schema import STREAMER_PROFILE_COLUMNS, USER_PROFILE_COLUMNS
from recsys.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, WINDOW_START_MS

SEQ_TABLES = dict(zip(SEQ_KEYS, ("click", "comment", "like", "gift")))
EVENT_TABLES = ("click", "comment", "like", "gift", "negative")  # negatives: the exposures of CTR features
WATCH_SUMS = ("u_watch_min", "us_watch_min")


@pytest.fixture(scope="module")
def ds(tiny_ranking: RankingDataset) -> RankingDataset:
    return tiny_ranking


# =============================================================================
# 1a. Point in time: dense features
# =============================================================================


@pytest.fixture(scope="module")
def query(tiny_data) -> tuple[int, pl.DataFrame]:
    """(tq, Q): the median click time and ~300 real (user, live, streamer) combos seen around it, all asked at tq."""
    clicks = tiny_data.tables["click"]
    tq = int(np.median(clicks["timestamp"].to_numpy()))
    near = clicks.filter((pl.col("timestamp") - tq).abs() <= 6 * MS_PER_HOUR)
    combos = near.select("user_id", "live_id", "streamer_id").unique(maintain_order=True).head(300)
    assert combos.height >= 50, "tiny data should have enough clicks around the median time"
    q = combos.with_columns(pl.lit(tq, pl.Int64).alias("timestamp"))
    return tq, q


def _moved_copies(tables: dict[str, pl.DataFrame], q: pl.DataFrame, times_for, seed: int) -> dict[str, pl.DataFrame]:
    """Per event table: (a) 3 new events on every query's exact (user, live, streamer) keys and (b) copies of all
    real events of the query users; every copy gets its timestamp from ``times_for(rng, n)``."""
    rng = np.random.default_rng(seed)
    users = q["user_id"].unique()
    out = {}
    for name in EVENT_TABLES:
        df = tables[name]
        keyed = pl.concat([q.select("user_id", "live_id", "streamer_id")] * 3)
        extra = {}
        if "watch_live_time" in df.columns:  # include a zero watch (ends at its own timestamp)
            w = rng.integers(0, 2 * MS_PER_HOUR, keyed.height)
            w[:5] = 0
            extra["watch_live_time"] = w
        if "gift_price" in df.columns:
            extra["gift_price"] = rng.integers(1, 500, keyed.height)
        keyed = keyed.with_columns(pl.Series("timestamp", times_for(rng, keyed.height), dtype=pl.Int64),
                                   *[pl.Series(k, v, dtype=pl.Int64) for k, v in extra.items()])
        real = df.filter(pl.col("user_id").is_in(users.implode()))
        real = real.with_columns(pl.Series("timestamp", times_for(rng, real.height), dtype=pl.Int64))
        out[name] = pl.concat([keyed.select(df.columns), real.select(df.columns)])
    return out


def _with_extra(tables: dict[str, pl.DataFrame], extra: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    t = dict(tables)
    for name, df in extra.items():
        t[name] = pl.concat([t[name], df]).sample(fraction=1.0, shuffle=True, seed=3)  # any table order
    return t


def _future_times(tq: int):
    def times(rng: np.random.Generator, n: int) -> np.ndarray:
        t = tq + rng.integers(0, 3 * MS_PER_DAY, n)
        t[rng.random(n) < 0.4] = tq  # many exactly at tq
        t[: min(n, 3)] = tq + 1
        return t
    return times


def test_dense_features_ignore_events_at_or_after_t(tiny_data, query) -> None:
    tq, q = query
    tables = tiny_data.tables
    base = dense_features(q, tables)
    extra = _moved_copies(tables, q, _future_times(tq), seed=1)
    assert all(df.height > q.height for df in extra.values())
    assert (extra["click"]["timestamp"] == tq).sum() > 100
    after = dense_features(q, _with_extra(tables, extra))
    for c in DENSE_COLUMNS:
        if c in WATCH_SUMS:  # prefix-sum differences: equal up to float rounding of the (longer) cumsum
            np.testing.assert_allclose(after[c].to_numpy(), base[c].to_numpy(), rtol=1e-10, atol=1e-9,
                                       err_msg=f"{c} read the future")
        else:
            np.testing.assert_array_equal(after[c].to_numpy(), base[c].to_numpy(), err_msg=f"{c} read the future")
    # the baseline is not trivially all zero
    nonzero = [c for c in DENSE_COLUMNS if (base[c].to_numpy() != 0).any()]
    assert {"u_clicks", "s_clicks", "us_clicks", "u_watch_min", "room_clicks_before", "room_age_min",
            "us_hours_since_last", "u_comments", "u_likes"} <= set(nonzero)


def test_dense_features_leakage_test_has_teeth(tiny_data, query) -> None:
    """The same copies one millisecond before tq do change every event-count feature."""
    tq, q = query
    tables = tiny_data.tables
    base = dense_features(q, tables)
    extra = _moved_copies(tables, q, lambda rng, n: np.full(n, tq - 1), seed=1)
    after = dense_features(q, _with_extra(tables, extra))
    changed = {c for c in DENSE_COLUMNS if not np.array_equal(after[c].to_numpy(), base[c].to_numpy())}
    expected = set(DENSE_COLUMNS) - {"room_age_min", "u_watch_min", "us_watch_min"}
    assert expected <= changed, f"unchanged: {sorted(expected - changed)}"
    # every query has a click on its own pair 1 ms ago
    np.testing.assert_allclose(after["us_hours_since_last"].to_numpy(), 1 / MS_PER_HOUR)
    assert (after["us_never"].to_numpy() == 0).all()
    assert (base["us_never"].to_numpy() == 1).any()
    np.testing.assert_array_equal(after["room_age_min"].to_numpy(), base["room_age_min"].to_numpy())


@pytest.mark.parametrize(("watch_ms", "watch_min"), [(10 * MS_PER_MINUTE, 0.0), (30_000, 0.5), (60_000, 1.0)])
def test_finished_watch_rule(tiny_data, query, watch_ms: int, watch_min: float) -> None:
    """A click at tq - 60 s counts as a click at tq, its watch minutes only when the session is over at tq."""
    tq, q = query
    tables = tiny_data.tables
    q1 = q.head(1)
    base = dense_features(q1, tables)
    click = q1.select("user_id", "live_id", "streamer_id").with_columns(
        pl.lit(tq - 60_000, pl.Int64).alias("timestamp"), pl.lit(watch_ms, pl.Int64).alias("watch_live_time"))
    after = dense_features(q1, _with_extra(tables, {"click": click.select(tables["click"].columns)}))
    diff = {c: after[c][0] - base[c][0] for c in DENSE_COLUMNS}
    assert diff["u_clicks"] == 1 and diff["us_clicks"] == 1 and diff["s_clicks"] == 1
    assert diff["room_clicks_5m"] == 1 and diff["room_clicks_30m"] == 1 and diff["room_clicks_before"] == 1
    assert diff["u_watch_min"] == pytest.approx(watch_min, abs=1e-9)
    assert diff["us_watch_min"] == pytest.approx(watch_min, abs=1e-9)
    assert after["us_hours_since_last"][0] == pytest.approx(60_000 / MS_PER_HOUR)


def test_dense_features_small_hand_example() -> None:
    """Windows and strictness on a hand-made table (t = S + 1 h)."""
    s = WINDOW_START_MS
    t = s + MS_PER_HOUR
    clicks = pl.DataFrame({
        "user_id": [1, 1, 1, 2, 2, 1],
        "live_id": [10, 10, 11, 10, 10, 10],
        "streamer_id": [100, 100, 101, 100, 100, 100],
        "timestamp": [t - 40 * MS_PER_MINUTE, t - 3 * MS_PER_MINUTE, t - 20 * MS_PER_MINUTE, t - 5 * MS_PER_MINUTE,
                      t - 10 * MS_PER_MINUTE, t],
        "watch_live_time": [30 * MS_PER_MINUTE, MS_PER_HOUR, 20 * MS_PER_MINUTE, 60_000, 60_000, 1],
    })
    gifts = pl.DataFrame({"user_id": [1, 1], "live_id": [10, 10], "streamer_id": [100, 100],
                          "timestamp": [t - 1, t], "gift_price": [5, 7]})
    negatives = pl.DataFrame({"user_id": [1, 1, 2], "live_id": [10, 11, 10], "streamer_id": [100, 101, 100],
                              "timestamp": [t - 2 * MS_PER_MINUTE, t, t - MS_PER_MINUTE]})
    rooms = pl.DataFrame({"live_id": [10, 11], "start_timestamp": [s, s + 30 * MS_PER_MINUTE],
                          "live_content_category": ["game", "shop"]})
    q = pl.DataFrame({"user_id": [1, 3], "live_id": [10, 12], "streamer_id": [100, 102], "timestamp": [t, t]})
    f = dense_features(q, {"click": clicks, "gift": gifts, "negative": negatives, "rooms": rooms})
    row = {c: f[c][0] for c in DENSE_COLUMNS}
    assert row["u_clicks"] == 3 and row["us_clicks"] == 2 and row["s_clicks"] == 4
    assert row["u_watch_min"] == pytest.approx(50.0)  # 30 + 20 min sessions are over, the 60 min one is not
    assert row["us_watch_min"] == pytest.approx(30.0)
    assert row["room_clicks_5m"] == 2  # t-3 and t-5 (inclusive lower bound)
    assert row["room_clicks_30m"] == 3 and row["room_clicks_before"] == 4
    assert row["us_hours_since_last"] == pytest.approx(3 / 60) and row["us_never"] == 0
    assert row["u_gifts"] == 1 and row["us_gifts"] == 1 and row["s_gifts"] == 1 and row["room_gifts_30m"] == 1
    assert row["u_comments"] == 0 and row["u_likes"] == 0
    assert row["room_age_min"] == pytest.approx(60.0)
    # exposures = past clicks + past negatives (the negative at t itself is not past)
    assert row["u_exposures"] == 4 and row["us_exposures"] == 3 and row["s_exposures"] == 6
    assert row["uc_clicks"] == 2 and row["uc_exposures"] == 3  # user 1 in "game" rooms (live 10)
    for ctr, clk, exp in (("u_ctr", 3, 4), ("s_ctr", 4, 6), ("us_ctr", 2, 3), ("uc_ctr", 2, 3)):
        assert row[ctr] == pytest.approx((clk + PRIOR_CTR * PRIOR_N) / (exp + PRIOR_N)), ctr
    unknown = {c: f[c][1] for c in DENSE_COLUMNS}  # no events, no room: counts 0, never = 1, CTRs = prior
    assert unknown["us_never"] == 1
    ctrs = {"u_ctr", "s_ctr", "us_ctr", "uc_ctr"}
    assert all(unknown[c] == pytest.approx(PRIOR_CTR) for c in ctrs)
    assert all(v == 0 for c, v in unknown.items() if c not in ctrs | {"us_never"})


# =============================================================================
# 1b. Point in time: histories
# =============================================================================


def _brute_history(df: pl.DataFrame, ds: RankingDataset, user: int, t: int, length: int):
    """The user's last ``length`` events strictly before t, oldest first, ties in table order (stable sort)."""
    u = df["user_id"].to_numpy()
    ts = df["timestamp"].to_numpy()
    idx = np.flatnonzero((u == user) & (ts < t))
    idx = idx[np.argsort(ts[idx], kind="stable")][-length:] if length else idx[:0]
    return ds.streamer_index.lookup(df["streamer_id"].to_numpy()[idx]), ts[idx]


def _history_rows(ds: RankingDataset) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = ds.samples.height
    rows = rng.choice(n, 300, replace=False)
    # plus rows with the longest comment / gift histories (the behaviour tables are sparse)
    longest = [np.argsort(ds.ends[k] - ds.histories[k].user_start[ds.user_rows])[-20:] for k in SEQ_KEYS[1:]]
    return np.unique(np.concatenate([rows, *longest, [0, n - 1]]))


def test_histories_match_brute_force(ds: RankingDataset, tiny_data) -> None:
    rows = _history_rows(ds)
    a = ds.arrays(rows)
    users = ds.samples["user_id"].to_numpy()[rows]
    times = ds.samples["timestamp"].to_numpy()[rows]
    full = {k: 0 for k in SEQ_KEYS}
    for key, length in ds.spec.seq_lengths.items():
        df = tiny_data.tables[SEQ_TABLES[key]]
        assert a.hist[key].shape == (rows.size, length)
        for i, (u, t) in enumerate(zip(users, times)):
            items, ev_t = _brute_history(df, ds, int(u), int(t), length)
            n = items.size
            assert a.hist_len[key][i] == n, (key, i)
            np.testing.assert_array_equal(a.hist[key][i, :n], items, err_msg=f"{key} row {rows[i]}")
            assert (a.hist[key][i, n:] == 0).all()
            if key == "hist_click":
                gaps = a.hist_gap[i]
                np.testing.assert_array_equal(gaps[:n], gap_bucket(t - ev_t))
                assert (gaps[n:] == 0).all() and (gaps[:n] >= 1).all()
            full[key] += n == length
    # the check covers truncated (full) windows and non-empty behaviour histories
    assert full["hist_click"] > 10
    for key in SEQ_KEYS[1:]:
        assert (a.hist_len[key] > 0).sum() >= 10, key


def test_history_times_strictly_before_sample_time(ds: RankingDataset) -> None:
    t = ds.timestamps
    for key, length in ds.spec.seq_lengths.items():
        h = ds.histories[key]
        items, times, lens = h.window(ds.user_rows, ds.ends[key], length)
        valid = np.arange(length)[None, :] < lens[:, None]
        assert valid.any()
        assert (times[valid] < np.broadcast_to(t[:, None], times.shape)[valid]).all(), key
        assert (items[valid] >= 1).all() and (items[valid] < ds.spec.n_streamers).all()
        # oldest first: non-decreasing times inside each window
        d = np.diff(np.where(valid, times, np.iinfo(np.int64).max), axis=1)
        assert (d[valid[:, 1:]] >= 0).all(), key
        # the window really is the user's events: hist length = min(L, number of the user's events before t)
        n_before = ds.ends[key] - h.user_start[ds.user_rows]
        np.testing.assert_array_equal(lens, np.minimum(n_before, length))


def test_history_ties_are_strict_and_stable() -> None:
    """EventHistory on hand data: equal timestamps at t are excluded, ties before t keep table order."""
    from recsys.data.ranking import EventHistory

    users = np.array([1, 1, 1, 1, 2, 1])
    times = np.array([100, 50, 100, 200, 10, 100])
    items = np.array([7, 3, 8, 9, 4, 6])
    h = EventHistory.build(users, times, items, n_users=3, origin=0)
    end = h.end_positions(np.array([1, 1, 1, 2, 0]), np.array([100, 101, 201, 10, 500]))
    it, ti, ln = h.window(np.array([1, 1, 1, 2, 0]), end, 3)
    np.testing.assert_array_equal(ln, [1, 3, 3, 0, 0])
    np.testing.assert_array_equal(it[0], [3, 0, 0])
    np.testing.assert_array_equal(it[1], [7, 8, 6])  # the three t=100 ties in table order
    np.testing.assert_array_equal(it[2], [8, 6, 9])
    np.testing.assert_array_equal(ti[2], [100, 100, 200])
    assert (it[3] == 0).all() and (it[4] == 0).all()


# =============================================================================
# 1c. Labels
# =============================================================================


def test_labels_match_brute_force(ds: RankingDataset, tiny_data) -> None:
    s = ds.samples.with_row_index("row")
    clicked = s.filter(pl.col("label") == 1).select(
        "row", "user_id", "live_id", pl.col("timestamp").alias("t"),
        (pl.col("timestamp") + pl.col("watch_live_time")).alias("end"))
    expected = {}
    for name in ("comment", "like", "gift"):
        ev = tiny_data.tables[name]
        cols = ["user_id", "live_id", "timestamp"] + (["gift_price"] if name == "gift" else [])
        j = clicked.join(ev.select(cols), on=["user_id", "live_id"], how="inner").filter(
            (pl.col("timestamp") >= pl.col("t")) & (pl.col("timestamp") <= pl.col("end")))
        agg = j.group_by("row").agg(pl.len().alias("n"), *([pl.col("gift_price").sum().alias("v")]
                                                           if name == "gift" else []))
        full = clicked.select("row").join(agg, on="row", how="left", maintain_order="left").fill_null(0)
        expected[name] = (full["n"].to_numpy() > 0).astype(np.float32)
        if name == "gift":
            expected["gift_value"] = full["v"].to_numpy().astype(np.float32)
    rows = clicked["row"].to_numpy()
    for name, exp in expected.items():
        np.testing.assert_array_equal(ds.samples[name].to_numpy()[rows], exp, err_msg=name)
        assert exp.sum() > 0, f"no positive {name} labels: the check would be vacuous"
    watch = ds.samples["watch_live_time"].to_numpy()[rows]
    np.testing.assert_allclose(ds.samples["watch"].to_numpy()[rows], np.log1p(watch / 1000.0), rtol=1e-6)
    assert (ds.samples["click"].to_numpy()[rows] == 1).all()
    # non-clicked rows: every label is zero
    neg = s.filter(pl.col("label") == 0)
    assert neg.height > 0
    for k in (*TASKS, "gift_value"):
        assert (neg[k].to_numpy() == 0).all(), k
    # a behaviour event after the session ended (or in another room) is not a label: some such events exist
    j = clicked.join(tiny_data.tables["comment"].select("user_id", "live_id", "timestamp"),
                     on=["user_id", "live_id"], how="inner")
    assert (j["timestamp"] > j["end"]).any() or (j["timestamp"] < j["t"]).any()


# =============================================================================
# 2. last_before and pair keys
# =============================================================================


def _brute_last(keys, times, q_keys, q_times) -> np.ndarray:
    out = np.full(len(q_times), -1, dtype=np.int64)
    for i in range(len(q_times)):
        same = np.all(keys == q_keys[i], axis=1) if keys.ndim == 2 else keys == q_keys[i]
        m = same & (times < q_times[i])
        if m.any():
            out[i] = times[m].max()
    return out


@pytest.mark.parametrize("base", [0, WINDOW_START_MS])
@pytest.mark.parametrize("kind", ["1d", "pair", "pair_generic", "triple"])
def test_last_before_matches_brute_force(base: int, kind: str) -> None:
    rng = np.random.default_rng(["1d", "pair", "pair_generic", "triple"].index(kind) + (base > 0) * 10)
    n, m = 500, 400
    if kind == "1d":
        keys, q_keys = rng.integers(0, 8, n), rng.integers(0, 11, m)
    elif kind == "pair":
        keys, q_keys = rng.integers(0, 5, (n, 2)), rng.integers(0, 7, (m, 2))
    elif kind == "pair_generic":  # negative and huge ids cannot be packed: generic np.unique path
        vals = np.array([-3, 0, 5, 2**40, 2**31])
        keys, q_keys = vals[rng.integers(0, 5, (n, 2))], vals[rng.integers(0, 5, (m, 2))]
        q_keys[:20, 0] = 7  # unseen
    else:
        keys, q_keys = rng.integers(0, 3, (n, 3)), rng.integers(0, 4, (m, 3))
    times = base + rng.integers(0, 80, n)  # many equal timestamps
    q_times = base + rng.integers(-5, 90, m)
    q_times[:100] = times[:100]  # exactly on an event of the same key: must be excluded
    q_keys[:100] = keys[:100]
    exp = _brute_last(keys, times, q_keys, q_times)
    assert (exp == -1).sum() > 20 and (exp >= 0).sum() > m // 3
    got = last_before(keys, times, q_keys, q_times)
    np.testing.assert_array_equal(got, exp)
    assert (got[:100] < q_times[:100]).all()


def test_last_before_edge_cases() -> None:
    s = WINDOW_START_MS
    keys = np.array([[1, 2], [1, 2], [1, 3], [2, 2]])
    times = np.array([s + 10, s + 20, s + 5, s + 20])
    q = np.array([[1, 2], [1, 2], [1, 2], [1, 3], [2, 2], [9, 9], [2, 1]])
    qt = np.array([s + 20, s + 21, s + 10, s + 100, s + 20, s + 100, s + 100])
    np.testing.assert_array_equal(last_before(keys, times, q, qt), [s + 10, s + 20, -1, s + 5, -1, -1, -1])
    empty = np.zeros((0, 2), np.int64)
    np.testing.assert_array_equal(last_before(empty, np.array([], np.int64), q[:2], qt[:2]), [-1, -1])
    np.testing.assert_array_equal(last_before(np.array([], np.int64), np.array([], np.int64),
                                              np.array([1]), np.array([s])), [-1])


@pytest.mark.parametrize("inclusive", [False, True])
def test_pair_packing_agrees_with_generic_path(inclusive: bool) -> None:
    """Packed 2-column keys vs the same keys with a constant third column (np.unique(axis=0) path)."""
    rng = np.random.default_rng(5 + inclusive)
    n, m = 3000, 1000
    keys = np.stack([rng.integers(0, 2**31 - 1, n) % 50, rng.integers(0, 40, n)], axis=1)
    keys[:10] = [[2**31 - 1, 0], [0, 2**31 - 1]] * 5  # the largest packable ids
    q = np.concatenate([keys[rng.integers(0, n, m - 100)], rng.integers(0, 60, (100, 2))])
    times = WINDOW_START_MS + rng.integers(0, 10 * MS_PER_DAY, n)
    qt = np.concatenate([times[rng.integers(0, n, m // 2)], WINDOW_START_MS + rng.integers(0, 10 * MS_PER_DAY, m // 2)])
    values = rng.normal(size=n)
    k3, q3 = np.c_[keys, np.full(n, 7)], np.c_[q, np.full(m, 7)]
    c2 = count_before(keys, times, q, qt, inclusive=inclusive)
    c3 = count_before(k3, times, q3, qt, inclusive=inclusive)
    np.testing.assert_array_equal(c2, c3)
    assert c2.max() > 0 and (c2 == 0).any()
    np.testing.assert_allclose(sum_before(keys, times, values, q, qt, inclusive=inclusive),
                               sum_before(k3, times, values, q3, qt, inclusive=inclusive), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(last_before(keys, times, q, qt), last_before(k3, times, q3, qt))
    # swapped columns are different keys (no collision in the packing)
    sw = count_before(keys, times, q[:, ::-1], qt, inclusive=inclusive)
    sw3 = count_before(k3, times, np.c_[q[:, ::-1], np.full(m, 7)], qt, inclusive=inclusive)
    np.testing.assert_array_equal(sw, sw3)


# =============================================================================
# 3. Encoders
# =============================================================================


def test_categorical_vocab_encode() -> None:
    df = pl.DataFrame({"a": ["x", "y", "x", "z"], "b": ["1", "2", "1", "1"]})
    v = CategoricalVocab.fit(df, ("a", "b"))
    assert v.size == 1 + 3 + 2
    ids = v.encode(df)
    assert ids.shape == (4, 2) and ids.dtype == np.int64
    assert ids[0, 0] == ids[2, 0] and ids[0, 1] == ids[2, 1] == ids[3, 1]
    distinct = {(c, x): i for c in range(2) for x, i in zip(df[df.columns[c]], ids[:, c])}
    assert len(set(distinct.values())) == len(distinct)  # unique across columns
    assert set(np.unique(ids)) == set(range(1, v.size))
    new = pl.DataFrame({"a": ["y", "w", None], "b": ["x", "2", "1"]})  # "x" in b is unseen in b
    enc = v.encode(new)
    np.testing.assert_array_equal(enc, [[ids[1, 0], 0], [0, ids[1, 1]], [0, ids[0, 1]]])
    # integers are encoded by their string value
    ints = CategoricalVocab.fit(pl.DataFrame({"h": [3, 1, 3]}), ("h",))
    np.testing.assert_array_equal(ints.encode(pl.DataFrame({"h": [1, 3, 2]}))[:, 0], [1, 2, 0])


def test_id_index_lookup() -> None:
    idx = IdIndex(np.array([3, 10, 42]))
    assert idx.size == 4
    np.testing.assert_array_equal(idx.lookup(np.array([3, 10, 42, 0, 4, 43, -1, 10**12])), [1, 2, 3, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(IdIndex(np.array([], np.int64)).lookup(np.array([1, 2])), [0, 0])


def test_serving_tables_title_rows() -> None:
    """Known rooms get their own title row, unknown ones (and an empty table) row 0."""
    tables = ServingTables(user_profile=np.zeros((1, 1), np.int64), streamer_profile=np.zeros((1, 1), np.int64),
                           title_table=np.zeros((4, 2), np.float32), room_ids=np.array([10, 20, 30], np.int64),
                           room_title_row=np.array([3, 0, 1], np.int64), user_dense=np.zeros((1, 1)),
                           streamer_dense=np.zeros((1, 1)), as_of=0)
    np.testing.assert_array_equal(tables.title_rows(np.array([30, 5, 10, 20, 31, 10])), [1, 0, 3, 0, 0, 3])
    empty = ServingTables(**{**tables.__dict__, "room_ids": np.zeros(0, np.int64),
                             "room_title_row": np.zeros(0, np.int64)})
    np.testing.assert_array_equal(empty.title_rows(np.array([10, 20])), [0, 0])


def test_feature_spec_json_round_trip(ds: RankingDataset) -> None:
    text = ds.spec.to_json()
    json.loads(text)
    back = RankingFeatureSpec.from_json(text)
    assert back == ds.spec
    assert back.user_vocab.size == ds.spec.user_vocab.size and back.seq_lengths == ds.spec.seq_lengths
    assert isinstance(back.user_vocab.columns, tuple)
    assert all(isinstance(v, tuple) for v in back.dense_features.values())
    raw = pl.DataFrame({c: ds.spec.context_vocab.values[c][:1] for c in CONTEXT_COLUMNS})
    np.testing.assert_array_equal(back.context_vocab.encode(raw), ds.spec.context_vocab.encode(raw))


def test_gap_bucket_monotone_and_bounded() -> None:
    gaps = np.r_[-10_000, 0, 1, np.sort(np.exp(np.random.default_rng(0).uniform(0, np.log(10**11), 2000))), 10**13]
    b = gap_bucket(gaps)
    assert b.dtype == np.int64
    assert (b >= 1).all() and (b <= N_GAP_BUCKETS - 1).all()
    assert (np.diff(b[1:]) >= 0).all()
    assert b[1] == 1 and b[-1] == N_GAP_BUCKETS - 1
    assert gap_bucket(np.array([MS_PER_MINUTE]))[0] == 2  # 1 + floor(log2(2))
    assert len(np.unique(b)) == N_GAP_BUCKETS - 1  # every bucket is reachable


# =============================================================================
# 4. Dataset shapes
# =============================================================================


def test_splits_are_8_1_1_and_chronological(ds: RankingDataset, tiny_data) -> None:
    n = ds.samples.height
    sizes = {s: ds.rows(s).size for s in ("train", "valid", "test")}
    assert sum(sizes.values()) == n
    assert abs(sizes["train"] / n - 0.8) < 0.02
    assert abs(sizes["valid"] / n - 0.1) < 0.02 and abs(sizes["test"] / n - 0.1) < 0.02
    ts = ds.timestamps
    assert ts[ds.rows("train")].max() < ts[ds.rows("valid")].min()
    assert ts[ds.rows("valid")].max() < ts[ds.rows("test")].min()
    assert ds.info["n_samples"] == n
    t = tiny_data.tables
    assert n == t["click"].height + t["negative"].height - ds.info["overlap_dropped"]
    assert int((ds.samples["label"] == 1).sum()) == t["click"].height


def test_feature_arrays_shapes_and_ranges(ds: RankingDataset, tiny_data) -> None:
    rows = np.random.default_rng(1).choice(ds.samples.height, 500, replace=False)
    a = ds.arrays(rows)
    b = rows.size
    assert len(a) == b
    assert a.user_idx.shape == (b,) and a.streamer_idx.shape == (b,)
    assert a.user_profile.shape == (b, 20) == (b, len(USER_PROFILE_COLUMNS))
    assert a.streamer_profile.shape == (b, 22) == (b, len(STREAMER_PROFILE_COLUMNS))
    assert a.context.shape == (b, 5) == (b, len(CONTEXT_COLUMNS))
    assert a.title.shape == (b, ds.spec.title_dim) and a.title.dtype == np.float32
    assert a.dense.shape == (b, len(DENSE_COLUMNS)) and a.dense.dtype == np.float32
    assert a.hist_gap.shape == (b, ds.spec.seq_len)
    assert set(a.hist) == set(a.hist_len) == set(SEQ_KEYS)
    for k, length in ds.spec.seq_lengths.items():
        assert a.hist[k].shape == (b, length) and a.hist_len[k].shape == (b,)
        assert (a.hist_len[k] >= 0).all() and (a.hist_len[k] <= length).all()
    # ids index their embedding tables; known ids are never 0
    assert (a.user_idx >= 1).all() and (a.user_idx < ds.spec.n_users).all()
    assert (a.streamer_idx >= 1).all() and (a.streamer_idx < ds.spec.n_streamers).all()
    assert (a.user_profile >= 1).all() and (a.user_profile < ds.spec.user_vocab.size).all()
    assert (a.streamer_profile >= 1).all() and (a.streamer_profile < ds.spec.streamer_vocab.size).all()
    assert (a.context >= 0).all() and (a.context < ds.spec.context_vocab.size).all()
    assert (a.context[:, 2:] >= 1).all()  # hour, weekday, age bucket are always known
    np.testing.assert_array_equal(a.user_idx, ds.user_index.lookup(ds.samples["user_id"].to_numpy()[rows]))
    np.testing.assert_array_equal(a.streamer_idx,
                                  ds.streamer_index.lookup(ds.samples["streamer_id"].to_numpy()[rows]))
    # titles: most rows have a real (non-zero) title embedding
    assert (np.abs(a.title).sum(axis=1) > 0).mean() > 0.5
    # the whole dense matrix: finite, non-negative, log1p-scaled of the raw features
    assert ds.dense.shape == (ds.samples.height, len(DENSE_COLUMNS))
    assert np.isfinite(ds.dense).all() and (ds.dense >= 0).all()
    assert (ds.dense.max(axis=0) > 0).all(), "a dense feature is identically zero"
    raw = dense_features(ds.samples[rows.tolist()], tiny_data.tables)
    np.testing.assert_allclose(a.dense, np.log1p(raw.to_numpy()), rtol=1e-6, atol=1e-6)


def test_oracle_column(ds: RankingDataset, tiny_data) -> None:
    assert "p_true" in ds.samples.columns
    p = ds.samples["p_true"].to_numpy().astype(np.float64)
    assert np.isfinite(p).all() and (p > 0).all() and (p < 1).all()
    y = ds.samples["label"].to_numpy()
    assert p[y == 1].mean() > p[y == 0].mean()  # the oracle is informative
    no_truth = build_ranking_dataset(tiny_data)
    assert "p_true" not in no_truth.samples.columns
    np.testing.assert_array_equal(no_truth.dense, ds.dense)


def test_missing_table_is_a_clear_error(tiny_data) -> None:
    from recsys.data.loaders import KuaiLiveData

    tables = {k: v for k, v in tiny_data.tables.items() if k != "negative"}
    with pytest.raises(ValueError, match="negative"):
        build_ranking_dataset(KuaiLiveData(root=tiny_data.root, tables=tables))


def _flat(a) -> dict[str, np.ndarray]:
    out = {k: v for k, v in vars(a).items() if isinstance(v, np.ndarray)}
    return out | {f"hist.{k}": v for k, v in a.hist.items()} | {f"len.{k}": v for k, v in a.hist_len.items()}


def test_features_of_new_samples_equal_the_dataset_features_of_the_same_samples(ds: RankingDataset,
                                                                                tiny_data) -> None:
    rows = np.random.default_rng(0).choice(len(ds.samples), 400, replace=False)
    keys = ds.samples[rows].select("user_id", "live_id", "streamer_id", "timestamp")  # no labels, no split
    got, want = _flat(ds.with_samples(keys, tiny_data.tables).arrays(np.arange(400))), _flat(ds.arrays(rows))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # a different time gives different features: the path reads the time it is given
    later = keys.with_columns(pl.col("timestamp") + 3 * MS_PER_DAY)
    moved = _flat(ds.with_samples(later, tiny_data.tables).arrays(np.arange(400)))
    assert not np.array_equal(moved["dense"], want["dense"])
    with pytest.raises(ValueError, match="streamer_id"):
        ds.with_samples(keys.drop("streamer_id"), tiny_data.tables)
