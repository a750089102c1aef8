"""The stream worker: poll → decode → write features → flush dead letters → commit offsets.

Offsets are committed only after the store writes (and dead-letter sends) of everything polled have succeeded, so a
crash loses nothing; writes are idempotent, so the replay after a crash double-counts nothing. A message that does
not decode goes to the dead-letter topic with the reason and the worker keeps going.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from recsys.store.base import FeatureStore
from recsys.stream.bus import EventSink, EventSource, RawMessage
from recsys.stream.envelope import Event, MalformedMessage, decode
from recsys.stream.features import OnlineFeatureSpec, write_events

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    processed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    wall_s: float = 0.0
    last_event_time: int | None = None
    lag: int | None = None

    @property
    def events_per_s(self) -> float:
        return (self.processed + self.dead_lettered) / self.wall_s if self.wall_s > 0 else 0.0


def dead_letter(sink: EventSink, dlq_topic: str, msg: RawMessage, reason: str) -> None:
    """Send an undecodable message to the dead-letter topic, with ``reason`` and ``source`` (topic/partition/offset)
    headers, so nothing is lost and the consumer goes on."""
    headers = [("reason", reason.encode()[:1000]), ("source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode())]
    sink.send(dlq_topic, msg.key, msg.value, headers)


class StreamWorker:
    """One consumer-group member keeping a feature store fresh. Same code for Kafka and the in-process bus."""

    def __init__(self, source: EventSource, store: FeatureStore, dead_letters: EventSink, dlq_topic: str,
                 spec: OnlineFeatureSpec | None = None, log_every_s: float = 10.0) -> None:
        self.source = source
        self.store = store
        self.dead_letters = dead_letters
        self.dlq_topic = dlq_topic
        self.spec = spec or OnlineFeatureSpec()
        self.log_every_s = log_every_s
        self.stats = WorkerStats()

    def _dead_letter(self, msg: RawMessage, reason: str) -> None:
        dead_letter(self.dead_letters, self.dlq_topic, msg, reason)

    def process(self, messages: list[RawMessage]) -> tuple[int, int]:
        """Apply one polled batch to the store; returns (events written, messages dead-lettered). No commit."""
        events: list[Event] = []
        bad = 0
        for msg in messages:
            try:
                events.append(decode(msg.value))
            except MalformedMessage as exc:
                self._dead_letter(msg, exc.reason)
                bad += 1
        batch = self.store.batch()
        write_events(events, batch, self.spec)
        batch.execute()
        if bad:
            self.dead_letters.flush()
        if events:
            last = max(e.event_time for e in events)
            self.stats.last_event_time = max(last, self.stats.last_event_time or last)
        return len(events), bad

    def run(self, idle_timeout_s: float = 5.0, max_batches: int | None = None, max_records: int = 5000,
            poll_timeout_ms: int = 500, should_stop: Callable[[], bool] | None = None,
            commit: bool = True, join_timeout_s: float = 120.0) -> WorkerStats:
        """Consume until idle for ``idle_timeout_s``, ``max_batches`` batches, or ``should_stop()``.

        ``commit=False`` leaves the last batch uncommitted (used to simulate a crash between write and commit).
        Idle time counts only while the source owns partitions (a group join or rebalance is not idleness), up to
        ``join_timeout_s`` without any assignment.
        """
        t0 = time.perf_counter()
        last_msg = busy_until = time.perf_counter()
        first_msg: float | None = None  # throughput is measured from the first message (group join excluded)
        last_log = t0
        while True:
            if should_stop is not None and should_stop():
                break
            msgs = self.source.poll(max_records=max_records, timeout_ms=poll_timeout_ms)
            now = time.perf_counter()
            if not msgs:
                if not self.source.assigned() and now - t0 < join_timeout_s:
                    last_msg = now  # still joining / rebalancing
                elif now - last_msg >= idle_timeout_s:
                    break
                continue
            last_msg = now
            first_msg = now if first_msg is None else first_msg
            ok, bad = self.process(msgs)
            busy_until = time.perf_counter()
            self.stats.processed += ok
            self.stats.dead_lettered += bad
            self.stats.batches += 1
            final = max_batches is not None and self.stats.batches >= max_batches
            if commit or not final:
                self.source.commit()
            if now - last_log >= self.log_every_s:
                self.stats.lag = self.source.lag()
                self.stats.wall_s = now - (first_msg or t0)
                log.info("ingest: %d events (%.0f/s), %d dead-lettered, lag %s, event time %s",
                         self.stats.processed, self.stats.events_per_s, self.stats.dead_lettered,
                         self.stats.lag, self.stats.last_event_time)
                last_log = now
            if final:
                break
        self.stats.wall_s = busy_until - (first_msg or t0)  # join and trailing idle wait excluded
        self.stats.lag = self.source.lag()
        return self.stats
