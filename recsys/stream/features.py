"""Online features: what each event writes to the store, how they are read, and the same features computed offline.

Features (all "as of" a time T, from events with time <= T):
- ``seq``: per user and event type, the last ``seq_len`` events (live_id, streamer_id, event_id, time);
- ``user_cnt`` / ``streamer_cnt``: per user / streamer and event type, events in the sliding windows ``(T - W, T]``;
- ``live``: rooms live at T (``start <= T < end``) with streamer, category, live type and start, kept in one hash
  (a start sets the room's field, its end deletes it; both are batched into one command per batch). This relies on
  the per-room order of the bus: room events are keyed by live_id and the producer is idempotent, so a room's end
  never overtakes its start;
- ``pop``: per room, entries (clicks) in the last ``popularity_window_ms``.

Writes are idempotent (sorted-set members are event ids) and order-independent, so the store's state is a function
of the *set* of events applied: a crash and a replay from the last committed offset never lose or double-count.
:func:`batch_snapshot` computes the same features from the files for a cutoff; :func:`online_snapshot` reads them
back from a store. Equality of the two is the test oracle of the stream.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from recsys.store.base import FeatureStore, WriteBatch
from recsys.stream.envelope import USER_EVENT_TYPES, Event
from recsys.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE

LIVE_KEY = "live:rooms"  # hash: live_id -> "streamer_id|category|live_type|start"


@dataclass(frozen=True)
class OnlineFeatureSpec:
    """Which online features are kept and for how long."""

    seq_len: int = 50
    windows_ms: tuple[int, ...] = (MS_PER_HOUR, MS_PER_DAY)
    popularity_window_ms: int = 5 * MS_PER_MINUTE
    #: wall-clock safety TTL of per-entity keys in the Redis backend (event-time trimming does the real work)
    ttl_s: int = 3 * 86_400
    window_names: dict[int, str] = field(default_factory=lambda: {MS_PER_HOUR: "1h", MS_PER_DAY: "1d"})

    def window_name(self, w: int) -> str:
        return self.window_names.get(w, f"{w}ms")


def seq_key(user_id: int, etype: str) -> str:
    return f"u:{user_id}:seq:{etype}"


def user_count_key(user_id: int, etype: str) -> str:
    return f"u:{user_id}:cnt:{etype}"


def streamer_count_key(streamer_id: int, etype: str) -> str:
    return f"s:{streamer_id}:cnt:{etype}"


def entries_key(live_id: int) -> str:
    return f"r:{live_id}:entries"


def tpp_key(user_id: int) -> str:
    """Hash of the TPP features of a user (written by the streaming TPP job at each window boundary)."""
    return f"u:{user_id}:tpp"


#: Fields of :func:`tpp_key`: expected minutes to the next visit, P(gift within the next hour), the window that
#: produced them and its end time (epoch ms).
TPP_FIELDS: tuple[str, ...] = ("next_visit_min", "p_gift_1h", "window", "as_of")


def seq_member(live_id: int, streamer_id: int, event_id: str) -> str:
    return f"{live_id}:{streamer_id}:{event_id}"


# ------------------------------------------------------------------------------------------------------------ write
def write_events(events: Sequence[Event], batch: WriteBatch, spec: OnlineFeatureSpec) -> None:
    """Queue the store writes of a batch of events (one ZADD per touched key, then event-time trims)."""
    if not events:
        return
    zadds: dict[str, dict[str, int]] = defaultdict(dict)
    seq_keys, count_keys, pop_keys = set(), set(), set()
    starts: dict[str, str] = {}
    ends: list[str] = []
    watermark = max(e.event_time for e in events)
    for e in events:
        p, t = e.payload, e.event_time
        if e.type == "room_start":
            starts[str(p["live_id"])] = f"{p['streamer_id']}|{p['category']}|{p['live_type']}|{t}"
        elif e.type == "room_end":
            ends.append(str(p["live_id"]))
        else:
            uid, sid, lid = p["user_id"], p["streamer_id"], p["live_id"]
            k = seq_key(uid, e.type)
            zadds[k][seq_member(lid, sid, e.event_id)] = t
            seq_keys.add(k)
            for k in (user_count_key(uid, e.type), streamer_count_key(sid, e.type)):
                zadds[k][e.event_id] = t
                count_keys.add(k)
            if e.type == "click":
                k = entries_key(lid)
                zadds[k][e.event_id] = t
                pop_keys.add(k)
    if starts:
        batch.hset(LIVE_KEY, starts)
    if ends:  # after the starts: a room that starts and ends within the batch is gone
        batch.hdel(LIVE_KEY, ends)
    for key, members in zadds.items():
        batch.zadd(key, members)
    for k in seq_keys:
        batch.ztrim_to_last(k, spec.seq_len)
        batch.expire(k, spec.ttl_s)
    longest = max(spec.windows_ms)
    for k in count_keys:
        batch.zremrangebyscore_below(k, watermark - longest)
        batch.expire(k, spec.ttl_s)
    for k in pop_keys:
        batch.zremrangebyscore_below(k, watermark - spec.popularity_window_ms)
        batch.expire(k, spec.ttl_s)


# ------------------------------------------------------------------------------------------------------------ read
@dataclass(frozen=True)
class RecentEvent:
    live_id: int
    streamer_id: int
    event_id: str
    time: int


@dataclass(frozen=True)
class LiveRoom:
    live_id: int
    streamer_id: int
    category: str
    live_type: int
    start: int


class OnlineFeatures:
    """Typed reads of the online features from any :class:`FeatureStore`."""

    def __init__(self, store: FeatureStore, spec: OnlineFeatureSpec | None = None) -> None:
        self.store = store
        self.spec = spec or OnlineFeatureSpec()

    def user_recent(self, user_id: int, etype: str = "click", n: int | None = None,
                    now: int | None = None) -> list[RecentEvent]:
        """The user's last ``n`` events of a type (oldest first), ignoring any after ``now``."""
        n = self.spec.seq_len if n is None else n
        rows = self.store.zrange_tail(seq_key(user_id, etype), self.spec.seq_len)
        out = []
        for member, score in rows:
            if now is not None and score > now:
                continue
            live, streamer, eid = member.split(":", 2)
            out.append(RecentEvent(int(live), int(streamer), eid, int(score)))
        return out[-n:] if n else []

    def counts(self, entity: str, entity_id: int, now: int) -> dict[str, int]:
        """``{"<type>.<window>": n}`` for a user (``entity="user"``) or a streamer (``"streamer"``)."""
        keyf = user_count_key if entity == "user" else streamer_count_key
        queries, names = [], []
        for etype in USER_EVENT_TYPES:
            for w in self.spec.windows_ms:
                queries.append((keyf(entity_id, etype), now - w, now))
                names.append(f"{etype}.{self.spec.window_name(w)}")
        return dict(zip(names, self.store.zcount_many(queries)))

    def live_rooms(self, now: int) -> list[LiveRoom]:
        """Rooms live at ``now``: started at or before it, and whose end has not been seen."""
        out = []
        for lid, value in self.store.hgetall(LIVE_KEY).items():
            sid, rest = value.split("|", 1)
            cat, lt, start = rest.rsplit("|", 2)  # the category is free text: split it off from both ends
            if int(start) <= now:
                out.append(LiveRoom(int(lid), int(sid), cat, int(lt), int(start)))
        return sorted(out, key=lambda r: r.live_id)

    def tpp(self, user_ids: Sequence[int]) -> list[dict[str, float]]:
        """The TPP features of users (an empty dict for a user the TPP job has not scored yet)."""
        rows = self.store.hget_many([tpp_key(u) for u in user_ids])
        return [{k: float(v) for k, v in row.items() if k in TPP_FIELDS} for row in rows]

    def room_popularity(self, live_ids: Iterable[int], now: int) -> list[int]:
        w = self.spec.popularity_window_ms
        return self.store.zcount_many([(entries_key(i), now - w, now) for i in live_ids])


