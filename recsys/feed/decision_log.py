"""The ranking service's decision log: one record per request, written at decision time, joined with outcomes later.

The service decides per request whether to insert a live room (the allocation decision of :mod:`recsys.feed.env`)
and writes one :class:`DecisionRecord` per decision to a :class:`DecisionSink`:

* :class:`JsonlDecisionSink`: one JSON object per line, appended to a local file (thread-safe);
* :class:`KafkaDecisionSink`: one message per decision on a Kafka topic, keyed by ``user_id`` (a user's decisions
  stay in one partition, in order);
* :class:`NullDecisionSink`: logging off.

:func:`open_sink` picks one from a spec string (``None`` / ``""``, a file path, ``kafka://host:port/topic``).

The service does not know the outcome when it decides. :func:`join_outcomes` joins the records with the interaction
log (the KuaiLive ``click`` table) afterwards and returns the :class:`recsys.feed.env.LoggedData` that
:mod:`recsys.ope` and :func:`pipelines.ope_report.run_ope` evaluate:

* ``click``: the room was inserted and the user clicked that ``live_id`` within ``reward_window_ms`` after the
  decision; a click is credited to at most one decision (the latest insertion of that room for that user at or
  before the click), so inserting the same room twice does not count one click twice;
* ``reward``: the ``watch_live_time`` of the first credited click, in minutes (0 otherwise);
* ``cost``: 0.0. The env's cost is the short video given up by an insertion; the service never sees which short
  video would have been shown, so the cost is unobserved and estimators that use it (the implied cost of the OPE
  report) read 0 on a service log.

A click on the inserted room within the window is credited to the insertion even if the user reached the room
another way: the log has no impression-level attribution.
"""

from __future__ import annotations

import json
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np
import polars as pl

from recsys.feed.env import BASE_FEATURES, LoggedData, n_groups_of
from recsys.services import KAFKA_HINT, ServiceUnavailable, ensure_topics, parse_bootstrap
from recsys.stream.bus import EventSink

__all__ = [
    "DEFAULT_TOPIC",
    "DecisionLogError",
    "DecisionRecord",
    "DecisionSink",
    "JsonlDecisionSink",
    "KafkaDecisionSink",
    "NullDecisionSink",
    "REWARD_WINDOW_MS",
    "join_outcomes",
    "open_sink",
    "parse_kafka_spec",
    "read_decisions",
    "read_decisions_kafka",
]

DEFAULT_TOPIC = "decisions"
KAFKA_SCHEME = "kafka://"
PROPENSITY_TOL = 1e-6
"""Largest allowed gap between ``propensity`` and the probability of the logged action implied by ``prob_insert``."""
REWARD_WINDOW_MS = 30 * 60_000
"""A click on the inserted room within this long after the decision is its reward."""

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_CLICK_COLUMNS = ("user_id", "live_id", "timestamp", "watch_live_time")


class DecisionLogError(ValueError):
    """A decision record or log is invalid; the message names where (``file:line``) and the field."""


# --------------------------------------------------------------------------------------------------------- record
def _fail(where: str, name: str, problem: str, value: Any) -> DecisionLogError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return DecisionLogError(f"{where}: field {name!r}: {problem}, got {shown}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(float(v))


def _check_int(where: str, name: str, v: Any, minimum: int = 0) -> int:
    if not _is_int(v) or int(v) < minimum:
        raise _fail(where, name, f"expected an int >= {minimum}", v)
    return int(v)


def _check_str(where: str, name: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(where, name, "expected a non-empty string", v)
    return v


def _check_real(where: str, name: str, v: Any) -> float:
    if not _is_real(v):
        raise _fail(where, name, "expected a finite number", v)
    return float(v)


def _check_seq(where: str, name: str, v: Any) -> Sequence[Any]:
    if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, np.ndarray)):
        raise _fail(where, name, "expected a list", v)
    return v


