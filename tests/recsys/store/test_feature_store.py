"""One FeatureStore suite, run unchanged against every backend (in-memory and real Redis).

Part 1 checks each primitive of :class:`FeatureStore` / :class:`WriteBatch` with identical expectations.
Part 2 checks the online features of :mod:`recsys.stream.features` on top of each backend: the parity oracle
``online_snapshot == batch_snapshot`` under random batch splits, out-of-order and duplicated delivery, and the
typed reads of :class:`OnlineFeatures` against brute-force answers.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import polars as pl
import pytest

from recsys.services import connect_redis
from recsys.store.base import FeatureStore
from recsys.store.memory import InMemoryStore
from recsys.store.redis_store import RedisStore
from recsys.stream.envelope import PAYLOAD_FIELDS, ROOM_EVENT_TYPES, USER_EVENT_TYPES, Event
from recsys.stream.features import (
    LiveRoom,
    OnlineFeatures,
    OnlineFeatureSpec,
    batch_snapshot,
    online_snapshot,
    write_events,
)
from recsys.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, WINDOW_START_MS


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> Iterator[FeatureStore]:
    if request.param == "memory":
        yield InMemoryStore()
        return
    redis_url = request.getfixturevalue("redis_url")
    s = RedisStore(redis_url, namespace=f"t{uuid.uuid4().hex}:")
    try:
        yield s
    finally:
        s.clear()
        s.close()


def zadd(store: FeatureStore, key: str, members: dict[str, float]) -> None:
    b = store.batch()
    b.zadd(key, members)
    b.execute()


def run(store: FeatureStore, op: str, *args) -> None:
    b = store.batch()
    getattr(b, op)(*args)
    b.execute()


# ============================================================================================ 1. primitives
def test_zcount_lower_bound_exclusive_upper_inclusive(store: FeatureStore) -> None:
    zadd(store, "z", {"a": 10, "b": 20, "c": 30, "d": 40})
    assert store.zcount("z", 10, 30) == 2  # b, c: 10 excluded, 30 included
    assert store.zcount("z", 9, 30) == 3
    assert store.zcount("z", 10, 29.5) == 1
    assert store.zcount("z", 20, 20) == 0
    assert store.zcount("z", 19, 20) == 1
    assert store.zcount("z", float("-inf"), float("inf")) == 4
    assert store.zcount("z", 40, 100) == 0
    assert store.zcount("z", 50, 10) == 0
    assert store.zcount("missing", 0, 100) == 0


def test_zcount_bounds_with_ties_at_the_bound(store: FeatureStore) -> None:
    zadd(store, "z", {"x": 5, "y": 5, "zz": 5, "w": 6})
    assert store.zcount("z", 5, 6) == 1
    assert store.zcount("z", 4, 5) == 3
    assert store.zcount("z", 4.999, 6) == 4


def test_zadd_same_member_is_idempotent_and_updates_score(store: FeatureStore) -> None:
    zadd(store, "z", {"a": 1, "b": 2})
    zadd(store, "z", {"a": 1})
    assert store.zcount("z", float("-inf"), float("inf")) == 2
    assert store.zrange_tail("z", 10) == [("a", 1.0), ("b", 2.0)]
    zadd(store, "z", {"a": 3})  # new score: moves, count unchanged
    assert store.zcount("z", float("-inf"), float("inf")) == 2
    assert store.zrange_tail("z", 10) == [("b", 2.0), ("a", 3.0)]
    assert store.zcount("z", 0, 1) == 0
    zadd(store, "z", {"a": 0.5})
    assert store.zrange_tail("z", 10) == [("a", 0.5), ("b", 2.0)]


def test_zrem(store: FeatureStore) -> None:
    zadd(store, "z", {"a": 1, "b": 2, "c": 3})
    run(store, "zrem", "z", "b")
    assert store.zrange_tail("z", 10) == [("a", 1.0), ("c", 3.0)]
    run(store, "zrem", "z", "nope")  # absent member: no-op
    run(store, "zrem", "missing", "a")  # absent key: no-op
    assert store.zrange_tail("z", 10) == [("a", 1.0), ("c", 3.0)]
    assert store.scan_keys("*") == ["z"]


def test_zremrangebyscore_below_is_strict(store: FeatureStore) -> None:
    zadd(store, "z", {"a": 1, "b": 2, "b2": 2, "c": 3})
    run(store, "zremrangebyscore_below", "z", 2)
    assert store.zrange_tail("z", 10) == [("b", 2.0), ("b2", 2.0), ("c", 3.0)]
    run(store, "zremrangebyscore_below", "z", 2.5)
    assert store.zrange_tail("z", 10) == [("c", 3.0)]
    run(store, "zremrangebyscore_below", "missing", 100)
    assert store.scan_keys("*") == ["z"]


def test_ztrim_to_last_keeps_highest_with_member_tiebreak(store: FeatureStore) -> None:
    zadd(store, "t", {"a": 5, "b": 5, "c": 5})
    run(store, "ztrim_to_last", "t", 2)
    assert store.zrange_tail("t", 10) == [("b", 5.0), ("c", 5.0)]

    zadd(store, "u", {"m1": 1, "m9": 9, "m5": 5, "m7": 7, "m3": 3})
    run(store, "ztrim_to_last", "u", 3)
    assert store.zrange_tail("u", 10) == [("m5", 5.0), ("m7", 7.0), ("m9", 9.0)]
    run(store, "ztrim_to_last", "u", 10)  # fewer members than n: unchanged
    assert store.zrange_tail("u", 10) == [("m5", 5.0), ("m7", 7.0), ("m9", 9.0)]


def test_zrange_tail(store: FeatureStore) -> None:
    # ties are ordered by member (bytewise): "10" < "9"
    zadd(store, "z", {"9": 1, "10": 1, "b": 3, "a": 2, "c": 4})
    assert store.zrange_tail("z", 2) == [("b", 3.0), ("c", 4.0)]
    assert store.zrange_tail("z", 100) == [("10", 1.0), ("9", 1.0), ("a", 2.0), ("b", 3.0), ("c", 4.0)]
    assert store.zrange_tail("z", 4) == [("9", 1.0), ("a", 2.0), ("b", 3.0), ("c", 4.0)]
    assert store.zrange_tail("z", 0) == []
    assert store.zrange_tail("missing", 3) == []


def test_zrange_by_score_inclusive_both_ends(store: FeatureStore) -> None:
    zadd(store, "z", {"a": 1, "b": 2, "b2": 2, "c": 3, "d": 4})
    assert store.zrange_by_score("z", 2, 3) == [("b", 2.0), ("b2", 2.0), ("c", 3.0)]
    assert store.zrange_by_score("z", 2.5, 3) == [("c", 3.0)]
    assert store.zrange_by_score("z", float("-inf"), 1) == [("a", 1.0)]
    assert store.zrange_by_score("z", 4, float("inf")) == [("d", 4.0)]
    assert store.zrange_by_score("z", 5, 9) == []
    assert store.zrange_by_score("missing", 0, 9) == []


def test_hset_hgetall_values_are_strings(store: FeatureStore) -> None:
    b = store.batch()
    b.hset("h", {"n": 42, "s": "text", "f": "1.5"})
    b.execute()
    assert store.hgetall("h") == {"n": "42", "s": "text", "f": "1.5"}
    b = store.batch()
    b.hset("h", {"n": 7, "extra": "x"})  # merges, overwrites
    b.execute()
    assert store.hgetall("h") == {"n": "7", "s": "text", "f": "1.5", "extra": "x"}
    assert store.hgetall("missing") == {}


def test_hget_many_and_zcount_many_in_order(store: FeatureStore) -> None:
    b = store.batch()
    b.hset("h1", {"a": 1})
    b.hset("h2", {"b": 2})
    b.zadd("z1", {"a": 1, "b": 2, "c": 3})
    b.zadd("z2", {"x": 10})
    b.execute()
    assert store.hget_many(["h2", "missing", "h1"]) == [{"b": "2"}, {}, {"a": "1"}]
    assert store.hget_many([]) == []
    assert store.zcount_many([("z2", 0, 10), ("z1", 1, 3), ("missing", 0, 100), ("z1", 0, 1)]) == [1, 2, 0, 1]
    assert store.zcount_many([]) == []


def test_scan_keys_glob(store: FeatureStore) -> None:
    b = store.batch()
    for k in ("u:1:seq:click", "u:2:seq:gift", "u:12:cnt:click", "s:1:cnt:click"):
        b.zadd(k, {"m": 1})
    b.hset("r:5:meta", {"start": 1})
    b.execute()
    assert store.scan_keys("*") == sorted(["u:1:seq:click", "u:2:seq:gift", "u:12:cnt:click", "s:1:cnt:click",
                                           "r:5:meta"])
    assert store.scan_keys("u:*:seq:*") == ["u:1:seq:click", "u:2:seq:gift"]
    assert store.scan_keys("*:cnt:*") == ["s:1:cnt:click", "u:12:cnt:click"]
    assert store.scan_keys("u:?:*") == ["u:1:seq:click", "u:2:seq:gift"]
    assert store.scan_keys("[rs]:*") == ["r:5:meta", "s:1:cnt:click"]
    assert store.scan_keys("nothing*") == []


@pytest.mark.parametrize("remove", ["zrem", "below", "trim"])
def test_empty_sorted_sets_disappear(store: FeatureStore, remove: str) -> None:
    zadd(store, "gone", {"a": 1, "b": 2})
    zadd(store, "kept", {"a": 1})
    b = store.batch()
    if remove == "zrem":
        b.zrem("gone", "a")
        b.zrem("gone", "b")
    elif remove == "below":
        b.zremrangebyscore_below("gone", 3)
    else:
        b.ztrim_to_last("gone", 0)
    b.execute()
    assert store.scan_keys("*") == ["kept"]
    assert store.zrange_tail("gone", 5) == []
    assert store.zcount("gone", float("-inf"), float("inf")) == 0


def test_batch_not_visible_before_execute(store: FeatureStore) -> None:
    zadd(store, "old", {"a": 1, "b": 2})
    b = store.batch()
    b.zadd("z", {"a": 1})
    b.hset("h", {"k": "v"})
    b.zrem("old", "a")
    b.zremrangebyscore_below("old", 10)
    b.expire("z", 60)
    assert store.zcount("z", float("-inf"), float("inf")) == 0
    assert store.hgetall("h") == {}
    assert store.zrange_tail("old", 5) == [("a", 1.0), ("b", 2.0)]
    assert store.scan_keys("*") == ["old"]
    b.execute()
    assert store.zrange_tail("z", 5) == [("a", 1.0)]
    assert store.hgetall("h") == {"k": "v"}
    assert store.scan_keys("*") == ["h", "z"]
    # a batch is reusable after execute and does not replay its old ops
    b.zadd("z", {"b": 2})
    b.execute()
    assert store.zrange_tail("z", 5) == [("a", 1.0), ("b", 2.0)]
    b.execute()  # empty batch: no-op
    assert store.scan_keys("*") == ["h", "z"]


def test_batch_applies_ops_in_order(store: FeatureStore) -> None:
    b = store.batch()
    b.zadd("z", {"a": 1})
    b.zrem("z", "a")
    b.zadd("z", {"b": 2})
    b.execute()
    assert store.zrange_tail("z", 5) == [("b", 2.0)]


def test_clear_empties_namespace(store: FeatureStore) -> None:
    b = store.batch()
    b.zadd("z", {"a": 1})
    b.hset("h", {"k": "v"})
    b.execute()
    outside = None
    if isinstance(store, RedisStore):
        outside = f"other{uuid.uuid4().hex}:k"
        store.client.set(outside, b"keep")
    try:
        store.clear()
        assert store.scan_keys("*") == []
        assert store.hgetall("h") == {}
        assert store.zcount("z", float("-inf"), float("inf")) == 0
        if outside is not None:
            assert store.client.get(outside) == b"keep"
    finally:
        if outside is not None:
            store.client.delete(outside)


@pytest.mark.redis
def test_redis_namespaces_are_isolated(redis_url: str) -> None:
    a = RedisStore(redis_url, namespace=f"t{uuid.uuid4().hex}:")
    b = RedisStore(redis_url, namespace=f"t{uuid.uuid4().hex}:")
    try:
        zadd(a, "z", {"x": 1})
        zadd(b, "z", {"y": 2})
        assert a.zrange_tail("z", 5) == [("x", 1.0)]
        assert b.scan_keys("*") == ["z"]
        a.clear()
        assert a.scan_keys("*") == []
        assert b.zrange_tail("z", 5) == [("y", 2.0)]
        raw = connect_redis(redis_url)
        try:
            assert raw.exists(b.namespace + "z") == 1
        finally:
            raw.close()
    finally:
        a.clear()
        b.clear()
        a.close()
        b.close()


@pytest.mark.redis
def test_redis_expire_sets_ttl(redis_url: str) -> None:
    s = RedisStore(redis_url, namespace=f"t{uuid.uuid4().hex}:")
    try:
        bt = s.batch()
        bt.zadd("z", {"a": 1})
        bt.expire("z", 100)
        bt.execute()
        assert 0 < s.client.ttl(s.namespace + "z") <= 100
    finally:
        s.clear()
        s.close()


# ============================================================================================ 2. features
T0 = WINDOW_START_MS
SPAN = 2 * MS_PER_DAY
END = T0 + SPAN  # every synthetic event has event_time <= END
_COLUMNS = ("type", "event_id", "event_time", "user_id", "live_id", "streamer_id", "watch_live_time",
            "gift_price", "live_type", "category")
_SCHEMA = {"type": pl.String, "event_id": pl.String, "event_time": pl.Int64, "user_id": pl.Int64,
           "live_id": pl.Int64, "streamer_id": pl.Int64, "watch_live_time": pl.Int64, "gift_price": pl.Int64,
           "live_type": pl.Int64, "category": pl.String}

# live_id -> (streamer_id, category, live_type, start offset, end offset or None); multi-digit ids so that
# bytewise member order differs from numeric order
ROOMS = {
    3: (1, "game", 0, 2 * MS_PER_HOUR, 20 * MS_PER_HOUR),
    7: (2, "music", 1, 5 * MS_PER_HOUR, 30 * MS_PER_HOUR),
    12: (10, "chat", 2, 0, None),
    25: (21, "game", 0, 26 * MS_PER_HOUR, 47 * MS_PER_HOUR),
    105: (1, "shop", 1, 30 * MS_PER_HOUR, None),
    230: (2, "music", 0, 40 * MS_PER_HOUR, SPAN),  # ends exactly at END
}
USERS = (1, 2, 3, 11, 42)


def _user_event(etype: str, eid: str, t: int, uid: int, lid: int, rng: random.Random) -> Event:
    payload = {"user_id": uid, "live_id": lid, "streamer_id": ROOMS[lid][0]}
    if etype == "click":
        payload["watch_live_time"] = rng.randrange(0, 5000)
    elif etype == "gift":
        payload["gift_price"] = rng.randrange(1, 500)
    assert set(payload) == set(PAYLOAD_FIELDS[etype])
    return Event(etype, eid, t, payload)


def make_events(seed: int = 7, n_user: int = 190) -> list[Event]:
    """~200 events over 2 days, minute granularity (so times tie), chronological with room order kept."""
    rng = random.Random(seed)
    events = []
    for lid, (sid, cat, lt, start, end) in ROOMS.items():
        events.append(Event("room_start", f"room_start-{lid}", T0 + start,
                            {"live_id": lid, "streamer_id": sid, "live_type": lt, "category": cat}))
        if end is not None:
            events.append(Event("room_end", f"room_end-{lid}", T0 + end, {"live_id": lid, "streamer_id": sid}))
    weights = {"click": 5, "comment": 2, "like": 2, "gift": 1}
    for i in range(n_user):
        etype = rng.choices(list(weights), list(weights.values()))[0]
        t = T0 + rng.randrange(0, SPAN + 1, MS_PER_MINUTE)
        events.append(_user_event(etype, f"{etype}-{i}", t, rng.choice(USERS), rng.choice(list(ROOMS)), rng))
    # clicks around the popularity window of the final cutoff on rooms live at END
    for j, (dt, lid, uid) in enumerate([(5 * MS_PER_MINUTE, 12, 1), (4 * MS_PER_MINUTE, 12, 2),
                                        (MS_PER_MINUTE, 105, 3), (0, 12, 42), (0, 105, 1)]):
        events.append(_user_event("click", f"click-late-{j}", END - dt, uid, lid, rng))
    order = {"room_start": 0, "room_end": 2}
    events.sort(key=lambda e: (e.event_time, order.get(e.type, 1), e.event_id))
    assert all(e.event_time <= END for e in events)
    return events


def events_frame(events: list[Event]) -> pl.DataFrame:
    rows = []
    for e in events:
        p = e.payload
        rows.append({"type": e.type, "event_id": e.event_id, "event_time": e.event_time,
                     "user_id": p.get("user_id"), "live_id": p["live_id"], "streamer_id": p["streamer_id"],
                     "watch_live_time": p.get("watch_live_time"), "gift_price": p.get("gift_price"),
                     "live_type": p.get("live_type"), "category": p.get("category")})
    return pl.DataFrame(rows, schema=_SCHEMA).select(_COLUMNS)


def shuffled_keeping_room_order(events: list[Event], rng: random.Random) -> list[Event]:
    """A random permutation in which each room's lifecycle messages keep their relative order."""
    out = list(events)
    rng.shuffle(out)
    per_room: dict[int, list[Event]] = {}
    for e in events:  # original (chronological) order
        if e.type in ROOM_EVENT_TYPES:
            per_room.setdefault(e.payload["live_id"], []).append(e)
    slots: dict[int, list[int]] = {}
    for i, e in enumerate(out):
        if e.type in ROOM_EVENT_TYPES:
            slots.setdefault(e.payload["live_id"], []).append(i)
    for lid, idx in slots.items():
        for i, e in zip(idx, per_room[lid]):
            out[i] = e
    return out