# ------------------------------------------------------------------------------------------------------------ parity
Snapshot = dict[str, dict[Any, Any]]


def online_snapshot(store: FeatureStore, now: int, spec: OnlineFeatureSpec | None = None) -> Snapshot:
    """Every non-empty feature in the store as of ``now`` (scans keys: for tests and audits, not serving)."""
    spec = spec or OnlineFeatureSpec()
    feats = OnlineFeatures(store, spec)
    snap: Snapshot = {"seq": {}, "user_cnt": {}, "streamer_cnt": {}, "live": {}, "pop": {}}
    for key in store.scan_keys("u:*:seq:*"):
        _, uid, _, etype = key.split(":")
        rows = [(m, int(s)) for m, s in store.zrange_tail(key, spec.seq_len) if s <= now]
        if rows:
            snap["seq"][(int(uid), etype)] = rows
    for prefix, name in (("u", "user_cnt"), ("s", "streamer_cnt")):
        keys = store.scan_keys(f"{prefix}:*:cnt:*")
        queries = [(k, now - w, now) for k in keys for w in spec.windows_ms]
        for (k, lo, _), n in zip(queries, store.zcount_many(queries)):
            if n:
                _, eid, _, etype = k.split(":")
                snap[name][(int(eid), etype, now - lo)] = n
    live = feats.live_rooms(now)
    snap["live"] = {r.live_id: (r.streamer_id, r.category, r.live_type, r.start) for r in live}
    pops = feats.room_popularity([r.live_id for r in live], now)
    snap["pop"] = {r.live_id: n for r, n in zip(live, pops) if n}
    return snap


