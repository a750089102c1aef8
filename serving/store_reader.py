"""Reads of the online feature store on the request path, with a circuit breaker.

A store call that fails (Redis down, or slower than its socket timeout) opens the breaker: for ``cooldown_s`` no
request touches the store, every one is served cold and counted as a fallback, and the first call after the
cool-down probes the store again. Callers get ``None`` instead of an exception, so a store outage is never a 5xx.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from recsys.stream.envelope import USER_EVENT_TYPES
from recsys.stream.features import LiveRoom, OnlineFeatures, RecentEvent, entries_key, streamer_count_key
from recsys.timeutil import MS_PER_DAY

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class UserState:
    """What the store says about a user at ``now``: recent events per type strictly before ``now`` (oldest first, as
    the training features read them) and TPP features."""

    user_id: int
    now: int
    recent: dict[str, list[RecentEvent]] = field(default_factory=dict)
    tpp: dict[str, float] = field(default_factory=dict)
    from_store: bool = True  # False: the store was unavailable, this is the cold-start state

    @property
    def has_history(self) -> bool:
        return any(self.recent.values())


class StoreReader:
    """Request-path reads over :class:`OnlineFeatures`; ``None`` when the store is unavailable (see module doc)."""

    def __init__(self, features: OnlineFeatures, cooldown_s: float = 1.0,
                 on_failure: Callable[[Exception], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.features = features
        self.cooldown_s = cooldown_s
        self.on_failure = on_failure
        self.clock = clock
        self._open_until = 0.0
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.up = True

    def _call(self, fn: Callable[[], T]) -> T | None:
        if self.clock() < self._open_until:
            return None
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - any store failure degrades the request, never fails it
            with self._lock:
                self._open_until = self.clock() + self.cooldown_s
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.up = False
            if self.on_failure is not None:
                self.on_failure(exc)
            log.warning("feature store unavailable (%s); serving cold for %.1f s", self.last_error, self.cooldown_s)
            return None
        self.up = True
        return out

    def user_state(self, user_id: int, now: int) -> UserState:
        """The user's recent events and TPP features; the cold-start state (``from_store=False``) on failure."""
        def read() -> UserState:
            # user_recent keeps events at or before its ``now``; integer ms: <= now - 1 is strictly before now
            recent = {t: self.features.user_recent(user_id, t, now=now - 1) for t in USER_EVENT_TYPES}
            return UserState(user_id, now, recent, self.features.tpp([user_id])[0])

        state = self._call(read)
        return state if state is not None else UserState(user_id, now, {t: [] for t in USER_EVENT_TYPES},
                                                          {}, from_store=False)

    # windows are [now - w, now) as in training (events strictly before the request): zcount's (lo, hi] on ms ints
    def streamer_day_clicks(self, streamer_ids: Sequence[int], now: int) -> np.ndarray | None:
        """Clicks on each streamer in ``[now - 1 day, now)``."""
        q = [(streamer_count_key(int(s), "click"), now - MS_PER_DAY - 1, now - 1) for s in streamer_ids]
        out = self._call(lambda: self.features.store.zcount_many(q))
        return None if out is None else np.asarray(out, np.int64)

    def room_entries(self, live_ids: Sequence[int], now: int) -> np.ndarray | None:
        """Entries (clicks) of each room in ``[now - popularity window, now)``."""
        w = self.features.spec.popularity_window_ms
        out = self._call(lambda: self.features.store.zcount_many([(entries_key(int(i)), now - w - 1, now - 1)
                                                                   for i in live_ids]))
        return None if out is None else np.asarray(out, np.int64)

    def live_rooms(self) -> list[LiveRoom] | None:
        """Every room the stream has seen start and not end (any start time)."""
        return self._call(lambda: self.features.live_rooms(now=2**62))

    def ping(self) -> bool:
        """Probe the store now (ignores the breaker); used by /readyz."""
        try:
            self.features.store.hget_many([])
            self.features.store.zcount("__ping__", 0, 1)
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.up = False
            return False
        self.up = True
        return True


__all__ = ["StoreReader", "UserState"]
