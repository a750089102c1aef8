"""Redis feature store: pipelined writes (one round trip per batch), TTLs on per-entity keys, a key namespace."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from recsys.services import connect_redis
from recsys.store.base import FeatureStore, WriteBatch


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _RedisBatch(WriteBatch):
    def __init__(self, store: "RedisStore") -> None:
        self.ns = store.namespace
        self.pipe = store.client.pipeline(transaction=False)
        self.n = 0

    def zadd(self, key: str, members: Mapping[str, float]) -> None:
        self.pipe.zadd(self.ns + key, dict(members))
        self.n += 1

    def zrem(self, key: str, member: str) -> None:
        self.pipe.zrem(self.ns + key, member)
        self.n += 1

    def zremrangebyscore_below(self, key: str, score: float) -> None:
        self.pipe.zremrangebyscore(self.ns + key, "-inf", f"({score}")
        self.n += 1

    def ztrim_to_last(self, key: str, n: int) -> None:
        self.pipe.zremrangebyrank(self.ns + key, 0, -(n + 1))
        self.n += 1

    def hset(self, key: str, mapping: Mapping[str, str]) -> None:
        self.pipe.hset(self.ns + key, mapping={k: str(v) for k, v in mapping.items()})
        self.n += 1

    def hdel(self, key: str, fields: Sequence[str]) -> None:
        if fields:
            self.pipe.hdel(self.ns + key, *fields)
            self.n += 1

    def expire(self, key: str, seconds: int) -> None:
        self.pipe.expire(self.ns + key, seconds)
        self.n += 1

    def execute(self) -> None:
        if self.n:
            self.pipe.execute()
        self.pipe.reset()
        self.n = 0


class RedisStore(FeatureStore):
    """Feature store on Redis. ``namespace`` prefixes every key (several stores can share one Redis db)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", namespace: str = "rs:", timeout_s: float = 2.0,
                 client: redis.Redis | None = None) -> None:
        self.url = url
        self.namespace = namespace
        self.client = client if client is not None else connect_redis(url, timeout_s=timeout_s)

    def batch(self) -> WriteBatch:
        return _RedisBatch(self)

    def zcount(self, key: str, lo_exclusive: float, hi_inclusive: float) -> int:
        return int(self.client.zcount(self.namespace + key, f"({lo_exclusive}", hi_inclusive))

    def zrange_tail(self, key: str, n: int) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        rows = self.client.zrange(self.namespace + key, -n, -1, withscores=True)
        return [(_s(m), float(s)) for m, s in rows]

    def zrange_by_score(self, key: str, lo_inclusive: float, hi_inclusive: float) -> list[tuple[str, float]]:
        rows = self.client.zrangebyscore(self.namespace + key, lo_inclusive, hi_inclusive, withscores=True)
        return [(_s(m), float(s)) for m, s in rows]

    def hgetall(self, key: str) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in self.client.hgetall(self.namespace + key).items()}

    def hget_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(self.namespace + k)
        return [{_s(a): _s(b) for a, b in row.items()} for row in pipe.execute()]

    def zcount_many(self, queries: Sequence[tuple[str, float, float]]) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for key, lo, hi in queries:
            pipe.zcount(self.namespace + key, f"({lo}", hi)
        return [int(x) for x in pipe.execute()]

    def scan_keys(self, pattern: str) -> list[str]:
        n = len(self.namespace)
        return sorted(_s(k)[n:] for k in self.client.scan_iter(match=self.namespace + pattern, count=1000))

    def clear(self) -> None:
        keys = list(self.client.scan_iter(match=self.namespace + "*", count=1000))
        for i in range(0, len(keys), 1000):
            self.client.delete(*keys[i: i + 1000])

    def close(self) -> None:
        self.client.close()