def apply(store: FeatureStore, events: list[Event], spec: OnlineFeatureSpec, rng: random.Random,
          max_batch: int = 30) -> None:
    i = 0
    while i < len(events):
        n = rng.randint(1, max_batch)
        b = store.batch()
        write_events(events[i:i + n], b, spec)
        b.execute()
        i += n


def _sequence(variant: str, events: list[Event], rng: random.Random) -> list[Event]:
    if variant == "chronological":
        return list(events)
    if variant == "shuffled":
        return shuffled_keeping_room_order(events, rng)
    if variant == "replayed_twice":  # the whole stream, then a replay of it from the start
        return list(events) + shuffled_keeping_room_order(events, rng)
    if variant == "each_twice_shuffled":  # every message delivered twice, out of order
        return shuffled_keeping_room_order([e for e in events for _ in (0, 1)], rng)
    raise AssertionError(variant)


EVENTS = make_events()
FRAME = events_frame(EVENTS)
CUTOFFS = (T0 + 21 * MS_PER_HOUR, T0 + 40 * MS_PER_HOUR + 30 * MS_PER_MINUTE, END - MS_PER_MINUTE, END)


def test_synthetic_events_cover_the_cases() -> None:
    assert 190 <= len(EVENTS) <= 220
    assert {e.type for e in EVENTS} == set(PAYLOAD_FIELDS)
    assert len({e.event_id for e in EVENTS}) == len(EVENTS)
    times = [e.event_time for e in EVENTS if e.type in USER_EVENT_TYPES]
    assert len(set(times)) < len(times)  # some ties
    assert FRAME.height == len(EVENTS) and FRAME.columns == list(_COLUMNS)
    for lid, (*_, start, end) in ROOMS.items():
        if end is not None:
            assert start < end


