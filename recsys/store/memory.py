"""In-memory feature store: the embedded default, same semantics as the Redis backend (no wall-clock expiry)."""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Mapping, Sequence

from recsys.store.base import FeatureStore, WriteBatch


class _ZSet:
    """Sorted set: member -> score plus a list of (score, member) kept sorted."""

    __slots__ = ("scores", "items")

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}
        self.items: list[tuple[float, str]] = []

    def add(self, member: str, score: float) -> None:
        old = self.scores.get(member)
        if old == score:
            return
        if old is not None:
            self.items.pop(bisect.bisect_left(self.items, (old, member)))
        self.scores[member] = score
        bisect.insort(self.items, (score, member))

    def remove(self, member: str) -> None:
        old = self.scores.pop(member, None)
        if old is not None:
            self.items.pop(bisect.bisect_left(self.items, (old, member)))

    def remove_below(self, score: float) -> None:
        cut = bisect.bisect_left(self.items, (score, ""))
        for _, m in self.items[:cut]:
            del self.scores[m]
        del self.items[:cut]

    def trim_to_last(self, n: int) -> None:
        if len(self.items) > n:
            cut = len(self.items) - n
            for _, m in self.items[:cut]:
                del self.scores[m]
            del self.items[:cut]


class _MemoryBatch(WriteBatch):
    def __init__(self, store: "InMemoryStore") -> None:
        self.store = store
        self.ops: list[tuple] = []

    def zadd(self, key: str, members: Mapping[str, float]) -> None:
        self.ops.append(("zadd", key, dict(members)))

    def zrem(self, key: str, member: str) -> None:
        self.ops.append(("zrem", key, member))

    def zremrangebyscore_below(self, key: str, score: float) -> None:
        self.ops.append(("zbelow", key, score))

    def ztrim_to_last(self, key: str, n: int) -> None:
        self.ops.append(("ztrim", key, n))

    def hset(self, key: str, mapping: Mapping[str, str]) -> None:
        self.ops.append(("hset", key, dict(mapping)))

    def hdel(self, key: str, fields: Sequence[str]) -> None:
        self.ops.append(("hdel", key, list(fields)))

    def expire(self, key: str, seconds: int) -> None:
        pass  # the embedded store keeps everything for the life of the process

    def execute(self) -> None:
        z, h = self.store.zsets, self.store.hashes
        for op, key, arg in self.ops:
            if op == "zadd":
                zs = z.setdefault(key, _ZSet())
                for member, score in arg.items():
                    zs.add(member, float(score))
            elif op == "hset":
                h.setdefault(key, {}).update({k: str(v) for k, v in arg.items()})
            elif op == "hdel":
                fields = h.get(key, {})
                for f in arg:
                    fields.pop(f, None)
                if key in h and not fields:
                    del h[key]
            elif key in z:
                zs = z[key]
                if op == "zrem":
                    zs.remove(arg)
                elif op == "zbelow":
                    zs.remove_below(arg)
                else:
                    zs.trim_to_last(arg)
                if not zs.scores:
                    del z[key]
        self.ops.clear()


class InMemoryStore(FeatureStore):
    """Dict-backed store for one process (tests, quickstart, a laptop)."""

    def __init__(self) -> None:
        self.zsets: dict[str, _ZSet] = {}
        self.hashes: dict[str, dict[str, str]] = {}

    def batch(self) -> WriteBatch:
        return _MemoryBatch(self)

    def zcount(self, key: str, lo_exclusive: float, hi_inclusive: float) -> int:
        zs = self.zsets.get(key)
        if zs is None:
            return 0
        lo = bisect.bisect_right(zs.items, (lo_exclusive, "\U0010ffff"))
        hi = bisect.bisect_right(zs.items, (hi_inclusive, "\U0010ffff"))
        return max(0, hi - lo)

    def zrange_tail(self, key: str, n: int) -> list[tuple[str, float]]:
        zs = self.zsets.get(key)
        return [] if zs is None or n <= 0 else [(m, s) for s, m in zs.items[-n:]]

    def zrange_by_score(self, key: str, lo_inclusive: float, hi_inclusive: float) -> list[tuple[str, float]]:
        zs = self.zsets.get(key)
        if zs is None:
            return []
        lo = bisect.bisect_left(zs.items, (lo_inclusive, ""))
        hi = bisect.bisect_right(zs.items, (hi_inclusive, "\U0010ffff"))
        return [(m, s) for s, m in zs.items[lo:hi]]

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    def hget_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        return [self.hgetall(k) for k in keys]

    def zcount_many(self, queries: Sequence[tuple[str, float, float]]) -> list[int]:
        return [self.zcount(*q) for q in queries]

    def scan_keys(self, pattern: str) -> list[str]:
        return sorted(k for k in (*self.zsets, *self.hashes) if fnmatch.fnmatchcase(k, pattern))

    def clear(self) -> None:
        self.zsets.clear()
        self.hashes.clear()
