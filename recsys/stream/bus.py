"""The event bus: Kafka (kafka-python) or the in-process replay, behind the same three small interfaces.

Topic layout (all created explicitly, never auto-created):

| topic | key | content |
|---|---|---|
| ``<prefix>.events.user`` | user_id | click / comment / like / gift envelopes (per-user order) |
| ``<prefix>.events.room`` | live_id | room_start / room_end envelopes (per-room order) |
| ``<prefix>.events.dlq`` | original key | messages that failed to decode, with headers ``reason``, ``source`` |
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from recsys.services import KafkaClientTimeouts, ensure_topics
from recsys.stream.envelope import ROOM_EVENT_TYPES, Event


@dataclass(frozen=True)
class TopicLayout:
    prefix: str = "kuailive"
    partitions: int = 3
    replication_factor: int = 1

    @property
    def user(self) -> str:
        return f"{self.prefix}.events.user"

    @property
    def room(self) -> str:
        return f"{self.prefix}.events.room"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.events.dlq"

    @property
    def event_topics(self) -> tuple[str, str]:
        return (self.user, self.room)

    def topic_for(self, event: Event) -> str:
        return self.room if event.type in ROOM_EVENT_TYPES else self.user

    def ensure(self, bootstrap: str) -> list[str]:
        """Create the three topics (idempotent)."""
        return ensure_topics(bootstrap, {t: self.partitions for t in (self.user, self.room, self.dlq)},
                             replication_factor=self.replication_factor)


@dataclass(frozen=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class EventSink(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = ()) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class EventSource(Protocol):
    def poll(self, max_records: int, timeout_ms: int) -> list[RawMessage]: ...

    def commit(self) -> None:
        """Commit the position after every message returned by ``poll`` so far."""

    def lag(self) -> int | None: ...

    def assigned(self) -> bool:
        """Whether this member currently owns partitions (idle time only counts once it does)."""

    def close(self) -> None: ...


def publish(events: Iterable[Event], sink: EventSink, layout: TopicLayout, speed: float | None = None,
            on_event=None) -> int:
    """Send events in order; ``speed`` replays event time at ``speed`` x real time (None: as fast as possible)."""
    n = 0
    t_wall0 = time.perf_counter()
    t_ev0 = None
    for e in events:
        if speed:
            t_ev0 = e.event_time if t_ev0 is None else t_ev0
            ahead = (e.event_time - t_ev0) / 1000.0 / speed - (time.perf_counter() - t_wall0)
            if ahead > 0:
                time.sleep(ahead)
        sink.send(layout.topic_for(e), e.key, e.encode())
        n += 1
        if on_event is not None:
            on_event(n)
    sink.flush()
    return n


# ------------------------------------------------------------------------------------------------ in-process
@dataclass
class InProcessBus:
    """One in-memory append log shared by all topics, with committed positions per consumer group.

    The embedded default for one process: a source reads its topics in append order (for a replay: event-time
    order) and resumes at its group's committed position after a restart.
    """

    log: list[tuple[str, bytes | None, bytes | None, tuple]] = field(default_factory=list)
    committed: dict[str, int] = field(default_factory=dict)

    def sink(self) -> "InProcessSink":
        return InProcessSink(self)

    def source(self, topics: Sequence[str], group: str = "ingest") -> "InProcessSource":
        return InProcessSource(self, set(topics), group)

    def messages(self, topic: str) -> list[RawMessage]:
        """Every message of one topic (e.g. to inspect the dead-letter topic)."""
        return [RawMessage(t, 0, off, k, v) for off, (t, k, v, _) in enumerate(self.log) if t == topic]


class InProcessSink:
    def __init__(self, bus: InProcessBus) -> None:
        self.bus = bus

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = ()) -> None:
        self.bus.log.append((topic, key, value, tuple(headers)))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class InProcessSource:
    def __init__(self, bus: InProcessBus, topics: set[str], group: str) -> None:
        self.bus, self.topics, self.group = bus, topics, group
        self.pos = bus.committed.get(group, 0)

    def poll(self, max_records: int, timeout_ms: int = 0) -> list[RawMessage]:
        out: list[RawMessage] = []
        log = self.bus.log
        while self.pos < len(log) and len(out) < max_records:
            topic, key, value, _ = log[self.pos]
            if topic in self.topics:
                out.append(RawMessage(topic, 0, self.pos, key, value))
            self.pos += 1
        return out

    def commit(self) -> None:
        self.bus.committed[self.group] = self.pos

    def lag(self) -> int | None:
        return sum(1 for t, *_ in self.bus.log[self.pos:] if t in self.topics)

    def assigned(self) -> bool:
        return True

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ Kafka
class KafkaSink:
    """kafka-python idempotent producer with acks=all; keys decide partitions (per-user / per-room order)."""

    def __init__(self, bootstrap: str, linger_ms: int = 5, max_block_ms: int = 30_000,
                 batch_size: int = 64 * 1024) -> None:
        from kafka import KafkaProducer

        # idempotent: retries can neither duplicate nor reorder messages within a partition, so a room's end
        # never overtakes its start (the live-room set relies on that)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms,
                                      batch_size=batch_size, max_block_ms=max_block_ms, enable_idempotence=True)

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = ()) -> None:
        self.producer.send(topic, key=key, value=value, headers=list(headers) or None)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


class KafkaSource:
    """A consumer-group member on the event topics; offsets are committed explicitly, never automatically."""

    def __init__(self, bootstrap: str, topics: Sequence[str], group: str,
                 timeouts: KafkaClientTimeouts | None = None) -> None:
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(
            *topics, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=5000,
            **(timeouts or KafkaClientTimeouts()).consumer_kwargs(),
        )

    def poll(self, max_records: int, timeout_ms: int) -> list[RawMessage]:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [RawMessage(r.topic, r.partition, r.offset, r.key, r.value) for recs in batches.values() for r in recs]

    def commit(self) -> None:
        self.consumer.commit()

    def lag(self) -> int | None:
        """Messages behind the end of the assigned partitions (approximate on some test brokers)."""
        parts = self.consumer.assignment()
        if not parts:
            return None
        ends = self.consumer.end_offsets(list(parts))
        return int(sum(max(0, ends[p] - self.consumer.position(p)) for p in parts))

    def assigned(self) -> bool:
        return bool(self.consumer.assignment())

    def close(self) -> None:
        self.consumer.close(autocommit=False)
