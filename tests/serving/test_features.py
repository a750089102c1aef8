"""Serving encoders against the training encoders: every feature the service claims to compute exactly from the
online store equals the one the model was trained on (``serving.features`` module docstring, DENSE_SOURCES)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.ranking.export import LoadedRanker
from models.retrieval.export import LoadedRetriever
from models.retrieval.registry import RetrieverConfig
from recsys.data.ranking import DENSE_COLUMNS
from recsys.data.retrieval import BEHAVIOURS
from recsys.feed.env import BASE_FEATURES, feature_names
from recsys.store.memory import InMemoryStore
from recsys.stream.embedded import replay_into_store
from recsys.stream.features import LiveRoom, OnlineFeatures
from serving.features import DENSE_SOURCES, RankingEncoder, RetrievalEncoder, allocation_features
from serving.store_reader import StoreReader
from tests.serving.conftest import SERVE_TIME


def _reader(tiny_dir: Path, until: int) -> StoreReader:
    store = InMemoryStore()
    replay_into_store(tiny_dir, store, until=until)
    return StoreReader(OnlineFeatures(store))


def test_dense_sources_cover_every_ranker_feature() -> None:
    assert set(DENSE_SOURCES) == set(DENSE_COLUMNS)


def test_retrieval_query_from_the_store_equals_the_training_query(tiny_dir: Path, tiny_retrieval) -> None:
    ds = tiny_retrieval("streamer")
    loaded = LoadedRetriever(model=None, config=RetrieverConfig.for_model("grank", long_len=ds.long_len,
                                                                           short_len=ds.short_len),
                             catalog=ds.catalog, user_index=ds.user_index, user_profile=ds.user_profile,
                             profile_vocab=ds.profile_vocab, meta={"behaviour_len": ds.behaviour_len})
    enc = RetrievalEncoder(loaded)
    reader = _reader(tiny_dir, SERVE_TIME)
    users = ds.user_index.ids[:25]
    checked = 0
    for uid in users:
        online = enc.query(reader.user_state(int(uid), SERVE_TIME))
        offline = ds.query(ds.user_index.lookup(np.array([uid])), np.array([SERVE_TIME]))
        for name in ("user", "profile", "hour", "weekday"):
            np.testing.assert_array_equal(getattr(online, name), getattr(offline, name), err_msg=name)
        kept = 50  # the store keeps the last 50 clicks; the dataset up to long_len
        tail = slice(ds.long_len - min(kept, ds.long_len), None)
        np.testing.assert_array_equal(online.hist[:, tail], offline.hist[:, tail], err_msg=f"user {uid}")
        np.testing.assert_array_equal(online.hist_gap[:, tail], offline.hist_gap[:, tail])
        for j, kind in enumerate(BEHAVIOURS):
            if kind != "long_view":  # needs watch times: empty online
                np.testing.assert_array_equal(online.behaviour[:, j], offline.behaviour[:, j], err_msg=kind)
        checked += int((offline.hist > 0).any())
    assert checked >= 10  # the comparison saw real histories


def test_ranking_features_from_the_store_equal_the_training_features(tiny_dir: Path, tiny_ranking,
                                                                     tiny_data) -> None:
    ds = tiny_ranking
    loaded = LoadedRanker(model=type("M", (), {"spec": ds.spec})(), user_index=ds.user_index,
                          streamer_index=ds.streamer_index, meta={}, tables=ds.serving)
    enc = RankingEncoder(loaded)
    rooms = tiny_data.tables["rooms"]
    test = ds.rows("test")
    exact = [DENSE_COLUMNS.index(c) for c, src in DENSE_SOURCES.items() if src in ("exact", "batch")]
    seen = 0
    for row in test[:: max(test.size // 3, 1)][:3]:
        s = ds.samples.row(int(row), named=True)
        t = int(s["timestamp"])
        room = rooms.filter(rooms["live_id"] == s["live_id"]).row(0, named=True)
        live = LiveRoom(room["live_id"], room["streamer_id"], room["live_content_category"] or "<unk>",
                        int(room["live_type"]), int(room["start_timestamp"]))
        reader = _reader(tiny_dir, t - 1)  # the request comes before anything at t
        state = reader.user_state(int(s["user_id"]), t)
        online = enc.arrays(state, [live], reader.room_entries([live.live_id], t))
        offline = ds.arrays(np.array([row]))
        for name in ("user_idx", "streamer_idx", "user_profile", "streamer_profile", "context", "title", "time_ms"):
            np.testing.assert_array_equal(getattr(online, name), getattr(offline, name), err_msg=name)
        for key in offline.hist:
            np.testing.assert_array_equal(online.hist_len[key], offline.hist_len[key], err_msg=key)
            np.testing.assert_array_equal(online.hist[key], offline.hist[key], err_msg=key)
        np.testing.assert_array_equal(online.hist_gap, offline.hist_gap)
        seen += int(offline.hist_len["hist_click"][0])
        # exact columns: same value; batch columns: the export's as_of value, which is >= the value at t
        for j in exact:
            name = DENSE_COLUMNS[j]
            if DENSE_SOURCES[name] == "exact":
                assert online.dense[0, j] == pytest.approx(offline.dense[0, j], abs=1e-6), name
            else:
                assert online.dense[0, j] >= offline.dense[0, j] - 1e-6 or name.endswith("ctr"), name
    assert seen > 0  # real click histories were compared


def test_allocation_features_follow_the_environment_layout() -> None:
    names = feature_names(3)
    x = allocation_features(names, p_click=0.5, watch_min=4.0, log_popularity=0.3, fatigue=1.5, request_index=2,
                            now=SERVE_TIME, has_candidate=True, group=1)
    row = dict(zip(names, x[0]))
    assert row["score_hat"] == pytest.approx(2.0) and row["group_1"] == 1.0 and row["group_0"] == 0.0
    # 20:00 CST: the hour angle of the environment
    assert row["hour_sin"] == pytest.approx(np.sin(2 * np.pi * 20 / 24)) and row["has_candidate"] == 1.0
    none = dict(zip(names, allocation_features(names, p_click=0.5, watch_min=4.0, log_popularity=0.3, fatigue=1.5,
                                               request_index=2, now=SERVE_TIME, has_candidate=False, group=0)[0]))
    assert [none[n] for n in ("p_click_hat", "watch_hat", "score_hat", "log_popularity", "has_candidate")] == [0] * 5
    assert none["fatigue"] == 1.5 and list(names[: len(BASE_FEATURES)]) == list(BASE_FEATURES)
    with pytest.raises(ValueError, match="unexpected allocator feature layout"):
        allocation_features(("fatigue",), p_click=0, watch_min=0, log_popularity=0, fatigue=0, request_index=0,
                            now=SERVE_TIME, has_candidate=False, group=0)