@dataclass(frozen=True)
class DecisionRecord:
    """One allocation decision of the ranking service, as logged at decision time (no outcome).

    Sequences are stored as tuples (the record is immutable); construction accepts lists or tuples and validates
    every field like :meth:`from_dict`: types, ids and times >= 0, ``action`` in {0, 1}, ``0 < propensity <= 1``,
    ``propensity`` equal to ``prob_insert`` (action 1) or ``1 - prob_insert`` (action 0), action 0 and
    ``prob_insert`` 0 when ``live_id`` is 0, a ``has_candidate`` feature that agrees with ``live_id``, one feature
    per name and one score per candidate.

    Attributes:
        request_id: unique id of the request.
        user_id: the requesting user.
        timestamp: decision time, epoch milliseconds.
        session_id: the user's feed session; rows of one session become one OPE trajectory.
        step: request index within the session as the service saw it (renumbered 0.. by :func:`join_outcomes`).
        group: activity group of the user (the ``group_<g>`` one-hot of the features).
        live_id: the candidate live room of the allocation decision, 0 when there was none.
        features: the observation the policy saw, columns ``feature_names``
            (:func:`recsys.feed.env.feature_names` layout).
        feature_names: names of ``features``.
        action: 1 = the live room was inserted, 0 = not.
        propensity: probability of the logged action under the logging policy, in (0, 1].
        prob_insert: the logging policy's probability of inserting, in [0, 1] (0 without a candidate).
        policy: name of the logging policy.
        candidates: the ranked live ids the service returned.
        scores: the ranking scores of ``candidates``.
        fallback: the service answered with its fallback (e.g. a model or store was unavailable).
    """

    request_id: str
    user_id: int
    timestamp: int
    session_id: str
    step: int
    group: int
    live_id: int
    features: tuple[float, ...]
    feature_names: tuple[str, ...]
    action: int
    propensity: float
    prob_insert: float
    policy: str
    candidates: tuple[int, ...]
    scores: tuple[float, ...]
    fallback: bool

    def __post_init__(self) -> None:
        self._validate("DecisionRecord")

    def _validate(self, where: str) -> None:
        """Check and normalise every field in place (tuples of Python scalars); raise naming ``where`` and the field."""
        put = object.__setattr__
        put(self, "request_id", _check_str(where, "request_id", self.request_id))
        for name in ("user_id", "timestamp", "step", "group", "live_id"):
            put(self, name, _check_int(where, name, getattr(self, name)))
        put(self, "session_id", _check_str(where, "session_id", self.session_id))
        put(self, "policy", _check_str(where, "policy", self.policy))

        names = tuple(_check_seq(where, "feature_names", self.feature_names))
        for j, n in enumerate(names):
            if not isinstance(n, str) or not n:
                raise _fail(where, f"feature_names[{j}]", "expected a non-empty string", n)
        if len(set(names)) != len(names):
            raise _fail(where, "feature_names", "names must be unique", list(names))
        feats = tuple(_check_real(where, f"features[{j}]", x)
                      for j, x in enumerate(_check_seq(where, "features", self.features)))
        if len(feats) != len(names):
            raise _fail(where, "features", f"expected {len(names)} values (one per feature name)", len(feats))
        put(self, "feature_names", names)
        put(self, "features", feats)

        action = self.action
        if not _is_int(action) or int(action) not in (0, 1):
            raise _fail(where, "action", "expected 0 or 1", action)
        action = int(action)
        propensity = _check_real(where, "propensity", self.propensity)
        if not 0.0 < propensity <= 1.0:
            raise _fail(where, "propensity", "expected a probability in (0, 1]", propensity)
        prob_insert = _check_real(where, "prob_insert", self.prob_insert)
        if not 0.0 <= prob_insert <= 1.0:
            raise _fail(where, "prob_insert", "expected a probability in [0, 1]", prob_insert)
        implied = prob_insert if action == 1 else 1.0 - prob_insert
        if abs(propensity - implied) > PROPENSITY_TOL:
            raise _fail(where, "propensity", f"must equal {'prob_insert' if action else '1 - prob_insert'} "
                        f"= {implied:.6g} for action {action}", propensity)
        if self.live_id == 0 and (action != 0 or prob_insert != 0.0):
            raise _fail(where, "live_id", f"0 (no candidate) needs action 0 and prob_insert 0, not action {action} "
                        f"and prob_insert {prob_insert:g}", self.live_id)
        if "has_candidate" in names and feats[names.index("has_candidate")] != float(self.live_id != 0):
            raise _fail(where, "features", f"has_candidate must be {int(self.live_id != 0)} for live_id "
                        f"{self.live_id}", feats[names.index("has_candidate")])
        put(self, "action", action)
        put(self, "propensity", propensity)
        put(self, "prob_insert", prob_insert)

        cands = tuple(_check_int(where, f"candidates[{j}]", c)
                      for j, c in enumerate(_check_seq(where, "candidates", self.candidates)))
        scores = tuple(_check_real(where, f"scores[{j}]", s)
                       for j, s in enumerate(_check_seq(where, "scores", self.scores)))
        if len(scores) != len(cands):
            raise _fail(where, "scores", f"expected {len(cands)} values (one per candidate)", len(scores))
        put(self, "candidates", cands)
        put(self, "scores", scores)
        if not isinstance(self.fallback, (bool, np.bool_)):
            raise _fail(where, "fallback", "expected true or false", self.fallback)
        put(self, "fallback", bool(self.fallback))

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready Python values (lists for the sequences)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def to_json(self) -> str:
        """One line of JSON (no spaces, no newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "decision record") -> "DecisionRecord":
        """Build and validate a record from a decoded JSON object; errors name ``where`` (e.g. ``decisions.jsonl:17``).

        Raises:
            DecisionLogError: ``d`` is not an object, misses or adds a field, or a field is invalid.
        """
        if not isinstance(d, Mapping):
            raise DecisionLogError(f"{where}: expected a JSON object, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise DecisionLogError(f"{where}: missing field(s) {', '.join(repr(n) for n in missing)}")
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise DecisionLogError(f"{where}: unknown field(s) {', '.join(repr(str(n)) for n in unknown)}")
        rec = object.__new__(cls)
        for n in names:
            object.__setattr__(rec, n, d[n])
        rec._validate(where)
        return rec

    @classmethod
    def from_json(cls, line: str, where: str = "decision record") -> "DecisionRecord":
        """Parse one JSON line (see :meth:`from_dict`)."""
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DecisionLogError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        return cls.from_dict(d, where)


# --------------------------------------------------------------------------------------------------------- sinks
class DecisionSink(ABC):
    """Where the service writes its decisions. Use as a context manager or call :meth:`close`."""

    @abstractmethod
    def write(self, record: DecisionRecord) -> None:
        """Log one decision."""

    @abstractmethod
    def flush(self) -> None:
        """Make every record written so far durable (on disk / acknowledged by the broker)."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the sink; idempotent."""

    def __enter__(self) -> "DecisionSink":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class NullDecisionSink(DecisionSink):
    """Discards every record (decision logging off)."""

    def write(self, record: DecisionRecord) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlDecisionSink(DecisionSink):
    """Appends one JSON line per record to ``path`` (parent directories created); safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: TextIO | None = self.path.open("a", encoding="utf-8", buffering=1)

    def write(self, record: DecisionRecord) -> None:
        line = record.to_json() + "\n"
        with self._lock:
            if self._file is None:
                raise ValueError(f"decision log {self.path} is closed")
            self._file.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class KafkaDecisionSink(DecisionSink):
    """Sends each record to ``topic``: key = ``user_id`` (decimal, UTF-8), value = :meth:`DecisionRecord.to_json`.

    Without ``producer`` the sink creates ``topic`` (``partitions``, idempotent, :func:`recsys.services.ensure_topics`)
    and its own :class:`recsys.stream.bus.KafkaSink` (idempotent producer, acks=all), which :meth:`close` closes.
    A given ``producer`` (anything with ``send(topic, key=..., value=...)``, ``flush()`` and ``close()``: a
    ``KafkaSink`` or a kafka-python ``KafkaProducer``) is used as is and left open; its topic must exist.
    """

    def __init__(self, bootstrap: str, topic: str = DEFAULT_TOPIC, producer: EventSink | None = None,
                 partitions: int = 3, replication_factor: int = 1) -> None:
        parse_bootstrap(bootstrap)
        if not isinstance(topic, str) or not _TOPIC_RE.match(topic):
            raise ValueError(f"invalid Kafka topic {topic!r}: 1-249 characters of [A-Za-z0-9._-]")
        self.bootstrap, self.topic = bootstrap, topic
        self._owned = producer is None
        if producer is None:
            from recsys.stream.bus import KafkaSink

            ensure_topics(bootstrap, {topic: partitions}, replication_factor=replication_factor)
            producer = KafkaSink(bootstrap)
        self.producer = producer
        self._closed = False

    def write(self, record: DecisionRecord) -> None:
        if self._closed:
            raise ValueError(f"decision sink kafka://{self.bootstrap}/{self.topic} is closed")
        self.producer.send(self.topic, key=str(record.user_id).encode(), value=record.to_json().encode())

    def flush(self) -> None:
        if not self._closed:
            self.producer.flush()

    def close(self) -> None:
        if self._closed:
            return
        self.producer.flush()
        if self._owned:
            self.producer.close()
        self._closed = True


def parse_kafka_spec(spec: str) -> tuple[str, str]:
    """``kafka://host:port[,host:port]/topic`` -> ``(bootstrap, topic)``.

    Raises:
        ValueError: naming ``spec`` when the scheme, the bootstrap or the topic is malformed or missing.
    """
    form = "expected kafka://host:port[,host:port]/topic"
    if not spec.startswith(KAFKA_SCHEME):
        raise ValueError(f"invalid Kafka decision sink {spec!r}: {form}")
    bootstrap, sep, topic = spec[len(KAFKA_SCHEME):].partition("/")
    if not sep or not topic:
        raise ValueError(f"invalid Kafka decision sink {spec!r}: no topic ({form})")
    if not _TOPIC_RE.match(topic):
        raise ValueError(f"invalid Kafka decision sink {spec!r}: topic {topic!r} is not 1-249 characters of "
                         f"[A-Za-z0-9._-] ({form})")
    try:
        parse_bootstrap(bootstrap)
    except ValueError as exc:
        raise ValueError(f"invalid Kafka decision sink {spec!r}: {exc} ({form})") from None
    return bootstrap, topic


def open_sink(spec: str | None) -> DecisionSink:
    """A sink from a spec: ``None`` / ``""`` -> :class:`NullDecisionSink`, ``kafka://host:port/topic`` ->
    :class:`KafkaDecisionSink`, anything else -> :class:`JsonlDecisionSink` at that path.

    Raises:
        ValueError: a malformed ``kafka://`` spec.
    """
    if spec is None or not spec.strip():
        return NullDecisionSink()
    if spec.startswith(KAFKA_SCHEME):
        bootstrap, topic = parse_kafka_spec(spec)
        return KafkaDecisionSink(bootstrap, topic)
    return JsonlDecisionSink(spec)


# --------------------------------------------------------------------------------------------------------- readers
def read_decisions(path: str | Path) -> list[DecisionRecord]:
    """Every record of a JSONL decision log, in file order (blank lines are skipped).

    Raises:
        FileNotFoundError: no file at ``path``.
        DecisionLogError: a line is not valid JSON or not a valid record; the message names ``path:line`` and the
            field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decision log {path} not found")
    out: list[DecisionRecord] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                out.append(DecisionRecord.from_json(line, f"{path}:{lineno}"))
    return out


