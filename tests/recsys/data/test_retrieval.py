"""Retrieval data: point-in-time histories, live-at-t negatives, the catalogue and the evaluation candidates,
each against a brute force over the raw tables."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data.ranking import gap_bucket
from recsys.data.retrieval import BEHAVIOURS, LONG_VIEW_S, POPULARITY_WINDOW_MS, eval_candidates

GRANS = ("streamer", "room")


def _key(g: str) -> str:
    return "streamer_id" if g == "streamer" else "live_id"


@pytest.mark.parametrize("g", GRANS)
def test_histories_hold_exactly_the_last_clicks_strictly_before_t(tiny_retrieval, tiny_data, g):
    ds = tiny_retrieval(g)
    rng = np.random.default_rng(0)
    rows = rng.choice(ds.train_user.size, 40, replace=False)
    users, times = ds.train_user[rows], ds.train_time[rows]
    q = ds.query(users, times)
    clicks = tiny_data.tables["click"]
    uid = ds.user_index.ids[users - 1]
    for i in range(rows.size):
        past = clicks.filter((pl.col("user_id") == uid[i]) & (pl.col("timestamp") < times[i])).sort("timestamp")
        want = ds.catalog.rows(past[_key(g)].to_numpy())[-ds.long_len:]
        got = q.hist[i][q.hist[i] > 0]
        assert np.array_equal(np.sort(got), np.sort(want))  # same multiset (ties in time may order either way)
        assert np.all(q.hist[i][: ds.long_len - want.size] == 0)  # right-aligned: padding on the left only
        gaps = gap_bucket(times[i] - past["timestamp"].to_numpy()[-ds.long_len:])
        assert np.array_equal(np.sort(q.hist_gap[i][q.hist_gap[i] > 0]), np.sort(gaps))


def test_a_long_view_counts_only_once_the_session_is_over(tiny_retrieval, tiny_data):
    ds = tiny_retrieval("streamer")
    clicks = tiny_data.tables["click"]
    views = clicks.filter(pl.col("watch_live_time") >= LONG_VIEW_S * 1000)
    short = clicks.filter(pl.col("watch_live_time") < LONG_VIEW_S * 1000)
    lv = BEHAVIOURS.index("long_view")
    row = views.row(0, named=True)
    user = ds.user_index.lookup(np.array([row["user_id"]]))
    end = row["timestamp"] + row["watch_live_time"]

    def brute(t: int) -> list[int]:
        past = views.filter((pl.col("user_id") == row["user_id"])
                            & (pl.col("timestamp") + pl.col("watch_live_time") < t))
        past = past.sort(pl.col("timestamp") + pl.col("watch_live_time"))
        return sorted(ds.catalog.rows(past["streamer_id"].to_numpy())[-ds.behaviour_len:].tolist())

    for t in (row["timestamp"] + 1, end, end + 1):
        got = ds.query(user, np.array([t])).behaviour[0, lv]
        assert sorted(got[got > 0].tolist()) == brute(t)
    assert len(brute(end + 1)) == len(brute(end)) + 1 or len(brute(end)) == ds.behaviour_len
    # a short watch is never a long view
    srow = short.row(0, named=True)
    q = ds.query(ds.user_index.lookup(np.array([srow["user_id"]])), np.array([srow["timestamp"] + 10**9]))
    assert sorted(q.behaviour[0, lv][q.behaviour[0, lv] > 0].tolist()) == sorted(
        ds.catalog.rows(views.filter((pl.col("user_id") == srow["user_id"]) & (
            pl.col("timestamp") + pl.col("watch_live_time") < srow["timestamp"] + 10**9)
        ).sort(pl.col("timestamp") + pl.col("watch_live_time"))["streamer_id"].to_numpy())[-ds.behaviour_len:].tolist())


@pytest.mark.parametrize("g", GRANS)
def test_training_negatives_are_live_at_the_anchor_time_and_never_the_target(tiny_retrieval, g):
    ds = tiny_retrieval(g)
    rng = np.random.default_rng(1)
    rows = rng.choice(ds.train_user.size, 200, replace=False)
    times, target = ds.train_time[rows], ds.train_item[rows]
    negs, ok = ds.sample_live_negatives(times, target, 16, rng)
    assert negs.shape == ok.shape == (200, 16)
    assert ok.mean() > 0.5
    for i in range(rows.size):
        live = ds.live_items(int(times[i]))
        assert np.isin(negs[i][ok[i]], live).all()
        assert not np.any(negs[i][ok[i]] == target[i])
        assert np.all(negs[i][~ok[i]] == 0)


@pytest.mark.parametrize("g", GRANS)
def test_eval_candidates_match_the_protocol_and_the_full_live_pool(tiny_retrieval, g):
    ds = tiny_retrieval(g)
    users, times, cands, valid = eval_candidates(ds, "test")
    ev = ds.eval_sets["test"]
    assert cands.shape[0] == ev.targets.height and valid[:, 0].all()
    assert np.array_equal(ds.catalog.raw_ids(cands[:, 0]), ev.targets["item_id"].to_numpy())
    for i in range(0, users.size, max(1, users.size // 15)):
        assert np.array_equal(np.sort(ds.catalog.raw_ids(cands[i, 1:][valid[i, 1:]])), np.sort(ev.negatives(i)))
    _, _, full, fvalid = eval_candidates(ds, "test", full_pool=True)
    for i in range(0, users.size, max(1, users.size // 15)):
        live = ds.live_items(int(times[i]))
        assert set(full[i, 1:][fvalid[i, 1:]]) == set(live) - {cands[i, 0]}


def test_room_items_carry_their_streamer_and_the_catalogue_inverts(tiny_retrieval, tiny_data):
    ds = tiny_retrieval("room")
    rooms = tiny_data.tables["rooms"].head(50)
    rows = ds.catalog.rows(rooms["live_id"].to_numpy())
    assert (rows > 0).all()
    assert np.array_equal(ds.catalog.raw_ids(rows), rooms["live_id"].to_numpy())
    streamers = tiny_retrieval("streamer").catalog.rows(rooms["streamer_id"].to_numpy())
    assert np.array_equal(ds.catalog.streamer_row[rows], streamers)
    assert ds.catalog.raw_ids(np.array([0]))[0] == 0


def test_popularity_counts_the_streamers_clicks_of_the_last_day(tiny_retrieval, tiny_data):
    ds = tiny_retrieval("streamer")
    clicks = tiny_data.tables["click"]
    users, times, cands, valid = eval_candidates(ds, "test")
    scores = ds.popularity_scores(cands[:5, :8], times[:5])
    for i in range(5):
        for j in range(8):
            sid = ds.catalog.raw_ids(cands[i, j:j + 1])[0]
            c = clicks.filter(pl.col("streamer_id") == sid)["timestamp"].to_numpy()
            recent = np.sum((c < times[i]) & (c >= times[i] - POPULARITY_WINDOW_MS))
            assert scores[i, j] == pytest.approx(recent + 1e-3 * np.log1p(np.sum(c < times[i])))
