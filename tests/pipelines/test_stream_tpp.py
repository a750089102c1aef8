"""Streaming PromptTPP: windows closed by the event-time watermark, a model update per window (warm start from the
full state), per-user features in the store; in process and through a real Kafka-protocol broker into Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.ingest import load_events
from pipelines.stream_tpp import StreamTPPConfig, run_stream_tpp
from pipelines.train_tpp import TPPTrainConfig
from recsys.services import KafkaClientTimeouts
from recsys.store.memory import InMemoryStore
from recsys.store.redis_store import RedisStore
from recsys.stream.bus import InProcessBus, KafkaSink, KafkaSource, TopicLayout, publish
from recsys.stream.features import OnlineFeatures
from recsys.stream.replay import iter_events
from recsys.timeutil import MS_PER_DAY, WINDOW_START_MS

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DAYS = 6  # three 2-day windows keep the test short


@pytest.fixture(scope="module")
def events(tiny_dir: Path) -> pl.DataFrame:
    return load_events(tiny_dir, until=WINDOW_START_MS + DAYS * MS_PER_DAY - 1)


def _cfg(first_epochs: int = 0, **kw) -> StreamTPPConfig:
    train = TPPTrainConfig(scheme="prompttpp", epochs=1, first_epochs=first_epochs, batch_size=32, n_samples=8,
                           eval_max_sequences=8, model={"d_model": 16, "d_time": 8, "layers": 1, "n_mc": 5},
                           progress=False)
    return StreamTPPConfig(train=train, window_days=2, max_len=32, idle_timeout_s=0.0, poll_timeout_ms=0, **kw)


def _users_per_window(events: pl.DataFrame) -> dict[int, set[int]]:
    user = events.filter(pl.col("type").is_in(["click", "comment", "like", "gift"]))
    user = user.with_columns(((pl.col("event_time") - WINDOW_START_MS) // (2 * MS_PER_DAY)).alias("w"))
    counts = user.group_by("w", "user_id").len().filter(pl.col("len") >= 2)
    return {int(w): set(g["user_id"].to_list()) for (w,), g in counts.group_by("w")}


def _check(res, store, events) -> None:
    expected = _users_per_window(events)
    assert [int(r["window"]) for r in res.windows] == sorted(expected)  # one model update per window
    assert all(np.isfinite(r["test.ll_per_event"]) and r["steps"] >= 1 for r in res.windows)
    last = max(expected)
    users = sorted(expected[last])
    feats = OnlineFeatures(store).tpp(users)
    assert all(f and f["window"] == last for f in feats)  # every user of the last window was scored by it
    horizon_min = 60 * 24 * 3
    for f in feats:
        assert 0.0 < f["next_visit_min"] < horizon_min and 0.0 <= f["p_gift_1h"] <= 1.0
    assert res.features_written == sum(len(v) for v in expected.values())


def test_in_process_stream_updates_per_window_and_writes_features(events: pl.DataFrame) -> None:
    bus, layout, store = InProcessBus(), TopicLayout(), InMemoryStore()
    n = publish(iter_events(events), bus.sink(), layout)
    bus.sink().send(layout.user, b"1", b"{not json", [])  # a bad message: dead-lettered, the stream goes on
    res = run_stream_tpp(bus.source(layout.event_topics, "tpp"), store, bus.sink(), layout.dlq, _cfg(first_epochs=2))
    assert res.dead_lettered == 1 and len(bus.messages(layout.dlq)) == 1
    # the first closed window trains first_epochs passes, the later ones epochs (batch 32, 70 % of users train)
    batches = [int(np.ceil(round(0.7 * r["users"]) / 32)) for r in res.windows]
    assert [int(r["steps"]) for r in res.windows] == [2 * batches[0], *batches[1:]]
    user_events = events.filter(pl.col("type").is_in(["click", "comment", "like", "gift"])).height
    assert res.events == user_events < n
    _check(res, store, events)


def test_kafka_stream_into_redis(events: pl.DataFrame, kafka_bootstrap: str, redis_url: str) -> None:
    layout = TopicLayout(prefix=f"t{uuid.uuid4().hex[:8]}", partitions=3)
    layout.ensure(kafka_bootstrap)
    sink = KafkaSink(kafka_bootstrap)
    try:
        publish(iter_events(events), sink, layout)
    finally:
        sink.close()
    store = RedisStore(redis_url, namespace=f"tpp{uuid.uuid4().hex[:6]}:")
    source = KafkaSource(kafka_bootstrap, layout.event_topics, f"g{uuid.uuid4().hex[:6]}", KafkaClientTimeouts.fast())
    dead = KafkaSink(kafka_bootstrap)
    try:
        res = run_stream_tpp(source, store, dead, layout.dlq,
                             StreamTPPConfig(train=_cfg().train, window_days=2, max_len=32, idle_timeout_s=3.0),
                             partitions=[(layout.user, p) for p in range(layout.partitions)])
    finally:
        source.close()
        dead.close()
    assert res.late_dropped == 0  # the per-partition watermark waits for the slowest partition
    _check(res, store, events)


def test_no_window_closes_before_every_partition_has_delivered() -> None:
    """A partition far ahead must not close a window while another expected partition has not been read yet."""
    from pipelines.stream_tpp import StreamingTPP

    job = StreamingTPP(_cfg(), InMemoryStore(), partitions=[("u", 0), ("u", 1)])
    payload = {"user_id": 1, "live_id": 1, "streamer_id": 1}
    job.add("click", WINDOW_START_MS + 1000, payload, ("u", 0))
    job.add("click", WINDOW_START_MS + 5 * MS_PER_DAY, payload, ("u", 0))  # partition 0 is days ahead
    job.close_ready()
    assert job.watermark == 0 and not job.closed  # partition 1 unseen: nothing closes
    job.add("click", WINDOW_START_MS + 2000, payload, ("u", 1))  # partition 1's early event is not late
    assert job.late_dropped == 0
    job.add("click", WINDOW_START_MS + 4 * MS_PER_DAY, payload, ("u", 1))
    assert job.watermark == WINDOW_START_MS + 4 * MS_PER_DAY
