"""Embedded ingestion: a dataset's events replayed through the in-process bus into a store, in one call.

The same ``publish`` and :class:`~recsys.stream.worker.StreamWorker` as ``recsys ingest`` (which adds Kafka,
progress bars and parity checks); used where one process must fill its own in-memory store, e.g. the ranking
service started on the embedded defaults (``recsys serve --warm-data``).
"""

from __future__ import annotations

from pathlib import Path

from recsys.data.loaders import load_kuailive
from recsys.store.base import FeatureStore
from recsys.stream.bus import InProcessBus, TopicLayout, publish
from recsys.stream.features import OnlineFeatureSpec
from recsys.stream.replay import event_table, iter_events
from recsys.stream.worker import StreamWorker, WorkerStats
from recsys.timeutil import WINDOW_END_MS

#: the tables whose rows become events
EVENT_TABLES: tuple[str, ...] = ("click", "comment", "like", "gift", "room")


def replay_into_store(data_dir: str | Path, store: FeatureStore, until: int | None = None,
                      spec: OnlineFeatureSpec | None = None, layout: TopicLayout | None = None) -> WorkerStats:
    """Replay the events of ``data_dir`` with ``event_time <= until`` (default: the whole window) into ``store``."""
    layout = layout or TopicLayout()
    data = load_kuailive(Path(data_dir), tables=EVENT_TABLES, with_embeddings=False)
    events = event_table(data, until=WINDOW_END_MS - 1 if until is None else int(until))
    bus = InProcessBus()
    sink = bus.sink()
    try:
        publish(iter_events(events), sink, layout)
    finally:
        sink.close()
    source, dead = bus.source(layout.event_topics, "embedded"), bus.sink()
    try:
        return StreamWorker(source, store, dead, layout.dlq, spec).run(idle_timeout_s=0.0, poll_timeout_ms=0)
    finally:
        source.close()
        dead.close()


__all__ = ["EVENT_TABLES", "replay_into_store"]
