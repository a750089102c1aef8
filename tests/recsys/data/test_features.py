"""Tests for recsys.data.features: point-in-time aggregates read only events strictly before t.

Brief section 9.1: ``watch_live_time`` of a past click may be used at t only if ``timestamp + watch_live_time <= t``.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from recsys.data.features import context_features, count_before, past_behaviour_features, sum_before
from recsys.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, WINDOW_START_MS

S = WINDOW_START_MS
SHANGHAI = ZoneInfo("Asia/Shanghai")
FEATURE_COLUMNS = ["u_clicks", "us_clicks", "s_clicks", "u_watch_min", "us_watch_min", "u_comments", "u_gifts"]
COUNT_COLUMNS = ["u_clicks", "us_clicks", "s_clicks", "u_comments", "u_gifts"]


# --------------------------------------------------------------------------- count_before / sum_before


def _same_key(keys: np.ndarray, q: np.ndarray | int) -> np.ndarray:
    return np.all(keys == q, axis=1) if keys.ndim == 2 else keys == q


def _brute(keys, times, values, q_keys, q_times, inclusive):
    cnt = np.zeros(len(q_times), dtype=np.int64)
    tot = np.zeros(len(q_times))
    for i in range(len(q_times)):
        m = _same_key(keys, q_keys[i]) & ((times <= q_times[i]) if inclusive else (times < q_times[i]))
        cnt[i] = m.sum()
        tot[i] = values[m].sum()
    return cnt, tot


@pytest.mark.parametrize("base", [0, S])  # small times and real epoch-ms times
@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("inclusive", [False, True])
def test_count_and_sum_before_match_brute_force(base: int, ndim: int, inclusive: bool) -> None:
    rng = np.random.default_rng(100 + ndim + 2 * inclusive)
    n, m = 400, 300
    keys = rng.integers(0, 6, n) if ndim == 1 else rng.integers(0, 4, (n, 2))
    times = base + rng.integers(0, 60, n)  # many ties at equal timestamps
    values = rng.normal(size=n) * 10
    # queries: some keys with no events at all, times on/between/outside the event times
    q_keys = rng.integers(0, 9, m) if ndim == 1 else rng.integers(0, 6, (m, 2))
    q_times = base + rng.integers(-5, 66, m)
    q_times[:50] = times[:50]  # exactly on event times
    exp_cnt, exp_sum = _brute(keys, times, values, q_keys, q_times, inclusive)
    assert np.any(exp_cnt == 0) and np.any(exp_cnt > 5)
    got_cnt = count_before(keys, times, q_keys, q_times, inclusive=inclusive)
    got_sum = sum_before(keys, times, values, q_keys, q_times, inclusive=inclusive)
    assert got_cnt.dtype == np.int64
    np.testing.assert_array_equal(got_cnt, exp_cnt)
    np.testing.assert_allclose(got_sum, exp_sum, rtol=0, atol=1e-9)


def test_count_before_default_is_strictly_before() -> None:
    keys = np.array([1, 1, 1, 2])
    times = np.array([10, 20, 20, 20]) + S
    q_keys = np.array([1, 1, 1, 1, 2, 3])
    q_times = np.array([10, 11, 20, 21, 20, 100]) + S
    np.testing.assert_array_equal(count_before(keys, times, q_keys, q_times), [0, 1, 1, 3, 0, 0])
    np.testing.assert_array_equal(count_before(keys, times, q_keys, q_times, inclusive=True), [1, 1, 3, 3, 1, 0])
    vals = np.array([1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(sum_before(keys, times, vals, q_keys, q_times), [0, 1, 1, 7, 0, 0])
    np.testing.assert_allclose(sum_before(keys, times, vals, q_keys, q_times, inclusive=True), [1, 1, 7, 7, 8, 0])


def test_count_before_no_events() -> None:
    q_keys = np.array([1, 2])
    q_times = np.array([S, S + 1])
    empty = np.array([], dtype=np.int64)
    np.testing.assert_array_equal(count_before(empty, empty, q_keys, q_times), [0, 0])
    np.testing.assert_allclose(sum_before(empty, empty, np.array([]), q_keys, q_times), [0.0, 0.0])


# --------------------------------------------------------------------------- past_behaviour_features


def _random_events(rng: np.random.Generator, n_clicks: int = 600, span: int = 2 * MS_PER_DAY):
    clicks = pl.DataFrame({
        "user_id": rng.integers(1, 15, n_clicks),
        "streamer_id": rng.integers(1, 10, n_clicks),
        "live_id": rng.integers(1, 50, n_clicks),
        "timestamp": S + rng.integers(0, span, n_clicks),
        "watch_live_time": rng.integers(1, 3 * MS_PER_HOUR, n_clicks),
    })
    comments = pl.DataFrame({"user_id": rng.integers(1, 15, 200), "timestamp": S + rng.integers(0, span, 200)})
    gifts = pl.DataFrame({"user_id": rng.integers(1, 15, 100), "timestamp": S + rng.integers(0, span, 100)})
    return clicks, comments, gifts


def _random_samples(rng: np.random.Generator, clicks: pl.DataFrame, n: int = 300, span: int = 2 * MS_PER_DAY):
    samples = pl.DataFrame({
        "user_id": rng.integers(1, 18, n),  # users 15..17 have no events
        "streamer_id": rng.integers(1, 12, n),  # streamers 10, 11 have no clicks
        "timestamp": S + rng.integers(-MS_PER_HOUR, span + MS_PER_HOUR, n),
    })
    # half of the samples are the clicks themselves (their own click must not be counted)
    own = clicks.select("user_id", "streamer_id", "timestamp").head(n // 2)
    return pl.concat([samples.head(n - own.height), own]).sample(fraction=1.0, shuffle=True, seed=7)


def _brute_features(samples: pl.DataFrame, clicks: pl.DataFrame, comments: pl.DataFrame | None,
                    gifts: pl.DataFrame | None) -> dict[str, np.ndarray]:
    cu, cs, ct, cw = (clicks[c].to_numpy() for c in ("user_id", "streamer_id", "timestamp", "watch_live_time"))
    out: dict[str, list] = {c: [] for c in FEATURE_COLUMNS}
    for u, s, t in samples.select("user_id", "streamer_id", "timestamp").iter_rows():
        before = ct < t
        over = ct + cw <= t
        out["u_clicks"].append(int(np.sum((cu == u) & before)))
        out["us_clicks"].append(int(np.sum((cu == u) & (cs == s) & before)))
        out["s_clicks"].append(int(np.sum((cs == s) & before)))
        out["u_watch_min"].append(cw[(cu == u) & over].sum() / MS_PER_MINUTE)
        out["us_watch_min"].append(cw[(cu == u) & (cs == s) & over].sum() / MS_PER_MINUTE)
        for name, df in (("u_comments", comments), ("u_gifts", gifts)):
            n = 0 if df is None else int(np.sum((df["user_id"].to_numpy() == u) & (df["timestamp"].to_numpy() < t)))
            out[name].append(n)
    return {k: np.asarray(v) for k, v in out.items()}


def _assert_features_equal(got: pl.DataFrame, expected: dict[str, np.ndarray] | pl.DataFrame, msg: str = "") -> None:
    for c in COUNT_COLUMNS:
        np.testing.assert_array_equal(got[c].to_numpy(), np.asarray(expected[c]), err_msg=f"{c} {msg}")
    for c in ("u_watch_min", "us_watch_min"):
        np.testing.assert_allclose(got[c].to_numpy(), np.asarray(expected[c]), rtol=0, atol=1e-7,
                                   err_msg=f"{c} {msg}")


def test_past_behaviour_features_match_brute_force() -> None:
    rng = np.random.default_rng(21)
    clicks, comments, gifts = _random_events(rng)
    samples = _random_samples(rng, clicks)
    got = past_behaviour_features(samples, clicks, comments, gifts)
    assert got.height == samples.height
    assert set(FEATURE_COLUMNS) <= set(got.columns)
    expected = _brute_features(samples, clicks, comments, gifts)
    _assert_features_equal(got, expected)
    # the watch rule matters on this data: some clicks before t are not over yet at t
    assert np.any(expected["u_watch_min"] > 0) and np.any(expected["us_clicks"] > 0)
    # without comments / gifts the counts are zero
    got2 = past_behaviour_features(samples, clicks)
    np.testing.assert_array_equal(got2["u_comments"].to_numpy(), np.zeros(samples.height))
    np.testing.assert_array_equal(got2["u_gifts"].to_numpy(), np.zeros(samples.height))
    _assert_features_equal(got2, _brute_features(samples, clicks, None, None))


def test_past_behaviour_features_do_not_leak_the_future() -> None:
    rng = np.random.default_rng(31)
    clicks, comments, gifts = _random_events(rng)
    samples = _random_samples(rng, clicks)
    base = past_behaviour_features(samples, clicks, comments, gifts)
    st = samples["timestamp"].to_numpy()
    cuts = np.r_[rng.choice(st, 6, replace=False), S + rng.integers(0, 2 * MS_PER_DAY, 4)]
    n_checked = 0
    for cut in cuts.tolist():
        # real events at/after cut dropped; fake events at/after cut (some exactly at cut) added
        c_keep = clicks.filter(pl.col("timestamp") < cut)
        not_over = (c_keep["timestamp"] + c_keep["watch_live_time"] > cut).to_numpy()
        # sessions still running at cut: their watch time is the future; replace it by any value that keeps
        # the session running past cut
        new_watch = np.where(
            not_over,
            cut - c_keep["timestamp"].to_numpy() + rng.integers(1, 5 * MS_PER_HOUR, c_keep.height),
            c_keep["watch_live_time"].to_numpy(),
        )
        new_watch[not_over & (rng.random(c_keep.height) < 0.3)] = 0  # re-set below: ends 1 ms after cut
        new_watch = np.where(not_over & (new_watch == 0), cut + 1 - c_keep["timestamp"].to_numpy(), new_watch)
        c_keep = c_keep.with_columns(pl.Series("watch_live_time", new_watch))
        # fake events at/after cut: random ones, plus ones exactly at cut on the (user, streamer) of the samples
        # exactly at cut (a session of 1 ms, so it is over 1 ms after cut)
        at_cut = samples.filter(pl.col("timestamp") == cut)
        n_fake = 200
        fake_t = cut + rng.integers(0, MS_PER_DAY, n_fake)
        fake_t[:20] = cut
        fake = pl.concat([
            pl.DataFrame({
                "user_id": rng.integers(1, 18, n_fake),
                "streamer_id": rng.integers(1, 12, n_fake),
                "live_id": rng.integers(1, 50, n_fake),
                "timestamp": fake_t,
                "watch_live_time": rng.integers(0, 3 * MS_PER_HOUR, n_fake),
            }).cast(clicks.schema),
            at_cut.select("user_id", "streamer_id", pl.lit(1).alias("live_id"), "timestamp",
                          pl.lit(1).alias("watch_live_time")).cast(clicks.schema),
        ])
        p_clicks = pl.concat([c_keep, fake]).sample(fraction=1.0, shuffle=True, seed=int(cut % 1000))
        p_comments = pl.concat([
            comments.filter(pl.col("timestamp") < cut),
            pl.DataFrame({"user_id": rng.integers(1, 18, 50), "timestamp": cut + rng.integers(0, 3, 50)})
            .cast(comments.schema),
            at_cut.select("user_id", "timestamp").cast(comments.schema),
        ])
        p_gifts = pl.concat([
            gifts.filter(pl.col("timestamp") < cut),
            pl.DataFrame({"user_id": rng.integers(1, 18, 50), "timestamp": cut + rng.integers(0, 3, 50)})
            .cast(gifts.schema),
            at_cut.select("user_id", "timestamp").cast(gifts.schema),
        ])
        pert = past_behaviour_features(samples, p_clicks, p_comments, p_gifts)
        sel = st <= cut
        _assert_features_equal(pert.filter(pl.Series(sel)), base.filter(pl.Series(sel)), msg=f"cut={cut}")
        # and the perturbation is not vacuous: later samples do change
        assert not pert.filter(pl.Series(~sel)).equals(base.filter(pl.Series(~sel))) or (~sel).sum() == 0
        n_checked += int(sel.sum())
    assert n_checked > 300


def test_click_at_sample_time_is_not_counted() -> None:
    t0 = S + 10 * MS_PER_HOUR
    clicks = pl.DataFrame({
        "user_id": [1, 1, 1, 2],
        "streamer_id": [5, 5, 6, 5],
        "timestamp": [t0 - 60_000, t0, t0, t0 - 1],
        "watch_live_time": [60_000, 0, 30_000, 1],  # first ends exactly at t0 (counts); user 2's too
    })
    comments = pl.DataFrame({"user_id": [1, 1], "timestamp": [t0 - 1, t0]})
    gifts = pl.DataFrame({"user_id": [1], "timestamp": [t0]})
    samples = pl.DataFrame({"user_id": [1, 1, 2, 1], "streamer_id": [5, 6, 5, 5], "timestamp": [t0, t0, t0, t0 + 1]})
    got = past_behaviour_features(samples, clicks, comments, gifts)
    assert got["u_clicks"].to_list() == [1, 1, 1, 3]
    assert got["us_clicks"].to_list() == [1, 0, 1, 2]
    assert got["s_clicks"].to_list() == [2, 0, 2, 3]
    assert got["u_comments"].to_list() == [1, 1, 0, 2]
    assert got["u_gifts"].to_list() == [0, 0, 0, 1]
    np.testing.assert_allclose(got["u_watch_min"].to_numpy(), [1.0, 1.0, 1 / 60_000, 1.0])
    np.testing.assert_allclose(got["us_watch_min"].to_numpy(), [1.0, 0.0, 1 / 60_000, 1.0])
    # one ms longer and the first session is not over at t0, but is over at t0 + 1 ms
    clicks2 = clicks.with_columns(pl.Series("watch_live_time", [60_001, 0, 30_000, 1]))
    got2 = past_behaviour_features(samples, clicks2, comments, gifts)
    np.testing.assert_allclose(got2["u_watch_min"].to_numpy(), [0.0, 0.0, 1 / 60_000, 60_001 / 60_000])
    np.testing.assert_allclose(got2["us_watch_min"].to_numpy(), [0.0, 0.0, 1 / 60_000, 60_001 / 60_000])


# --------------------------------------------------------------------------- context_features


def test_context_features_known_values() -> None:
    rooms = pl.DataFrame({
        "live_id": [10, 20],
        "start_timestamp": [S - 90 * MS_PER_MINUTE, S + 5 * MS_PER_DAY],
        "live_type": [2, 1],
        "live_content_category": ["game", "shop"],
        "live_name_id": [7, 8],
    })
    samples = pl.DataFrame({
        "live_id": [10, 10, 99, 20, 20],
        "timestamp": [S, S - 1, S + 13 * MS_PER_HOUR + 30 * MS_PER_MINUTE, S + 5 * MS_PER_DAY + 1, S],
    })
    got = context_features(samples, rooms)
    assert got.height == samples.height
    np.testing.assert_allclose(got["room_age_min"].to_numpy(), [90.0, 90 - 1 / 60_000, 0.0, 1 / 60_000, 0.0])
    assert got["live_type"].to_list() == [2, 2, 0, 1, 1]
    assert got["live_content_category"].to_list() == ["game", "game", "<unk>", "shop", "shop"]
    assert got["live_name_id"].to_list() == [7, 7, -1, 8, 8]
    # 1746374400000 = 2025-05-05 00:00 CST, a Monday; one ms earlier is Sunday 23:xx; +5 days is Saturday
    assert got["hour"].to_list() == [0, 23, 13, 0, 0]
    assert got["weekday"].to_list() == [0, 6, 0, 5, 0]


def test_context_features_hour_weekday_match_zoneinfo() -> None:
    rng = np.random.default_rng(41)
    n = 500
    rooms = pl.DataFrame({
        "live_id": np.arange(1, 21),
        "start_timestamp": S + rng.integers(0, 21 * MS_PER_DAY, 20),
        "live_type": rng.integers(1, 4, 20),
        "live_content_category": rng.choice(["shop", "game", "other"], 20),
        "live_name_id": rng.integers(0, 100, 20),
    })
    samples = pl.DataFrame({
        "live_id": rng.integers(1, 21, n),
        "timestamp": S + rng.integers(-2 * MS_PER_DAY, 25 * MS_PER_DAY, n),
    })
    got = context_features(samples, rooms)
    start = dict(zip(rooms["live_id"].to_list(), rooms["start_timestamp"].to_list()))
    exp_hour, exp_wd, exp_age = [], [], []
    for lid, t in samples.iter_rows():
        dt = datetime.fromtimestamp(t / 1000, tz=SHANGHAI)
        exp_hour.append(dt.hour)
        exp_wd.append(dt.weekday())
        exp_age.append(max(t - start[lid], 0) / MS_PER_MINUTE)
    assert got["hour"].to_list() == exp_hour
    assert got["weekday"].to_list() == exp_wd
    np.testing.assert_allclose(got["room_age_min"].to_numpy(), exp_age)
    assert len(set(exp_wd)) == 7 and len(set(exp_hour)) == 24
