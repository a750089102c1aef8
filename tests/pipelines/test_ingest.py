"""Streaming ingestion: replay -> bus -> stream worker -> feature store, checked against batch features.

Kafka tests use the real Kafka-protocol broker of the session fixture; Redis tests the real Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import polars as pl
import pytest

from pipelines.ingest import IngestConfig, check_parity, load_events, run_ingest
from recsys.services import KafkaClientTimeouts
from recsys.store.memory import InMemoryStore
from recsys.store.redis_store import RedisStore
from recsys.stream.bus import InProcessBus, KafkaSink, KafkaSource, TopicLayout, publish
from recsys.stream.features import batch_snapshot, online_snapshot
from recsys.stream.replay import iter_events
from recsys.stream.worker import StreamWorker
from recsys.timeutil import MS_PER_DAY, WINDOW_START_MS

SLICE_UNTIL = WINDOW_START_MS + 5 * MS_PER_DAY  # a 5-day slice keeps the broker tests short


@pytest.fixture(scope="module")
def tiny_events(tiny_dir: Path) -> pl.DataFrame:
    return load_events(tiny_dir, until=WINDOW_START_MS + 21 * MS_PER_DAY - 1)


@pytest.fixture(scope="module")
def slice_events(tiny_events: pl.DataFrame) -> pl.DataFrame:
    return tiny_events.filter(pl.col("event_time") <= SLICE_UNTIL)


def _assert_parity(store, events: pl.DataFrame) -> None:
    now = int(events["event_time"].max())
    online, offline = online_snapshot(store, now), batch_snapshot(events, now)
    for name in offline:
        assert online[name] == offline[name], f"online {name} differs from batch"
    assert offline["seq"] and offline["live"] and offline["user_cnt"]  # the comparison is not vacuous


def _layout() -> TopicLayout:
    return TopicLayout(prefix=f"t{uuid.uuid4().hex[:8]}", partitions=3)


# ------------------------------------------------------------------------------------------------ embedded default
def test_embedded_replay_in_memory_matches_batch(tiny_dir: Path, tiny_events: pl.DataFrame) -> None:
    res = run_ingest(IngestConfig(data_dir=tiny_dir, progress=False), events=tiny_events)
    assert res.published == tiny_events.height == res.stats.processed
    assert res.stats.dead_lettered == 0 and res.stats.lag == 0
    assert all(check_parity(res).values())


def test_crash_between_write_and_commit_replays_without_double_counting(slice_events: pl.DataFrame) -> None:
    bus, layout, store = InProcessBus(), TopicLayout(), InMemoryStore()
    publish(iter_events(slice_events), bus.sink(), layout)
    first = StreamWorker(bus.source(layout.event_topics, "g"), store, bus.sink(), layout.dlq)
    first.run(idle_timeout_s=0, poll_timeout_ms=0, max_batches=3, max_records=500, commit=False)  # "crash"
    assert bus.committed["g"] == 1000  # the third batch was written but never committed
    second = StreamWorker(bus.source(layout.event_topics, "g"), store, bus.sink(), layout.dlq)
    stats = second.run(idle_timeout_s=0, poll_timeout_ms=0)
    assert stats.processed == slice_events.height - 1000  # resumed at the commit: batch 3 is seen twice
    _assert_parity(store, slice_events)


# ------------------------------------------------------------------------------------------------ Kafka + Redis
@pytest.mark.kafka
@pytest.mark.redis
def test_full_replay_through_kafka_into_redis_equals_batch_features(
    tiny_dir: Path, tiny_events: pl.DataFrame, kafka_bootstrap: str, redis_url: str
) -> None:
    ns = f"full{uuid.uuid4().hex[:6]}:"
    store = RedisStore(redis_url, namespace=ns)
    try:
        cfg = IngestConfig(data_dir=tiny_dir, kafka_bootstrap=kafka_bootstrap, store="redis", redis_url=redis_url,
                           namespace=ns, layout=_layout(), group=f"g{uuid.uuid4().hex[:6]}", idle_timeout_s=3.0,
                           fast_kafka_timeouts=True, progress=False)
        res = run_ingest(cfg, events=tiny_events, store=store)
        assert res.published == tiny_events.height == res.stats.processed
        _assert_parity(store, tiny_events)
    finally:
        store.clear()


def _committed_total(bootstrap: str, group: str) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(max(0, meta.offset) for meta in offsets.values())
    finally:
        admin.close()


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
def test_killed_worker_restarts_with_no_loss_and_no_double_count(
    tiny_dir: Path, tiny_events: pl.DataFrame, kafka_bootstrap: str, redis_url: str
) -> None:
    layout, group, ns = _layout(), f"g{uuid.uuid4().hex[:6]}", f"kill{uuid.uuid4().hex[:6]}:"
    layout.ensure(kafka_bootstrap)
    sink = KafkaSink(kafka_bootstrap)
    try:
        publish(iter_events(tiny_events), sink, layout)
    finally:
        sink.close()
    cmd = [sys.executable, "-m", "recsys.cli", "ingest", "--consume", "--kafka", kafka_bootstrap, "--store", "redis",
           "--redis-url", redis_url, "--namespace", ns, "--topic-prefix", layout.prefix, "--group", group,
           "--idle-timeout", "3", "--fast-kafka-timeouts", "--quiet"]
    env = {**os.environ, "RECSYS_TRACKING__ENABLED": "false"}
    store = RedisStore(redis_url, namespace=ns)
    try:
        worker = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _committed_total(kafka_bootstrap, group) < 5_000:
            assert worker.poll() is None, worker.stdout.read().decode()
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)  # no shutdown hook runs: a real crash
        worker.wait(timeout=10)
        committed = _committed_total(kafka_bootstrap, group)
        assert 0 < committed < tiny_events.height, "the kill must land mid-stream"

        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stdout + again.stderr
        assert _committed_total(kafka_bootstrap, group) == tiny_events.height
        _assert_parity(store, tiny_events)
    finally:
        store.clear()


@pytest.mark.kafka
@pytest.mark.redis
def test_malformed_messages_go_to_the_dead_letter_topic_and_the_rest_is_processed(
    slice_events: pl.DataFrame, kafka_bootstrap: str, redis_url: str
) -> None:
    layout, ns = _layout(), f"dlq{uuid.uuid4().hex[:6]}:"
    layout.ensure(kafka_bootstrap)
    bad_values = [b"not json", b"[1,2]", b'{"v": 9}', b'{"v":1,"type":"teleport","event_id":"x","event_time":1,"payload":{}}',
                  b'{"v":1,"type":"click","event_id":"x","event_time":-5,"payload":{}}']
    sink = KafkaSink(kafka_bootstrap)
    n_bad = 0
    try:
        for i, event in enumerate(iter_events(slice_events)):
            sink.send(layout.topic_for(event), event.key, event.encode())
            if i % 250 == 0 and n_bad < 100:
                sink.send(layout.user, b"42", bad_values[n_bad % len(bad_values)])
                n_bad += 1
        sink.flush()
    finally:
        sink.close()
    assert n_bad == 100
    store = RedisStore(redis_url, namespace=ns)
    source = KafkaSource(kafka_bootstrap, layout.event_topics, f"g{uuid.uuid4().hex[:6]}", KafkaClientTimeouts.fast())
    dead = KafkaSink(kafka_bootstrap)
    try:
        stats = StreamWorker(source, store, dead, layout.dlq).run(idle_timeout_s=3.0)
        assert stats.dead_lettered == 100
        assert stats.processed == slice_events.height
        _assert_parity(store, slice_events)
    finally:
        source.close()
        dead.close()
        store.clear()

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(layout.dlq, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             group_id=f"dlq-reader-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                             **KafkaClientTimeouts.fast().consumer_kwargs())
    try:
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 100 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
    finally:
        consumer.close()
    assert len(got) == 100
    assert {r.value for r in got} == set(bad_values)  # nothing lost: the original bytes are kept
    reasons = [dict(r.headers)["reason"].decode() for r in got]
    assert all(reasons) and any("not valid JSON" in r for r in reasons) and any("unknown event type" in r for r in reasons)
    assert all(dict(r.headers)["source"].decode().startswith(layout.user) for r in got)