def batch_snapshot(events: pl.DataFrame, now: int, spec: OnlineFeatureSpec | None = None) -> Snapshot:
    """The same features as :func:`online_snapshot`, computed offline from an event table (see
    ``recsys.stream.replay.event_table``) with ``event_time <= now``."""
    spec = spec or OnlineFeatureSpec()
    ev = events.filter(pl.col("event_time") <= now)
    user_ev = ev.filter(pl.col("type").is_in(list(USER_EVENT_TYPES)))
    snap: Snapshot = {"seq": {}, "user_cnt": {}, "streamer_cnt": {}, "live": {}, "pop": {}}
    seq = (
        user_ev.with_columns(
            (pl.col("live_id").cast(pl.String) + ":" + pl.col("streamer_id").cast(pl.String) + ":"
             + pl.col("event_id")).alias("member"))
        .sort("user_id", "type", "event_time", "member")
        .group_by("user_id", "type", maintain_order=True)
        .agg(pl.col("member").tail(spec.seq_len), pl.col("event_time").tail(spec.seq_len))
    )
    for uid, etype, members, times in seq.iter_rows():
        snap["seq"][(uid, etype)] = list(zip(members, times))
    for col, name in (("user_id", "user_cnt"), ("streamer_id", "streamer_cnt")):
        for w in spec.windows_ms:
            counts = user_ev.filter(pl.col("event_time") > now - w).group_by(col, "type").len()
            for eid, etype, n in counts.iter_rows():
                snap[name][(eid, etype, w)] = n
    starts = ev.filter(pl.col("type") == "room_start")
    ended = ev.filter(pl.col("type") == "room_end").select("live_id")
    live = starts.join(ended, on="live_id", how="anti")
    snap["live"] = {lid: (sid, cat, lt, t) for lid, sid, cat, lt, t in
                    live.select("live_id", "streamer_id", "category", "live_type", "event_time").iter_rows()}
    entries = (ev.filter((pl.col("type") == "click") & (pl.col("event_time") > now - spec.popularity_window_ms))
               .group_by("live_id").len())
    snap["pop"] = {lid: n for lid, n in entries.iter_rows() if lid in snap["live"]}
    return snap
