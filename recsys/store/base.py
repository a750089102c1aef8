"""The online feature store interface: a small set of sorted-set and hash primitives behind every backend.

All feature logic (what an event updates, how a window count is read) lives once in ``recsys.stream.features`` and
talks to this interface only; backends (in-memory, Redis) differ in storage, never in business logic. Every write
is idempotent: sorted-set members are event-derived ids, so applying the same event twice changes nothing.

Sorted-set order: by score, ties by member (bytewise), as in Redis.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence


class WriteBatch(ABC):
    """Writes collected and applied together by :meth:`execute` (a Redis pipeline, or direct for memory)."""

    @abstractmethod
    def zadd(self, key: str, members: Mapping[str, float]) -> None: ...

    @abstractmethod
    def zrem(self, key: str, member: str) -> None: ...

    @abstractmethod
    def zremrangebyscore_below(self, key: str, score: float) -> None:
        """Remove members with score < ``score``."""

    @abstractmethod
    def ztrim_to_last(self, key: str, n: int) -> None:
        """Keep only the ``n`` highest-ranked members."""

    @abstractmethod
    def hset(self, key: str, mapping: Mapping[str, str]) -> None: ...

    @abstractmethod
    def hdel(self, key: str, fields: Sequence[str]) -> None: ...

    @abstractmethod
    def expire(self, key: str, seconds: int) -> None:
        """Wall-clock time to live (no-op for backends that do not expire)."""

    @abstractmethod
    def execute(self) -> None: ...


class FeatureStore(ABC):
    """Reads and batched writes over sorted sets and hashes."""

    @abstractmethod
    def batch(self) -> WriteBatch: ...

    @abstractmethod
    def zcount(self, key: str, lo_exclusive: float, hi_inclusive: float) -> int:
        """Number of members with ``lo < score <= hi``."""

    @abstractmethod
    def zrange_tail(self, key: str, n: int) -> list[tuple[str, float]]:
        """The last ``n`` members in sorted order (ascending), with scores."""

    @abstractmethod
    def zrange_by_score(self, key: str, lo_inclusive: float, hi_inclusive: float) -> list[tuple[str, float]]:
        """Members with ``lo <= score <= hi`` in ascending order, with scores."""

    @abstractmethod
    def hgetall(self, key: str) -> dict[str, str]: ...

    @abstractmethod
    def hget_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """``hgetall`` for many keys in one round trip."""

    @abstractmethod
    def zcount_many(self, queries: Sequence[tuple[str, float, float]]) -> list[int]:
        """``zcount`` for many (key, lo_exclusive, hi_inclusive) in one round trip."""

    @abstractmethod
    def scan_keys(self, pattern: str) -> list[str]:
        """Keys matching a glob pattern (admin/tests; not for the request path)."""

    @abstractmethod
    def clear(self) -> None:
        """Delete every key of this store's namespace."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