@pytest.mark.parametrize("spec", [OnlineFeatureSpec(), OnlineFeatureSpec(seq_len=3)], ids=["seq50", "seq3"])
@pytest.mark.parametrize("variant", ["chronological", "shuffled", "replayed_twice", "each_twice_shuffled"])
def test_online_matches_batch(store: FeatureStore, variant: str, spec: OnlineFeatureSpec) -> None:
    rng = random.Random(f"{variant}-{spec.seq_len}")
    for now in CUTOFFS:
        store.clear()
        upto = [e for e in EVENTS if e.event_time <= now]
        apply(store, _sequence(variant, upto, rng), spec, rng)
        online = online_snapshot(store, now, spec)
        offline = batch_snapshot(FRAME, now, spec)
        assert online == offline, f"cutoff {now - T0} ms after T0"
        # the oracle is not vacuous
        assert online["seq"] and online["user_cnt"] and online["streamer_cnt"] and online["live"]
        if spec.seq_len == 3:
            assert max(len(v) for v in online["seq"].values()) == 3
    # at END: room 230 ended exactly at END, 12 and 105 live, with the late clicks in the 5-minute window
    assert set(online["live"]) == {12, 105}
    assert online["live"][105] == (1, "shop", 1, T0 + 30 * MS_PER_HOUR)
    late_clicks = {lid: sum(1 for e in EVENTS if e.type == "click" and e.payload["live_id"] == lid
                            and END - 5 * MS_PER_MINUTE < e.event_time <= END) for lid in (12, 105)}
    assert late_clicks[12] >= 2 and late_clicks[105] >= 2
    assert online["pop"] == late_clicks


