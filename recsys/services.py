"""Connections to the platform's external services (Redis, Kafka), with clear errors.

Everything here is a plain function over an address string: there is no module-level
client, cache or configuration. Callers pass the URL / bootstrap string they got from
their own configuration (e.g. ``RECSYS_SERVICES__REDIS_URL``).

* :func:`connect_redis` returns a PINGed :class:`redis.Redis` or raises
  :class:`ServiceUnavailable` with the address, the cause and how to fix it.
* :func:`check_redis` / :func:`check_kafka` are health checks: they never raise for an
  unreachable service and return a :class:`ServiceStatus` instead.
* :func:`ensure_topics` creates Kafka topics explicitly (explicit partition count and
  replication factor), idempotently. Nothing relies on broker auto-creation.
* :class:`KafkaClientTimeouts` holds the consumer-group timeouts: production uses the
  client defaults, tests use :meth:`KafkaClientTimeouts.fast`.

Only the public kafka-python API (``KafkaAdminClient``) and redis-py are used.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError, for_code

__all__ = [
    "KafkaClientTimeouts",
    "ServiceStatus",
    "ServiceUnavailable",
    "check_kafka",
    "check_redis",
    "connect_redis",
    "ensure_topics",
    "parse_bootstrap",
]

REDIS_SCHEMES: tuple[str, ...] = ("redis", "rediss", "unix")
REDIS_HINT = "Start one with `make redis` or set RECSYS_SERVICES__REDIS_URL."
KAFKA_HINT = "Check that a broker listens there or set RECSYS_SERVICES__KAFKA_BOOTSTRAP."


class ServiceUnavailable(RuntimeError):
    """An external service (Redis, Kafka) could not be reached or refused to work.

    The message names the service, the address and the cause, and ends with a hint, e.g.
    ``redis at redis://127.0.0.1:6390/0 is unreachable: Connection refused. Start one
    with `make redis` or set RECSYS_SERVICES__REDIS_URL.``
    """

    def __init__(
        self, service: str, address: str, cause: str, hint: str = "", problem: str = "is unreachable"
    ) -> None:
        self.service = service
        self.address = address
        self.cause = cause
        self.hint = hint
        message = f"{service} at {address} {problem}: {cause.rstrip('. ')}."
        if hint:
            message = f"{message} {hint}"
        super().__init__(message)


@dataclass(frozen=True)
class ServiceStatus:
    """Result of a health check.

    Attributes:
        name: service name ("redis", "kafka").
        address: the checked address (credentials redacted).
        ok: whether the service answered.
        detail: what answered, or why it did not.
        latency_ms: round-trip time of the check when ``ok``, else ``None``.
    """

    name: str
    address: str
    ok: bool
    detail: str
    latency_ms: float | None


@dataclass(frozen=True)
class KafkaClientTimeouts:
    """Consumer-group timeouts for ``KafkaConsumer``.

    The defaults are kafka-python's (and the Java client's) defaults and are what
    production uses. :meth:`fast` is the short test profile: consumer-group joins take
    about ``session_timeout_ms / 2`` on the test broker, so tests need a short session.
    """

    session_timeout_ms: int = 45000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300000
    request_timeout_ms: int = 30000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"KafkaClientTimeouts.{name} must be a positive int, got {value!r}")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"KafkaClientTimeouts.heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be "
                f"lower than session_timeout_ms ({self.session_timeout_ms})"
            )

    @classmethod
    def fast(cls) -> KafkaClientTimeouts:
        """Short timeouts for tests against the local test broker.

        Not for production: Apache Kafka brokers reject session timeouts below their
        ``group.min.session.timeout.ms`` (6000 ms by default).
        """
        return cls(
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
            max_poll_interval_ms=10000,
            request_timeout_ms=5000,
        )

    def consumer_kwargs(self) -> dict[str, int]:
        """Keyword arguments for ``KafkaConsumer(**timeouts.consumer_kwargs(), ...)``."""
        return asdict(self)


# --------------------------------------------------------------------------- redis


def _redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (for messages and statuses)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = f"{user}:***@{host}"
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url


def _validate_redis_url(url: str) -> None:
    """Raise ValueError naming ``url`` unless it is a redis://, rediss:// or unix:// URL."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"invalid Redis URL {url!r}: expected redis://host:port/db, rediss://... or unix://path")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL {_redact_url(url)!r}: {exc}") from exc
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"invalid Redis URL {_redact_url(url)!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in REDIS_SCHEMES)}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"invalid Redis URL {_redact_url(url)!r}: unix:// needs a socket path")
    elif not parts.hostname:
        raise ValueError(f"invalid Redis URL {_redact_url(url)!r}: no host")


