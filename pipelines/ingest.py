"""Job: replay KuaiLive events through the bus into the feature store (``recsys ingest``).

Kafka when a bootstrap address is configured, the in-process bus otherwise; the in-memory store by default, Redis
when asked. Only the adapters differ: the same ``publish`` and the same :class:`StreamWorker` run in every case.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
from tqdm.auto import tqdm

from recsys.data.loaders import load_kuailive
from recsys.services import KafkaClientTimeouts
from recsys.store.base import FeatureStore
from recsys.store.memory import InMemoryStore
from recsys.stream.bus import InProcessBus, KafkaSink, KafkaSource, TopicLayout, publish
from recsys.stream.embedded import EVENT_TABLES
from recsys.stream.features import OnlineFeatureSpec, batch_snapshot, online_snapshot
from recsys.stream.replay import event_table, iter_events
from recsys.stream.worker import StreamWorker, WorkerStats
from recsys.timeutil import WINDOW_END_MS

log = logging.getLogger(__name__)

TABLES = EVENT_TABLES


@dataclass
class IngestConfig:
    data_dir: Path
    produce: bool = True
    consume: bool = True
    kafka_bootstrap: str = ""
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "rs:"
    layout: TopicLayout = field(default_factory=TopicLayout)
    group: str = "recsys-ingest"
    speed: float | None = None
    until: int = WINDOW_END_MS - 1
    idle_timeout_s: float = 5.0
    fast_kafka_timeouts: bool = False
    progress: bool = True
    spec: OnlineFeatureSpec = field(default_factory=OnlineFeatureSpec)


@dataclass
class IngestResult:
    published: int
    stats: WorkerStats | None
    store: FeatureStore | None
    events: pl.DataFrame | None  # the replayed stream (None for a consume-only run without data)
    produce_s: float = 0.0


def make_store(kind: str, redis_url: str, namespace: str) -> FeatureStore:
    if kind == "memory":
        return InMemoryStore()
    if kind == "redis":
        from recsys.store.redis_store import RedisStore

        return RedisStore(redis_url, namespace=namespace)
    raise ValueError(f"unknown feature store {kind!r}; choose 'memory' or 'redis'")


def load_events(data_dir: Path, until: int) -> pl.DataFrame:
    """The replay stream of a dataset directory, in event-time order, up to ``until``."""
    return event_table(load_kuailive(data_dir, tables=TABLES, with_embeddings=False), until=until)


def run_ingest(cfg: IngestConfig, events: pl.DataFrame | None = None, store: FeatureStore | None = None,
               bus: InProcessBus | None = None) -> IngestResult:
    """Produce and/or consume. ``events``/``store``/``bus`` may be passed in (tests, quickstart)."""
    if not cfg.produce and not cfg.consume:
        raise ValueError("nothing to do: enable produce and/or consume")
    if events is None and cfg.produce:
        events = load_events(cfg.data_dir, cfg.until)
    kafka = bool(cfg.kafka_bootstrap)
    if kafka:
        cfg.layout.ensure(cfg.kafka_bootstrap)
    elif bus is None:
        if not (cfg.produce and cfg.consume):
            raise ValueError("the in-process bus lives in one process: produce and consume together, "
                             "or configure Kafka (--kafka HOST:PORT)")
        bus = InProcessBus()

    published, produce_s = 0, 0.0
    if cfg.produce:
        sink = KafkaSink(cfg.kafka_bootstrap) if kafka else bus.sink()
        bar = tqdm(total=events.height, desc="publish", unit="ev", disable=not cfg.progress, mininterval=1.0)
        t0 = time.perf_counter()
        try:
            published = publish(iter_events(events), sink, cfg.layout, speed=cfg.speed,
                                 on_event=lambda n: bar.update(n - bar.n) if n % 1000 == 0 else None)
            bar.update(published - bar.n)
            produce_s = time.perf_counter() - t0  # publish flushes; closing the client is not production
        finally:
            sink.close()
            bar.close()

    stats = None
    if cfg.consume:
        store = store if store is not None else make_store(cfg.store, cfg.redis_url, cfg.namespace)
        if kafka:
            timeouts = KafkaClientTimeouts.fast() if cfg.fast_kafka_timeouts else KafkaClientTimeouts()
            source = KafkaSource(cfg.kafka_bootstrap, cfg.layout.event_topics, cfg.group, timeouts)
            dead = KafkaSink(cfg.kafka_bootstrap)
        else:
            source, dead = bus.source(cfg.layout.event_topics, cfg.group), bus.sink()
        worker = StreamWorker(source, store, dead, cfg.layout.dlq, cfg.spec)
        try:
            # the in-process log is complete once published: stop as soon as it is drained
            stats = worker.run(idle_timeout_s=cfg.idle_timeout_s if kafka else 0.0, poll_timeout_ms=500 if kafka else 0)
        finally:
            source.close()
            dead.close()
    return IngestResult(published=published, stats=stats, store=store, events=events, produce_s=produce_s)


def check_parity(result: IngestResult, spec: OnlineFeatureSpec | None = None) -> dict[str, bool]:
    """Online features in the store vs the same features computed from the files, at the last event time."""
    if result.store is None or result.events is None:
        raise ValueError("parity needs the store the stream wrote to and the replayed events (--data)")
    now = int(result.events["event_time"].max())
    online = online_snapshot(result.store, now, spec)
    offline = batch_snapshot(result.events, now, spec)
    return {name: online[name] == offline[name] for name in offline}
