"""The versioned event envelope carried on the bus (Kafka topics or the in-process replay).

Wire format: UTF-8 JSON ``{"v": 1, "type": ..., "event_id": ..., "event_time": <epoch ms>, "payload": {...}}``.
``decode`` validates everything and raises :class:`MalformedMessage` with the reason, which the stream worker
routes to the dead-letter topic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ENVELOPE_VERSION = 1

#: Event types and the payload fields each must carry (all integers except the room category).
PAYLOAD_FIELDS: dict[str, dict[str, type]] = {
    "click": {"user_id": int, "live_id": int, "streamer_id": int, "watch_live_time": int},
    "comment": {"user_id": int, "live_id": int, "streamer_id": int},
    "like": {"user_id": int, "live_id": int, "streamer_id": int},
    "gift": {"user_id": int, "live_id": int, "streamer_id": int, "gift_price": int},
    "room_start": {"live_id": int, "streamer_id": int, "live_type": int, "category": str},
    "room_end": {"live_id": int, "streamer_id": int},
}
USER_EVENT_TYPES = ("click", "comment", "like", "gift")
ROOM_EVENT_TYPES = ("room_start", "room_end")


class MalformedMessage(ValueError):
    """A message that cannot be decoded into a valid :class:`Event`; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    event_id: str
    event_time: int
    payload: dict[str, Any]

    @property
    def key(self) -> bytes:
        """Partition key: the user for user events (per-user order), the room for room lifecycle events."""
        if self.type in ROOM_EVENT_TYPES:
            return str(self.payload["live_id"]).encode()
        return str(self.payload["user_id"]).encode()

    def encode(self) -> bytes:
        return json.dumps(
            {"v": ENVELOPE_VERSION, "type": self.type, "event_id": self.event_id, "event_time": self.event_time,
             "payload": self.payload},
            separators=(",", ":"),
        ).encode()


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode(raw: bytes | str | None) -> Event:
    """Parse and validate one message; raises :class:`MalformedMessage` naming the problem."""
    if raw is None:
        raise MalformedMessage("empty message (null value)")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"envelope must be a JSON object, got {type(obj).__name__}")
    if obj.get("v") != ENVELOPE_VERSION:
        raise MalformedMessage(f"unsupported envelope version {obj.get('v')!r} (expected {ENVELOPE_VERSION})")
    etype = obj.get("type")
    if etype not in PAYLOAD_FIELDS:
        raise MalformedMessage(f"unknown event type {etype!r}; expected one of {sorted(PAYLOAD_FIELDS)}")
    event_id = obj.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise MalformedMessage("event_id must be a non-empty string")
    event_time = obj.get("event_time")
    if not _int(event_time) or event_time < 0:
        raise MalformedMessage(f"event_time must be a non-negative integer (epoch ms), got {event_time!r}")
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise MalformedMessage("payload must be a JSON object")
    for name, kind in PAYLOAD_FIELDS[etype].items():
        if name not in payload:
            raise MalformedMessage(f"{etype} payload is missing '{name}'")
        value = payload[name]
        ok = isinstance(value, str) if kind is str else _int(value) and value >= 0
        if not ok:
            raise MalformedMessage(f"{etype} payload field '{name}' must be a {'string' if kind is str else 'non-negative integer'}, got {value!r}")
    return Event(etype, event_id, int(event_time), payload)
