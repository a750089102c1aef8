"""The versioned event envelope: encode/decode round trip, partition keys, and every rejection with its reason."""

from __future__ import annotations

import json

import pytest

from recsys.stream.envelope import (
    ENVELOPE_VERSION,
    PAYLOAD_FIELDS,
    ROOM_EVENT_TYPES,
    USER_EVENT_TYPES,
    Event,
    MalformedMessage,
    decode,
)

T = 1_746_374_400_123

PAYLOADS = {
    "click": {"user_id": 11, "live_id": 222, "streamer_id": 33, "watch_live_time": 4500},
    "comment": {"user_id": 11, "live_id": 222, "streamer_id": 33},
    "like": {"user_id": 11, "live_id": 222, "streamer_id": 33},
    "gift": {"user_id": 11, "live_id": 222, "streamer_id": 33, "gift_price": 0},
    "room_start": {"live_id": 222, "streamer_id": 33, "live_type": 2, "category": "游戏 game"},
    "room_end": {"live_id": 222, "streamer_id": 33},
}


def make(etype: str) -> Event:
    return Event(etype, f"{etype}-7", T, dict(PAYLOADS[etype]))


def envelope(etype: str = "click", **over) -> dict:
    obj = {"v": ENVELOPE_VERSION, "type": etype, "event_id": f"{etype}-1", "event_time": T,
           "payload": dict(PAYLOADS[etype])}
    obj.update(over)
    return obj


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def test_payload_fixture_covers_every_type() -> None:
    assert set(PAYLOADS) == set(PAYLOAD_FIELDS) == set(USER_EVENT_TYPES) | set(ROOM_EVENT_TYPES)
    for etype, fields in PAYLOAD_FIELDS.items():
        assert set(PAYLOADS[etype]) == set(fields)


@pytest.mark.parametrize("etype", sorted(PAYLOAD_FIELDS))
def test_round_trip(etype: str) -> None:
    e = make(etype)
    data = e.encode()
    assert isinstance(data, bytes)
    assert decode(data) == e
    assert decode(data.decode()) == e  # str input too
    obj = json.loads(data)
    assert obj == {"v": ENVELOPE_VERSION, "type": etype, "event_id": f"{etype}-7", "event_time": T,
                   "payload": PAYLOADS[etype]}


def test_decode_keeps_extra_payload_fields_and_accepts_zero() -> None:
    obj = envelope("like", event_time=0)
    obj["payload"]["extra"] = "x"
    e = decode(raw(obj))
    assert e.event_time == 0 and e.payload["extra"] == "x"


@pytest.mark.parametrize("etype", USER_EVENT_TYPES)
def test_key_is_user_for_user_events(etype: str) -> None:
    assert make(etype).key == b"11"


@pytest.mark.parametrize("etype", ROOM_EVENT_TYPES)
def test_key_is_room_for_room_events(etype: str) -> None:
    assert make(etype).key == b"222"


def _bad_payload(etype: str, **over) -> bytes:
    obj = envelope(etype)
    obj["payload"].update(over)
    return raw(obj)


def _missing(etype: str, field: str) -> bytes:
    obj = envelope(etype)
    del obj["payload"][field]
    return raw(obj)


def _without(key: str) -> bytes:
    obj = envelope()
    del obj[key]
    return raw(obj)


BAD = [
    ("none", None, "empty message"),
    ("not_json", b"not json", "not valid JSON"),
    ("bad_utf8", b"\xff\xfe\xfa{", "not valid JSON"),
    ("empty_bytes", b"", "not valid JSON"),
    ("json_list", b"[1, 2, 3]", "must be a JSON object, got list"),
    ("json_string", b'"click"', "must be a JSON object, got str"),
    ("wrong_version", raw(envelope(v=2)), "unsupported envelope version 2"),
    ("version_as_string", raw(envelope(v="1")), "unsupported envelope version '1'"),
    ("missing_version", _without("v"), "unsupported envelope version None"),
    ("unknown_type", raw(envelope(type="purchase")), "unknown event type 'purchase'"),
    ("missing_type", _without("type"), "unknown event type None"),
    ("missing_event_id", _without("event_id"), "event_id must be a non-empty string"),
    ("empty_event_id", raw(envelope(event_id="")), "event_id must be a non-empty string"),
    ("int_event_id", raw(envelope(event_id=5)), "event_id must be a non-empty string"),
    ("negative_time", raw(envelope(event_time=-1)), "event_time must be a non-negative integer (epoch ms), got -1"),
    ("string_time", raw(envelope(event_time="1746374400123")), "event_time must be a non-negative integer"),
    ("float_time", raw(envelope(event_time=1.5)), "event_time must be a non-negative integer"),
    ("bool_time", raw(envelope(event_time=True)), "got True"),
    ("missing_time", _without("event_time"), "got None"),
    ("missing_payload", _without("payload"), "payload must be a JSON object"),
    ("list_payload", raw(envelope(payload=[1])), "payload must be a JSON object"),
    ("bool_user_id", _bad_payload("click", user_id=True),
     "click payload field 'user_id' must be a non-negative integer, got True"),
    ("bool_gift_price", _bad_payload("gift", gift_price=False), "'gift_price' must be a non-negative integer"),
    ("missing_watch_time", _missing("click", "watch_live_time"), "click payload is missing 'watch_live_time'"),
    ("missing_category", _missing("room_start", "category"), "room_start payload is missing 'category'"),
    ("missing_user", _missing("like", "user_id"), "like payload is missing 'user_id'"),
    ("negative_live_id", _bad_payload("comment", live_id=-3), "comment payload field 'live_id' must be a "
                                                              "non-negative integer, got -3"),
    ("negative_streamer", _bad_payload("room_end", streamer_id=-1), "'streamer_id' must be a non-negative"),
    ("string_id", _bad_payload("click", user_id="11"), "'user_id' must be a non-negative integer, got '11'"),
    ("null_id", _bad_payload("like", streamer_id=None), "'streamer_id' must be a non-negative integer, got None"),
    ("int_category", _bad_payload("room_start", category=5),
     "room_start payload field 'category' must be a string, got 5"),
    ("null_category", _bad_payload("room_start", category=None), "'category' must be a string"),
]


@pytest.mark.parametrize(("raw_msg", "reason"), [(r, why) for _, r, why in BAD], ids=[name for name, *_ in BAD])
def test_decode_rejects(raw_msg, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode(raw_msg)
    assert reason in info.value.reason
    assert str(info.value) == info.value.reason
    assert isinstance(info.value, ValueError)