def test_parity_detects_a_difference(store: FeatureStore) -> None:
    """Applying one event more changes the snapshot (the parity check can fail)."""
    spec = OnlineFeatureSpec()
    now = CUTOFFS[1]
    apply(store, [e for e in EVENTS if e.event_time <= now], spec, random.Random(1))
    before = online_snapshot(store, now, spec)
    assert before == batch_snapshot(FRAME, now, spec)
    b = store.batch()
    write_events([_user_event("like", "like-extra", now, 1, 12, random.Random(0))], b, spec)
    b.execute()
    after = online_snapshot(store, now, spec)
    assert after != before
    assert after != batch_snapshot(FRAME, now, spec)


def test_user_recent_oldest_first_at_most_seq_len(store: FeatureStore) -> None:
    spec = OnlineFeatureSpec(seq_len=5)
    rng = random.Random(3)
    evs = [_user_event("click", f"c{i}", T0 + i * MS_PER_MINUTE, 9, [3, 12, 105][i % 3], rng) for i in range(8)]
    evs.append(_user_event("gift", "g0", T0, 9, 7, rng))
    rng.shuffle(evs)
    apply(store, evs, spec, rng, max_batch=3)
    feats = OnlineFeatures(store, spec)
    recent = feats.user_recent(9, "click")
    assert [r.event_id for r in recent] == ["c3", "c4", "c5", "c6", "c7"]
    assert [r.time for r in recent] == [T0 + i * MS_PER_MINUTE for i in range(3, 8)]
    assert [(r.live_id, r.streamer_id) for r in recent] == [(3, 1), (12, 10), (105, 1), (3, 1), (12, 10)]
    assert [r.event_id for r in feats.user_recent(9, "click", n=2)] == ["c6", "c7"]
    assert [r.event_id for r in feats.user_recent(9, "click", now=T0 + 5 * MS_PER_MINUTE)] == ["c3", "c4", "c5"]
    assert feats.user_recent(9, "click", n=0) == []
    assert [r.event_id for r in feats.user_recent(9, "gift")] == ["g0"]
    assert feats.user_recent(9, "like") == []
    assert feats.user_recent(10, "click") == []
    assert len(store.zrange_tail("u:9:seq:click", 100)) == 5


