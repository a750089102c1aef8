"""Dataset builders follow the KuaiLive protocols: chronological CTR split, leave-one-out with live-at-t negatives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data.builders import (
    TopKEvalSet,
    attach_oracle,
    chronological_split,
    ctr_samples,
    event_sequences,
    leave_last_out,
    oracle_scores_of,
    topk_eval_set,
    tpp_windows,
)
from recsys.data.live_index import LiveIndex
from recsys.data.synthetic import drift_fraction
from recsys.timeutil import MS_PER_DAY, MS_PER_MINUTE, N_WINDOW_DAYS, WINDOW_START_MS, cst_day, cst_midnight


def test_chronological_split_cuts_at_quantiles_and_ties_go_earlier() -> None:
    ts = np.array([1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 9, 10])
    code, q1, q2 = chronological_split(ts)
    assert q1 == 8
    assert (code[ts <= q1] == 0).all()  # all three 8s stay in train
    assert (code[ts > q2] == 2).all()
    assert (np.diff(code) >= 0).all()
    with pytest.raises(ValueError, match="sum to 1"):
        chronological_split(ts, (0.5, 0.1, 0.1))


def test_ctr_samples_labels_split_and_overlap(tiny_data) -> None:
    t = tiny_data.tables
    neg = pl.concat([t["negative"], t["click"].head(3).drop("watch_live_time")])  # 3 negatives duplicate clicks
    samples, info = ctr_samples(t["click"], neg)
    assert info["overlap_dropped"] == 3
    assert samples.height == t["click"].height + t["negative"].height
    assert samples["label"].sum() == t["click"].height
    assert samples["timestamp"].is_sorted()
    fr = samples.group_by("split").len().with_columns(pl.col("len") / samples.height)
    shares = dict(zip(fr["split"].cast(pl.String), fr["len"]))
    assert shares["train"] == pytest.approx(0.8, abs=0.01) and shares["test"] == pytest.approx(0.1, abs=0.01)
    last_train = samples.filter(pl.col("split") == "train")["timestamp"].max()
    assert samples.filter(pl.col("split") != "train")["timestamp"].min() > last_train
    assert samples.filter(pl.col("label") == 0)["watch_live_time"].is_null().all()


def test_attach_oracle_covers_every_sample(tiny_dir: Path, tiny_data) -> None:
    samples, _ = ctr_samples(tiny_data.tables["click"], tiny_data.tables["negative"])
    joined = attach_oracle(samples, tiny_dir / "truth")
    assert joined.height == samples.height
    assert joined["p_true"].null_count() == 0
    assert joined["noise_true"].null_count() == 0 and joined["drift_slope_true"].null_count() == 0


def test_oracle_scores_take_the_noise_and_the_drift_apart() -> None:
    span = N_WINDOW_DAYS * MS_PER_DAY
    t = WINDOW_START_MS + np.array([0, span // 4, span // 2, span], np.int64)  # fractions -1/2, -1/4, 0, +1/2
    noise, slope = np.array([0.5, -0.25, 0.1, 0.3]), np.array([2.0, 1.0, -1.0, 4.0])
    logit = np.array([1.0, -0.5, 0.2, 0.7])
    samples = pl.DataFrame({"timestamp": t, "split": ["train", "train", "valid", "test"],
                            "p_true": 1 / (1 + np.exp(-logit)), "noise_true": noise, "drift_slope_true": slope})
    rows = np.array([2, 3])
    out = oracle_scores_of(samples, rows)
    np.testing.assert_allclose(out["true"], 1 / (1 + np.exp(-logit[rows])))
    np.testing.assert_allclose(out["noise_free"], logit[rows] - noise[rows], atol=1e-9)
    # frozen at the mean fraction of the train rows, (-1/2 - 1/4) / 2 = -3/8
    np.testing.assert_allclose(drift_fraction(t), [-0.5, -0.25, 0.0, 0.5])
    frozen = logit[rows] - noise[rows] - (np.array([0.0, 0.5]) + 0.375) * slope[rows]
    np.testing.assert_allclose(out["static_user"], frozen, atol=1e-9)
    # truth from an older generator (no parts): only the true probability; no truth at all: nothing
    assert set(oracle_scores_of(samples.drop("noise_true"), rows)) == {"true"}
    assert oracle_scores_of(samples.drop("p_true", "noise_true", "drift_slope_true"), rows) == {}


def test_leave_last_out_per_user() -> None:
    clicks = pl.DataFrame({
        "user_id": [1, 1, 1, 1, 2, 3, 3],
        "live_id": [10, 12, 11, 13, 20, 30, 31],
        "streamer_id": [5, 6, 6, 7, 8, 9, 9],
        "timestamp": [100, 200, 200, 300, 50, 10, 20],
    })
    loo = leave_last_out(clicks, "room").sort("user_id", "timestamp", "item_id")
    u1 = loo.filter(pl.col("user_id") == 1)
    assert u1["split"].to_list() == ["train", "train", "valid", "test"]  # tie at 200 broken by live_id
    assert u1.filter(pl.col("split") == "valid")["item_id"].item() == 12
    assert loo.filter(pl.col("user_id") == 2)["split"].to_list() == ["test"]  # single click: test only
    assert loo.filter(pl.col("user_id") == 3)["split"].to_list() == ["valid", "test"]
    streamer = leave_last_out(clicks, "streamer").filter(pl.col("user_id") == 1).sort("timestamp")
    assert streamer["item_id"].to_list()[-1] == 7


@pytest.mark.parametrize("granularity", ["streamer", "room"])
def test_topk_negatives_are_live_at_t_and_exclude_the_target(tiny_data, granularity: str) -> None:
    index = LiveIndex.from_rooms(tiny_data.tables["rooms"])
    ev = topk_eval_set(tiny_data.tables["click"], index, granularity, n_negatives=25, seed=7)
    assert ev.targets.height == 2 * tiny_data.tables["click"]["user_id"].n_unique() - int(
        (tiny_data.tables["click"].group_by("user_id").len()["len"] == 1).sum())
    for i, (item, ts, n_live) in enumerate(ev.targets.select("item_id", "timestamp", "n_live").iter_rows()):
        negs = ev.negatives(i)
        pool = index.live_streamers(ts) if granularity == "streamer" else index.live_rooms(ts)
        assert item not in negs
        assert np.isin(negs, pool).all()
        assert negs.size == min(25, n_live - 1)
        assert np.unique(negs).size == negs.size
    again = topk_eval_set(tiny_data.tables["click"], index, granularity, n_negatives=25, seed=7)
    assert np.array_equal(again.neg_items, ev.neg_items)  # every model sees identical candidates
    other = topk_eval_set(tiny_data.tables["click"], index, granularity, n_negatives=25, seed=8)
    assert not np.array_equal(other.neg_items, ev.neg_items)


def test_topk_exclude_history_and_round_trip(tmp_path: Path, tiny_data) -> None:
    clicks = tiny_data.tables["click"]
    index = LiveIndex.from_rooms(tiny_data.tables["rooms"])
    ev = topk_eval_set(clicks, index, "streamer", n_negatives=10_000, exclude_history=True)
    train = leave_last_out(clicks, "streamer").filter(pl.col("split") == "train")
    history = {u: set(g["item_id"].to_list()) for (u,), g in train.group_by("user_id")}
    for i, user in enumerate(ev.targets["user_id"].to_list()):
        assert not history.get(user, set()) & set(ev.negatives(i).tolist())
    ev.save(tmp_path / "ev")
    back = TopKEvalSet.load(tmp_path / "ev")
    assert back.targets.equals(ev.targets) and np.array_equal(back.neg_items, ev.neg_items)
    items, mask = back.padded(np.array([0, 1]))
    assert mask.sum() == len(back.negatives(0)) + len(back.negatives(1))
    assert np.array_equal(items[0][mask[0]], back.negatives(0))


def test_event_sequences_order_and_marks(tiny_data) -> None:
    t = tiny_data.tables
    ev = event_sequences(t["click"], t["like"], t["comment"], t["gift"])
    assert ev.height == sum(t[k].height for k in ("click", "like", "comment", "gift"))
    assert ev.select("user_id", "timestamp", "type").equals(ev.select("user_id", "timestamp", "type").sort(
        "user_id", "timestamp", "type"))
    assert ev.filter(pl.col("type") == 3)["gift_price"].null_count() == 0
    assert ev.filter(pl.col("type") == 0)["watch_live_time"].null_count() == 0


def test_tpp_windows_cst_boundaries_and_strictly_increasing_times() -> None:
    day0 = int(cst_day(WINDOW_START_MS))
    # user 1: two events tied at the same ms (click then gift), one event on day 3 (second 3-day window)
    events = pl.DataFrame({
        "user_id": [1, 1, 1, 2],
        "timestamp": [WINDOW_START_MS + 5 * MS_PER_MINUTE, WINDOW_START_MS + 5 * MS_PER_MINUTE,
                      int(cst_midnight(day0 + 3)) + 60 * MS_PER_MINUTE, WINDOW_START_MS + MS_PER_MINUTE],
        "type": pl.Series([3, 0, 0, 1], dtype=pl.Int8),
        "live_id": [1, 1, 2, 3],
    })
    w = tpp_windows(events, window_days=3)
    first = w.filter((pl.col("window") == 0) & (pl.col("user_id") == 1))
    assert first["type"].item().to_list() == [0, 3]  # mark order breaks the tie
    times = first["time_min"].item().to_list()
    assert times[0] == pytest.approx(5.0) and times[1] > times[0]  # +1 ms offset
    # the events' own timestamps stay tied (ground truth is keyed by them)
    assert first["timestamp"].item().to_list() == [WINDOW_START_MS + 5 * MS_PER_MINUTE] * 2
    second = w.filter((pl.col("window") == 1) & (pl.col("user_id") == 1))
    assert second["time_min"].item().to_list() == [pytest.approx(60.0)]
    with pytest.raises(ValueError):
        tpp_windows(events, window_days=0)


def test_tpp_windows_truncate_to_last_events(tiny_data) -> None:
    t = tiny_data.tables
    ev = event_sequences(t["click"], t["like"], t["comment"], t["gift"])
    w = tpp_windows(ev, window_days=3, max_len=16)
    assert w["time_min"].list.len().max() <= 16
    assert w.filter(pl.col("truncated"))["n_events"].min() > 16
    diffs = w["time_min"].list.diff(null_behavior="drop").explode().drop_nulls()
    assert (diffs > 0).all()
