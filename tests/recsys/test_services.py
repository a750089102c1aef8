"""recsys.services against REAL services: the session's Kafka-protocol broker and Redis."""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import FrozenInstanceError

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.serializer import Deserializer, Serializer

from recsys.services import (
    KafkaClientTimeouts,
    ServiceStatus,
    ServiceUnavailable,
    check_kafka,
    check_redis,
    connect_redis,
    ensure_topics,
)

PRODUCER_MAX_BLOCK_MS = 5000


def _closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# kafka-python 3 warns about any plain callable (lambda or named function) passed as a
# (de)serializer; named Serializer / Deserializer subclasses are its non-deprecated API.
class Utf8Serializer(Serializer):
    def serialize(self, topic: str, headers: list[tuple[str, bytes]], data: str) -> bytes:
        return data.encode("utf-8")


class Utf8Deserializer(Deserializer):
    def deserialize(self, topic: str, headers: list[tuple[str, bytes]], data: bytes) -> str:
        return data.decode("utf-8")


class JsonSerializer(Serializer):
    def serialize(self, topic: str, headers: list[tuple[str, bytes]], data: dict[str, object]) -> bytes:
        return json.dumps(data, separators=(",", ":")).encode("utf-8")


class JsonDeserializer(Deserializer):
    def deserialize(self, topic: str, headers: list[tuple[str, bytes]], data: bytes) -> dict[str, object]:
        return json.loads(data.decode("utf-8"))


# --------------------------------------------------------------------------- unit-level


def test_kafka_client_timeouts_profiles() -> None:
    assert KafkaClientTimeouts().consumer_kwargs() == {
        "session_timeout_ms": 45000,
        "heartbeat_interval_ms": 3000,
        "max_poll_interval_ms": 300000,
        "request_timeout_ms": 30000,
    }
    assert KafkaClientTimeouts.fast().consumer_kwargs() == {
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "max_poll_interval_ms": 10000,
        "request_timeout_ms": 5000,
    }
    with pytest.raises(FrozenInstanceError):
        KafkaClientTimeouts.fast().session_timeout_ms = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        KafkaClientTimeouts(session_timeout_ms=1000, heartbeat_interval_ms=1000)


def test_service_unavailable_message_names_service_address_cause() -> None:
    exc = ServiceUnavailable("redis", "redis://127.0.0.1:6390/0", "Connection refused.", "Start one.")
    assert isinstance(exc, RuntimeError)
    assert str(exc) == "redis at redis://127.0.0.1:6390/0 is unreachable: Connection refused. Start one."


# --------------------------------------------------------------------------- redis


@pytest.mark.redis
def test_redis_set_get_round_trip(redis_client: redis.Redis) -> None:
    assert redis_client.set("recsys:test:key", b"\x00value\xff")
    assert redis_client.get("recsys:test:key") == b"\x00value\xff"  # bytes: decode_responses=False
    assert redis_client.get("recsys:test:missing") is None


@pytest.mark.redis
def test_connect_redis_sets_socket_timeouts(redis_url: str) -> None:
    client = connect_redis(redis_url, timeout_s=1.5)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 1.5
        assert kwargs["socket_connect_timeout"] == 1.5
        assert client.ping() is True
    finally:
        client.close()


@pytest.mark.redis
def test_check_redis_ok_with_latency(redis_url: str) -> None:
    status = check_redis(redis_url)
    assert isinstance(status, ServiceStatus)
    assert status.name == "redis"
    assert status.ok is True, status.detail
    assert status.latency_ms is not None and 0.0 < status.latency_ms < 1000.0


@pytest.mark.redis
def test_check_redis_closed_port_is_not_ok_and_fast() -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    started = time.monotonic()
    status = check_redis(url, timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert status.ok is False
    assert status.latency_ms is None
    assert status.address == url
    assert "refused" in status.detail.lower(), status.detail
    assert elapsed < 1.5


@pytest.mark.redis
def test_connect_redis_closed_port_raises_service_unavailable() -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    with pytest.raises(ServiceUnavailable) as info:
        connect_redis(url, timeout_s=1.0)
    message = str(info.value)
    assert url in message
    assert message.startswith("redis at ")
    assert "refused" in message.lower()
    assert "make redis" in message


@pytest.mark.redis
def test_connect_redis_redacts_password() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{_closed_port()}/0"
    with pytest.raises(ServiceUnavailable) as info:
        connect_redis(url, timeout_s=1.0)
    assert "s3cret" not in str(info.value)
    assert "user:***@127.0.0.1" in str(info.value)


@pytest.mark.redis
@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "127.0.0.1:6379", "redis://", ""])
def test_malformed_redis_url_raises_value_error(url: str) -> None:
    with pytest.raises(ValueError) as info:
        connect_redis(url)
    assert repr(url) in str(info.value)
    with pytest.raises(ValueError):
        check_redis(url)