def _describe_exception(exc: BaseException) -> str:
    """One-line description of ``exc``: its message, or its class name if it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def connect_redis(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """Connect to Redis at ``url``, PING it and return the client.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://...`` or ``unix:///path``.
        timeout_s: socket connect and read timeout, in seconds.

    Returns:
        A ``redis.Redis`` returning bytes (``decode_responses=False``).

    Raises:
        ValueError: ``url`` is not a redis://, rediss:// or unix:// URL.
        ServiceUnavailable: the server did not answer the PING (refused, timed out,
            authentication failed, ...).
    """
    _validate_redis_url(url)
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
    except ValueError as exc:  # redis-py's own URL parsing (e.g. bad db number)
        raise ValueError(f"invalid Redis URL {_redact_url(url)!r}: {exc}") from exc
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        raise ServiceUnavailable("redis", _redact_url(url), _describe_exception(exc), REDIS_HINT) from exc
    return client


def check_redis(url: str, timeout_s: float = 1.0) -> ServiceStatus:
    """Health-check Redis at ``url``; never raises for an unreachable server.

    Returns:
        ``ServiceStatus(ok=True, latency_ms=<connect + PING time>)`` when it answers,
        otherwise ``ok=False`` with the cause in ``detail``.

    Raises:
        ValueError: ``url`` is malformed (a configuration error, not an outage).
    """
    _validate_redis_url(url)
    address = _redact_url(url)
    started = time.perf_counter()
    try:
        client = connect_redis(url, timeout_s=timeout_s)
    except ServiceUnavailable as exc:
        return ServiceStatus("redis", address, False, exc.cause, None)
    try:
        latency_ms = (time.perf_counter() - started) * 1000.0
        return ServiceStatus("redis", address, True, "PING ok", latency_ms)
    finally:
        client.close()


# --------------------------------------------------------------------------- kafka


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """Parse ``"host:port[,host:port...]"`` into ``[(host, port), ...]``.

    IPv6 literals are written in brackets: ``[::1]:9092``.

    Raises:
        ValueError: naming ``bootstrap`` when it is empty or any entry is malformed.
    """
    if not isinstance(bootstrap, str) or not bootstrap.strip():
        raise ValueError(f"invalid Kafka bootstrap {bootstrap!r}: expected 'host:port[,host:port]'")
    servers: list[tuple[str, int]] = []
    for raw in bootstrap.split(","):
        entry = raw.strip()
        host, sep, port_text = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            host = ""  # unbracketed IPv6 is ambiguous
        if not sep or not host or "/" in entry or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(
                f"invalid Kafka bootstrap {bootstrap!r}: entry {entry!r} is not 'host:port' "
                "(port 1-65535; IPv6 as [addr]:port)"
            )
        servers.append((host, int(port_text)))
    return servers


def _format_server(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tcp_probe(host: str, port: int, timeout_s: float) -> str | None:
    """Open and close a TCP connection; return None on success, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"timed out after {timeout_s:.1f}s"
    except OSError as exc:
        return exc.strerror or _describe_exception(exc)


