"""The synthetic KuaiLive twin: same files and conventions as the real data, planted truth that is consistent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data.live_index import LiveIndex
from recsys.data.schema import ALL_FILES, PUBLISHED_COUNTS
from recsys.data.synthetic import SynthConfig, TARGET_CTR, generate
from recsys.metrics import auc
from recsys.timeutil import MS_PER_DAY, WINDOW_END_MS, WINDOW_START_MS, is_cst_midnight


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_and_columns_match_the_real_layout(tiny_dir: Path) -> None:
    for spec in ALL_FILES:
        header = (tiny_dir / spec.name).read_text().split("\n", 1)[0].split(",")
        assert header == list(spec.columns), spec.name
    emb = np.load(tiny_dir / "title_embeddings.npy")
    assert emb.ndim == 2 and emb.shape[1] == 128 and emb.dtype == np.float32


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path, tiny_dir: Path) -> None:
    again = generate(tmp_path / "a", SynthConfig(scale="tiny", seed=0), progress=False).out_dir
    other = generate(tmp_path / "b", SynthConfig(scale="tiny", seed=1), progress=False).out_dir
    for name in ("click.csv", "negative.csv", "room.csv", "user.csv", "gift.csv"):
        assert _digest(again / name) == _digest(tiny_dir / name), name
        assert _digest(other / name) != _digest(tiny_dir / name), name


def test_row_counts_follow_the_published_ratios(tiny_data) -> None:
    t = tiny_data.tables
    f = SynthConfig(scale="tiny").fraction
    assert t["user"].height == round(PUBLISHED_COUNTS["user"] * f)
    assert t["streamer"].height == round(PUBLISHED_COUNTS["streamer"] * f)
    for name in ("click", "negative"):
        assert t[name].height == pytest.approx(PUBLISHED_COUNTS[name] * f, rel=0.05), name
    assert t["rooms"].height == pytest.approx(PUBLISHED_COUNTS["room"] * f, rel=0.05)
    clicks = t["click"].height
    for name in ("comment", "like", "gift"):  # per-click rates of the real data (small counts: wider tolerance)
        assert t[name].height / clicks == pytest.approx(PUBLISHED_COUNTS[name] / PUBLISHED_COUNTS["click"], rel=0.25)
    ctr = clicks / (clicks + t["negative"].height)
    assert ctr == pytest.approx(TARGET_CTR, abs=0.01)


def test_ids_are_dense_from_one(tiny_data) -> None:
    t = tiny_data.tables
    assert t["user"]["user_id"].to_list() == list(range(1, t["user"].height + 1))
    assert t["streamer"]["streamer_id"].to_list() == list(range(1, t["streamer"].height + 1))
    assert t["rooms"]["live_id"].sort().to_list() == list(range(1, t["rooms"].height + 1))
    assert t["room"]["live_name_id"].max() < tiny_data.title_embeddings.shape[0]


def test_every_exposure_is_of_a_room_live_at_that_time(tiny_dir: Path, tiny_data) -> None:
    truth_rooms = pl.read_parquet(tiny_dir / "truth" / "rooms.parquet")
    rooms = tiny_data.tables["rooms"].join(truth_rooms, on="live_id")
    index = LiveIndex.from_rooms(rooms.with_columns(pl.col("true_end").alias("end_timestamp")))
    for name in ("click", "negative"):
        ev = tiny_data.tables[name]
        assert index.is_live(ev["live_id"].to_numpy(), ev["timestamp"].to_numpy()).all(), name
        # the streamer of the event owns the room
        owner = ev.join(rooms.select("live_id", pl.col("streamer_id").alias("owner")), on="live_id")
        assert (owner["streamer_id"] == owner["owner"]).all()


def test_room_rows_repeat_once_per_cst_date_and_censored_ends_sit_on_midnight(tiny_dir: Path, tiny_data) -> None:
    rows = tiny_data.tables["room"]
    rooms = tiny_data.tables["rooms"]
    per_room = rows.group_by("live_id").agg(pl.len().alias("n"), pl.col("p_date").n_unique().alias("dates"))
    assert (per_room["n"] == per_room["dates"]).all()
    assert rows.height > rooms.height  # some rooms cross midnight
    truth = pl.read_parquet(tiny_dir / "truth" / "rooms.parquet").join(rooms, on="live_id")
    censored = truth.filter(pl.col("censored"))
    assert censored.height > 0
    assert is_cst_midnight(censored["end_timestamp"].to_numpy()).all()
    assert (censored["end_timestamp"] > WINDOW_END_MS).all()
    assert (truth.filter(~pl.col("censored"))["end_timestamp"] == truth.filter(~pl.col("censored"))["true_end"]).all()
    assert rooms["end_censored"].sum() >= censored.height


def test_events_lie_in_the_window_and_follow_their_click(tiny_data) -> None:
    t = tiny_data.tables
    for name in ("click", "negative", "comment", "like", "gift"):
        ts = t[name]["timestamp"]
        assert ts.min() >= WINDOW_START_MS and ts.max() < WINDOW_END_MS, name
    clicks = t["click"].select("user_id", "live_id", pl.col("timestamp").alias("ct"), "watch_live_time")
    for name in ("comment", "like", "gift"):
        j = t[name].join(clicks, on=["user_id", "live_id"], how="inner")
        inside = j.filter((pl.col("timestamp") >= pl.col("ct")) & (pl.col("timestamp") <= pl.col("ct") + pl.col("watch_live_time")))
        assert inside.select("user_id", "live_id", "timestamp").unique().height == t[name].unique().height, name
    gifts_at_click = t["gift"].join(clicks, left_on=["user_id", "live_id", "timestamp"],
                                    right_on=["user_id", "live_id", "ct"], how="semi").height
    assert 0.7 < gifts_at_click / t["gift"].height <= 1.0  # ~86 % of gifts share the click timestamp
    price = t["gift"]["gift_price"]
    assert price.min() >= 1 and price.median() <= 3 and price.max() > 20 * price.median()  # heavy tail


def test_evening_peak_in_cst(tiny_data) -> None:
    hours = ((tiny_data.tables["click"]["timestamp"].to_numpy() + 8 * 3_600_000) // 3_600_000) % 24
    share = np.bincount(hours, minlength=24) / hours.size
    assert share[18:24].sum() > 0.35  # paper: activity peaks 18:00-24:00
    assert share[2:7].sum() < 0.08


def test_truth_is_complete_and_oracle_auc_in_the_realistic_band(tiny_dir: Path, tiny_data) -> None:
    truth = pl.read_parquet(tiny_dir / "truth" / "exposures.parquet")
    t = tiny_data.tables
    assert truth.height == t["click"].height + t["negative"].height
    assert truth["clicked"].sum() == t["click"].height
    p = truth["p_click"].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    assert p.mean() == pytest.approx(TARGET_CTR, abs=0.005)  # intercept is calibrated
    cut = np.quantile(truth["timestamp"].to_numpy(), 0.9)
    test = truth.filter(pl.col("timestamp") > cut)
    oracle = auc(test["clicked"].to_numpy().astype(int), test["p_click"].to_numpy())
    assert 0.75 <= oracle <= 0.92
    clicked = truth.filter(pl.col("clicked"))
    assert clicked["gift_prob"].is_not_nan().all() and truth.filter(~pl.col("clicked"))["gift_prob"].is_nan().all()


def test_drift_makes_late_days_differ_from_early_days(tiny_dir: Path) -> None:
    users = pl.read_parquet(tiny_dir / "truth" / "users.parquet")
    drift = users.select(pl.col("^drift.*$")).to_numpy()
    assert np.abs(drift).mean() > 0.05


def test_truth_logit_parts_are_the_noise_and_the_drift_slope(tiny_dir: Path) -> None:
    """``click_noise`` has the configured spread, and ``drift_slope`` is affinity_weight * sqrt(d) * <drift_u, f_s>
    recomputed from the users' and streamers' truth tables."""
    meta = json.loads((tiny_dir / "truth" / "meta.json").read_text())["config"]
    truth = pl.read_parquet(tiny_dir / "truth" / "exposures.parquet")
    assert truth["click_noise"].std() == pytest.approx(meta["context_noise_sd"], rel=0.05)
    users = pl.read_parquet(tiny_dir / "truth" / "users.parquet")
    streamers = pl.read_parquet(tiny_dir / "truth" / "streamers.parquet")
    d = meta["n_factors"]
    rows = truth.head(500).join(users.select("user_id", *[f"drift{k}" for k in range(d)]), on="user_id") \
        .join(streamers.select("streamer_id", *[f"f{k}" for k in range(d)]), on="streamer_id")
    dot = sum(rows[f"drift{k}"].to_numpy() * rows[f"f{k}"].to_numpy() for k in range(d))
    np.testing.assert_allclose(rows["drift_slope"].to_numpy(), meta["affinity_weight"] * np.sqrt(d) * dot,
                               rtol=1e-4, atol=1e-5)


def test_unknown_scale_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown scale"):
        generate(tmp_path, SynthConfig(scale="huge"), progress=False)


def test_window_constants() -> None:
    assert WINDOW_END_MS - WINDOW_START_MS == 21 * MS_PER_DAY