@pytest.mark.parametrize("entity", ["user", "streamer"])
def test_counts_match_brute_force(store: FeatureStore, entity: str) -> None:
    spec = OnlineFeatureSpec()
    now = CUTOFFS[2]
    upto = [e for e in EVENTS if e.event_time <= now]
    apply(store, shuffled_keeping_room_order(upto, random.Random(5)) * 2, spec, random.Random(6))
    feats = OnlineFeatures(store, spec)
    field = "user_id" if entity == "user" else "streamer_id"
    ids = USERS if entity == "user" else sorted({v[0] for v in ROOMS.values()}) + [999]
    expected_keys = {f"{t}.{w}" for t in USER_EVENT_TYPES for w in ("1h", "1d")}
    nonzero_1h = 0
    for eid in ids:
        got = feats.counts(entity, eid, now)
        assert set(got) == expected_keys
        for t in USER_EVENT_TYPES:
            for name, w in (("1h", MS_PER_HOUR), ("1d", MS_PER_DAY)):
                want = sum(1 for e in upto if e.type == t and e.payload[field] == eid and now - w < e.event_time <= now)
                assert got[f"{t}.{name}"] == want, (eid, t, name)
                nonzero_1h += name == "1h" and want > 0
        assert got["click.1h"] <= got["click.1d"]
    assert nonzero_1h > 0
    assert feats.counts(entity, ids[0], now)["click.1d"] > 0