def check_kafka(bootstrap: str, timeout_s: float = 3.0) -> ServiceStatus:
    """Health-check the Kafka cluster at ``bootstrap``; never raises for an unreachable one.

    First a plain TCP connect to each ``host:port`` (so that nothing listening is
    reported in milliseconds, not after client retries), then a ``KafkaAdminClient``
    bootstrap and ``list_topics()`` within the remaining time budget.

    Returns:
        ``ServiceStatus(ok=True, detail="<n> topics", latency_ms=...)`` or ``ok=False``
        with the cause in ``detail``. Returns in about ``timeout_s`` at worst.

    Raises:
        ValueError: ``bootstrap`` is malformed.
    """
    servers = parse_bootstrap(bootstrap)
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_s

    reachable: list[str] = []
    failures: list[str] = []
    for host, port in servers:
        remaining = max(deadline - time.monotonic(), 0.05)
        reason = _tcp_probe(host, port, remaining)
        if reason is None:
            reachable.append(_format_server(host, port))
        else:
            failures.append(f"{_format_server(host, port)}: {reason}")
    if not reachable:
        return ServiceStatus("kafka", bootstrap, False, "no broker accepts TCP connections (" + "; ".join(failures) + ")", None)

    remaining_ms = max(int((deadline - time.monotonic()) * 1000), 500)
    admin: KafkaAdminClient | None = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=reachable,
            client_id="recsys-healthcheck",
            request_timeout_ms=remaining_ms,
            bootstrap_timeout_ms=remaining_ms,
            reconnect_backoff_max_ms=1000,
        )
        topics = admin.list_topics()
    except (KafkaError, OSError, ValueError) as exc:
        return ServiceStatus("kafka", bootstrap, False, f"Kafka protocol check failed: {_describe_exception(exc)}", None)
    finally:
        if admin is not None:
            admin.close()
    latency_ms = (time.perf_counter() - started) * 1000.0
    return ServiceStatus("kafka", bootstrap, True, f"{len(topics)} topics", latency_ms)


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication_factor: int = 1,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create each topic with its explicit partition count; idempotent.

    A topic that already exists is left alone (its partition count is not checked or
    changed). The call waits until the new topics have a leader for every partition, so
    producers and consumers can use them right away.

    Args:
        bootstrap: ``"host:port[,host:port]"``.
        topics: topic name -> number of partitions (>= 1).
        replication_factor: replicas per partition (>= 1).
        timeout_s: budget for bootstrap, creation and the metadata wait.

    Returns:
        The names this call created, in the order given (``[]`` if all existed).

    Raises:
        ValueError: malformed bootstrap, topic name, partition count or replication factor.
        ServiceUnavailable: the cluster could not be reached or refused a topic.
    """
    parse_bootstrap(bootstrap)
    if replication_factor < 1:
        raise ValueError(f"replication_factor must be >= 1, got {replication_factor}")
    for name, partitions in topics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"invalid topic name {name!r}")
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise ValueError(f"topic {name!r}: partitions must be an int >= 1, got {partitions!r}")
    if not topics:
        return []

    timeout_ms = max(int(timeout_s * 1000), 1)
    # The dict form is kafka-python 3's non-deprecated equivalent of [NewTopic(...)].
    request = {
        name: {"num_partitions": partitions, "replication_factor": replication_factor}
        for name, partitions in topics.items()
    }
    admin: KafkaAdminClient | None = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="recsys-ensure-topics",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
        response = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
        created: list[str] = []
        problems: list[str] = []
        for result in response["topics"]:
            error = for_code(result["error_code"])
            if result["error_code"] == 0:
                created.append(result["name"])
            elif error is TopicAlreadyExistsError:
                continue
            else:
                message = result.get("error_message") or error.description
                problems.append(f"{result['name']}: {error.__name__} ({message})")
        if problems:
            raise ServiceUnavailable(
                "kafka", bootstrap, "; ".join(problems), problem="refused to create topics"
            )
        if created:
            admin.wait_for_topics(created, timeout_ms=timeout_ms)
    except KafkaError as exc:
        raise ServiceUnavailable("kafka", bootstrap, _describe_exception(exc), KAFKA_HINT) from exc
    finally:
        if admin is not None:
            admin.close()
    order = list(topics)
    return sorted(created, key=order.index)
