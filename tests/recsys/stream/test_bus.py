"""The in-process bus behaves like a topic log with committed group positions; publish paces by event time."""

from __future__ import annotations

import time

from recsys.stream.bus import InProcessBus, TopicLayout, publish
from recsys.stream.envelope import Event, decode


def _events(n: int, step_ms: int = 10) -> list[Event]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(Event("room_start", f"rs-{i}", 1000 + i * step_ms,
                             {"live_id": i, "streamer_id": 1, "live_type": 1, "category": "game"}))
        else:
            out.append(Event("like", f"like-{i}", 1000 + i * step_ms, {"user_id": i % 5 + 1, "live_id": 1, "streamer_id": 1}))
    return out


def test_publish_routes_by_type_and_source_reads_in_append_order() -> None:
    bus, layout = InProcessBus(), TopicLayout(prefix="x")
    events = _events(30)
    assert publish(events, bus.sink(), layout) == 30
    assert {m.topic for m in bus.messages(layout.room)} == {"x.events.room"}
    assert len(bus.messages(layout.room)) == 10 and len(bus.messages(layout.user)) == 20
    src = bus.source(layout.event_topics, "g")
    got = [decode(m.value) for m in src.poll(100)]
    assert got == events  # event-time order across both topics is kept
    assert src.lag() == 0


def test_sources_resume_at_the_committed_position_of_their_group() -> None:
    bus, layout = InProcessBus(), TopicLayout()
    publish(_events(20), bus.sink(), layout)
    a = bus.source(layout.event_topics, "g")
    first = a.poll(7)
    a.commit()
    a.poll(5)  # read but not committed: a restarted member sees these again
    b = bus.source(layout.event_topics, "g")
    again = b.poll(100)
    assert [m.offset for m in again][0] == first[-1].offset + 1
    assert len(first) + len(again) == 20
    other = bus.source(layout.event_topics, "other-group")
    assert len(other.poll(100)) == 20  # groups are independent


def test_publish_at_a_speed_factor_follows_event_time() -> None:
    bus, layout = InProcessBus(), TopicLayout()
    events = _events(11, step_ms=100)  # 1 s of event time
    t0 = time.perf_counter()
    publish(events, bus.sink(), layout, speed=5.0)  # 5x real time: at least 0.2 s
    assert time.perf_counter() - t0 >= 0.19  # pacing is behaviour (a lower bound), not a speed claim