def test_counts_window_boundaries(store: FeatureStore) -> None:
    spec = OnlineFeatureSpec()
    now = T0 + 2 * MS_PER_DAY
    rng = random.Random(0)
    times = [now - MS_PER_DAY, now - MS_PER_DAY + 1, now - MS_PER_HOUR, now - MS_PER_HOUR + 1, now]
    evs = [_user_event("gift", f"g{i}", t, 4, 3, rng) for i, t in enumerate(times)]
    apply(store, evs, spec, rng, max_batch=2)
    got = OnlineFeatures(store, spec).counts("user", 4, now)
    assert got["gift.1d"] == 4  # (now-1d, now]
    assert got["gift.1h"] == 2  # (now-1h, now]
    assert got["click.1d"] == 0
    assert OnlineFeatures(store, spec).counts("streamer", 1, now)["gift.1h"] == 2


def test_live_rooms(store: FeatureStore) -> None:
    spec = OnlineFeatureSpec()
    now = T0 + 10 * MS_PER_HOUR
    room = lambda lid, sid, t, cat="c", lt=0: Event(  # noqa: E731
        "room_start", f"rs-{lid}", t, {"live_id": lid, "streamer_id": sid, "live_type": lt, "category": cat})
    end = lambda lid, sid, t: Event("room_end", f"re-{lid}", t, {"live_id": lid, "streamer_id": sid})  # noqa: E731
    evs = [
        room(1, 10, T0, "game", 1), end(1, 10, T0 + MS_PER_HOUR),  # ended before now
        room(2, 20, T0 + MS_PER_HOUR, "music", 2),  # live
        room(3, 30, now, "chat", 0),  # starts exactly at now: live
        room(4, 40, now + 1),  # starts after now
        room(5, 50, T0), end(5, 50, now),  # ends exactly at now: not live
    ]
    apply(store, evs, spec, random.Random(0), max_batch=3)
    feats = OnlineFeatures(store, spec)
    got = sorted(feats.live_rooms(now), key=lambda r: r.live_id)
    assert got == [LiveRoom(2, 20, "music", 2, T0 + MS_PER_HOUR), LiveRoom(3, 30, "chat", 0, now)]
    earlier = {r.live_id for r in feats.live_rooms(now - 1)}
    assert 2 in earlier and not earlier & {1, 3, 4}
    assert sorted(r.live_id for r in feats.live_rooms(now + 1)) == [2, 3, 4]
    # a consumer rewind replays a room's start and end in order (same key, same partition): it stays ended
    apply(store, [evs[0], evs[1], evs[5], evs[6]], spec, random.Random(0), max_batch=1)
    assert sorted(r.live_id for r in feats.live_rooms(now)) == [2, 3]