def read_decisions_kafka(bootstrap: str, topic: str = DEFAULT_TOPIC, timeout_s: float = 5.0) -> list[DecisionRecord]:
    """Every record on ``topic`` from the beginning, stopping once no message arrived for ``timeout_s`` seconds.

    Reads with a group-less consumer on all partitions of the topic (no offsets are committed). Records of one
    partition keep their order; partitions follow each other (sort by session and time before use, as
    :func:`join_outcomes` does).

    Raises:
        ValueError: malformed ``bootstrap`` or non-positive ``timeout_s``.
        ServiceUnavailable: no broker answers at ``bootstrap``.
        DecisionLogError: the topic does not exist, or a message is not a valid record (named
            ``kafka://bootstrap/topic[partition]@offset``).
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    parse_bootstrap(bootstrap)
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest")
    except KafkaError as exc:
        raise ServiceUnavailable("kafka", bootstrap, str(exc) or type(exc).__name__, KAFKA_HINT) from exc
    try:
        parts = sorted(consumer.partitions_for_topic(topic))
        if not parts:
            raise DecisionLogError(f"kafka://{bootstrap}/{topic}: topic not found")
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[DecisionRecord] = []
        while True:
            batch = consumer.poll(timeout_ms=int(timeout_s * 1000))
            if not batch:
                return out
            for tp, msgs in sorted(batch.items(), key=lambda kv: kv[0].partition):
                for m in msgs:
                    where = f"kafka://{bootstrap}/{topic}[{tp.partition}]@{m.offset}"
                    try:
                        text = (m.value or b"").decode("utf-8")
                    except UnicodeDecodeError:
                        raise DecisionLogError(f"{where}: message value is not UTF-8") from None
                    out.append(DecisionRecord.from_json(text, where))
    finally:
        consumer.close()


# --------------------------------------------------------------------------------------------------------- outcomes
def _single(records: Sequence[DecisionRecord], name: str) -> Any:
    values = {getattr(r, name) for r in records}
    if len(values) > 1:
        shown = sorted(list(v) if isinstance(v, tuple) else v for v in values)[:3]
        raise DecisionLogError(f"decision records: field {name!r} differs between records ({len(values)} distinct "
                               f"values, e.g. {shown}); evaluate one logging policy and feature layout at a time")
    return values.pop()


def _credited_clicks(rows: pl.DataFrame, clicks: pl.DataFrame, window_ms: int) -> pl.DataFrame:
    """``row -> first credited click timestamp and watch_live_time`` for the inserted rows of ``rows``."""
    missing = [c for c in _CLICK_COLUMNS if c not in clicks.columns]
    if missing:
        raise DecisionLogError(f"click table: missing column(s) {missing} (has {clicks.columns})")
    inserted = (rows.filter(pl.col("action") == 1)
                .select("row", "user_id", "live_id", pl.col("timestamp").alias("t_decision"))
                .sort("t_decision"))
    clk = (clicks.select(*(pl.col(c).cast(pl.Int64) for c in _CLICK_COLUMNS))
           .join(inserted.select("user_id", "live_id").unique(), on=["user_id", "live_id"], how="semi")
           .sort("timestamp"))
    # each click goes to the latest insertion of its room for its user at or before it, if within the window
    credited = clk.join_asof(inserted, left_on="timestamp", right_on="t_decision", by=["user_id", "live_id"],
                             strategy="backward", tolerance=window_ms, check_sortedness=False)
    return (credited.filter(pl.col("row").is_not_null())
            .sort("row", "timestamp")
            .group_by("row", maintain_order=True)
            .agg(pl.col("watch_live_time").first()))


def join_outcomes(records: Sequence[DecisionRecord], clicks: pl.DataFrame, reward_window_ms: int = REWARD_WINDOW_MS,
                  gamma: float = 0.95) -> LoggedData:
    """Join service decisions with the click log into a :class:`LoggedData` for :mod:`recsys.ope`.

    Rows are sorted by (session, timestamp, step); string session ids become 0 .. n-1 in order of first appearance
    in ``records``; steps are renumbered 0, 1, ... within each session and ``done`` marks each session's last row.
    ``click`` / ``reward`` / ``cost`` follow the module docstring (reward in minutes, cost 0).

    Args:
        records: the decisions of one logging policy with one feature layout.
        clicks: the KuaiLive ``click`` table (``user_id``, ``live_id``, ``timestamp`` ms, ``watch_live_time`` ms).
        reward_window_ms: a click counts when it falls in ``[t, t + reward_window_ms]`` of the decision time t.
        gamma: the discount stored with the log.

    Raises:
        DecisionLogError: no records, mixed policies or feature names, features not in the
            :func:`recsys.feed.env.feature_names` layout, a repeated ``request_id``, a session of several users,
            a click table without the needed columns.
        ValueError: negative ``reward_window_ms`` or ``gamma`` outside [0, 1].
    """
    if not records:
        raise DecisionLogError("no decision records to join (the decision log is empty)")
    if reward_window_ms < 0:
        raise ValueError(f"reward_window_ms must be >= 0, got {reward_window_ms}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    policy = _single(records, "policy")
    names = _single(records, "feature_names")
    try:
        n_groups_of(names)
    except ValueError:
        raise DecisionLogError(f"decision records: field 'feature_names' is {list(names)}, expected "
                               f"{list(BASE_FEATURES)} followed by group_0, group_1, ... (recsys.feed.env layout)"
                               ) from None
    seen: set[str] = set()
    for r in records:
        if r.request_id in seen:
            raise DecisionLogError(f"decision records: field 'request_id': {r.request_id!r} is logged twice")
        seen.add(r.request_id)

    session_index: dict[str, int] = {}
    for r in records:
        session_index.setdefault(r.session_id, len(session_index))
    rows = pl.DataFrame({
        "session": np.fromiter((session_index[r.session_id] for r in records), np.int64, len(records)),
        "timestamp": np.fromiter((r.timestamp for r in records), np.int64, len(records)),
        "step": np.fromiter((r.step for r in records), np.int64, len(records)),
        "record": np.arange(len(records), dtype=np.int64),
        "user_id": np.fromiter((r.user_id for r in records), np.int64, len(records)),
        "live_id": np.fromiter((r.live_id for r in records), np.int64, len(records)),
        "action": np.fromiter((r.action for r in records), np.int8, len(records)),
    }).sort("session", "timestamp", "step", "record").with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    users = rows.group_by("session").agg(pl.col("user_id").n_unique().alias("n")).filter(pl.col("n") > 1)
    if users.height:
        inverse = {v: k for k, v in session_index.items()}
        raise DecisionLogError(f"decision records: session_id {inverse[int(users['session'][0])]!r} has decisions of "
                               f"{int(users['n'][0])} different users")

    n = rows.height
    order = rows["record"].to_numpy()
    session = rows["session"].to_numpy()
    done = np.ones(n, dtype=bool)
    done[:-1] = session[1:] != session[:-1]
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    step = np.arange(n, dtype=np.int64) - np.repeat(starts, np.diff(np.r_[starts, n]))

    credited = _credited_clicks(rows, clicks, reward_window_ms)
    reward = np.zeros(n, dtype=np.float64)
    click = np.zeros(n, dtype=bool)
    hit = credited["row"].to_numpy()
    reward[hit] = credited["watch_live_time"].to_numpy().astype(np.float64) / 60_000.0
    click[hit] = True

    ordered = [records[i] for i in order]
    features = np.array([r.features for r in ordered], dtype=np.float64).reshape(n, len(names))
    return LoggedData(
        session_id=session.astype(np.int64),
        step=step,
        user_id=rows["user_id"].to_numpy().astype(np.int64),
        timestamp=rows["timestamp"].to_numpy().astype(np.int64),
        live_id=rows["live_id"].to_numpy().astype(np.int64),
        group=np.fromiter((r.group for r in ordered), np.int64, n),
        features=np.ascontiguousarray(features),
        action=rows["action"].to_numpy().astype(np.int8),
        propensity=np.fromiter((r.propensity for r in ordered), np.float64, n),
        prob_insert=np.fromiter((r.prob_insert for r in ordered), np.float64, n),
        reward=reward,
        cost=np.zeros(n, dtype=np.float64),
        click=click,
        done=done,
        feature_names=tuple(names),
        policy_name=policy,
        gamma=float(gamma),
    )