# --------------------------------------------------------------------------- kafka


@pytest.mark.kafka
def test_ensure_topics_creates_with_partitions_and_is_idempotent(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    three, one = unique_name("svc-three"), unique_name("svc-one")
    assert ensure_topics(kafka_bootstrap, {three: 3, one: 1}, timeout_s=5.0) == [three, one]
    assert ensure_topics(kafka_bootstrap, {three: 3, one: 1}, timeout_s=5.0) == []

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=5000)
    try:
        described = {t["name"]: t for t in admin.describe_topics([three, one])}
    finally:
        admin.close()
    assert described[three]["error_code"] == 0
    assert len(described[three]["partitions"]) == 3
    assert len(described[one]["partitions"]) == 1


@pytest.mark.kafka
def test_ensure_topics_rejects_bad_partition_count(kafka_bootstrap: str) -> None:
    with pytest.raises(ValueError, match="partitions"):
        ensure_topics(kafka_bootstrap, {"bad-topic": 0})


@pytest.mark.kafka
def test_keyed_produce_consume_round_trip(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic, group = unique_name("svc-roundtrip"), unique_name("svc-group")
    assert ensure_topics(kafka_bootstrap, {topic: 3}, timeout_s=5.0) == [topic]

    n_messages, n_keys = 200, 7
    sent: dict[str, list[int]] = defaultdict(list)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        linger_ms=5,
        max_block_ms=PRODUCER_MAX_BLOCK_MS,
        request_timeout_ms=5000,
        key_serializer=Utf8Serializer(),
        value_serializer=JsonSerializer(),
    )
    try:
        futures = []
        for seq in range(n_messages):
            key = f"user-{seq % n_keys}"
            sent[key].append(seq)
            futures.append(producer.send(topic, key=key, value={"seq": seq, "user": key}))
        producer.flush(timeout=10)
        partitions_used = {future.get(timeout=10).partition for future in futures}
    finally:
        producer.close(timeout=5)
    assert len(partitions_used) > 1, "keys should spread over several partitions"

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        key_deserializer=Utf8Deserializer(),
        value_deserializer=JsonDeserializer(),
        **KafkaClientTimeouts.fast().consumer_kwargs(),
    )
    received: dict[str, list[int]] = defaultdict(list)
    key_partition: dict[str, set[int]] = defaultdict(set)
    count = 0
    try:
        deadline = time.monotonic() + 15.0
        while count < n_messages and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    assert record.value["user"] == record.key
                    received[record.key].append(int(record.value["seq"]))
                    key_partition[record.key].add(tp.partition)
                    count += 1
        consumer.commit()
        # Nothing beyond the 200 may show up (no duplicates arriving late).
        extra = sum(len(records) for records in consumer.poll(timeout_ms=500).values())
    finally:
        consumer.close()

    all_seqs = sorted(seq for seqs in received.values() for seq in seqs)
    assert all_seqs == list(range(n_messages)), f"got {count} messages, expected each of {n_messages} exactly once"
    assert extra == 0
    assert received == sent  # per-key order preserved
    assert all(len(parts) == 1 for parts in key_partition.values())  # one key -> one partition


@pytest.mark.kafka
def test_check_kafka_ok_on_fixture_broker(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic = unique_name("svc-health")
    assert ensure_topics(kafka_bootstrap, {topic: 1}, timeout_s=5.0) == [topic]
    status = check_kafka(kafka_bootstrap)
    assert status.name == "kafka"
    assert status.address == kafka_bootstrap
    assert status.ok is True, status.detail
    assert status.latency_ms is not None and status.latency_ms > 0.0
    assert "topics" in status.detail


@pytest.mark.kafka
def test_check_kafka_closed_port_is_not_ok_and_fast() -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    status = check_kafka(bootstrap, timeout_s=2.0)
    elapsed = time.monotonic() - started
    assert status.ok is False
    assert status.latency_ms is None
    assert bootstrap in status.detail
    assert "refused" in status.detail.lower(), status.detail
    assert elapsed < 3.0


@pytest.mark.kafka
def test_ensure_topics_unreachable_raises_service_unavailable() -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info:
        ensure_topics(bootstrap, {"never-created": 1}, timeout_s=1.0)
    assert bootstrap in str(info.value)
    assert time.monotonic() - started < 5.0


@pytest.mark.kafka
@pytest.mark.parametrize(
    "bootstrap", ["", "localhost", "localhost:", "localhost:notaport", "host:0", "a:9092,,b:9092", "tcp://h:9092"]
)
def test_malformed_bootstrap_raises_value_error(bootstrap: str) -> None:
    with pytest.raises(ValueError) as info:
        check_kafka(bootstrap)
    assert repr(bootstrap) in str(info.value)
    with pytest.raises(ValueError):
        ensure_topics(bootstrap, {"t": 1})