def test_start_and_end_in_one_batch_leave_no_live_entry(store: FeatureStore) -> None:
    spec = OnlineFeatureSpec()
    evs = [Event("room_start", "rs-8", T0, {"live_id": 8, "streamer_id": 1, "live_type": 0, "category": "c"}),
           Event("room_start", "rs-9", T0, {"live_id": 9, "streamer_id": 2, "live_type": 0, "category": "c"}),
           Event("room_end", "re-8", T0 + MS_PER_HOUR, {"live_id": 8, "streamer_id": 1})]
    b = store.batch()
    write_events(evs, b, spec)
    b.execute()
    assert store.hgetall("live:rooms") == {"9": f"2|c|0|{T0}"}  # room 8 started and ended in this batch
    assert [r.live_id for r in OnlineFeatures(store, spec).live_rooms(T0 + 2 * MS_PER_HOUR)] == [9]


def test_event_time_trimming_uses_the_batch_watermark(store: FeatureStore) -> None:
    """Count and popularity entries older than the longest window behind the newest event of a batch are
    dropped, whatever the order of the events inside the batch."""
    spec = OnlineFeatureSpec()
    rng = random.Random(0)
    new = _user_event("click", "c-new", T0 + 3 * MS_PER_DAY, 5, 3, rng)
    old = _user_event("click", "c-old", T0, 5, 3, rng)
    b = store.batch()
    write_events([new, old], b, spec)
    b.execute()
    assert store.zrange_tail("u:5:cnt:click", 10) == [("c-new", float(new.event_time))]
    assert store.zrange_tail("s:1:cnt:click", 10) == [("c-new", float(new.event_time))]
    assert store.zrange_tail("r:3:entries", 10) == [("c-new", float(new.event_time))]
    assert [m for m, _ in store.zrange_tail("u:5:seq:click", 10)] == ["3:1:c-old", "3:1:c-new"]  # not time-trimmed


def test_room_popularity_counts_clicks_in_last_five_minutes(store: FeatureStore) -> None:
    spec = OnlineFeatureSpec()
    now = T0 + MS_PER_DAY
    rng = random.Random(0)
    w = 5 * MS_PER_MINUTE
    evs = [_user_event("click", f"c{i}", t, 1, 3, rng)
           for i, t in enumerate([now - w - 1, now - w, now - w + 1, now - 1, now])]
    evs += [_user_event("like", "l0", now, 1, 3, rng), _user_event("click", "c-other", now, 2, 7, rng)]
    apply(store, evs, spec, rng, max_batch=2)
    feats = OnlineFeatures(store, spec)
    assert feats.room_popularity([3, 7, 12], now) == [3, 1, 0]
    assert feats.room_popularity([3], now - 1) == [3]
    assert feats.room_popularity([], now) == []
