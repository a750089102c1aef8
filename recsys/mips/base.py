"""The exact maximum-inner-product-search (MIPS) contract shared by every backend.

:class:`MipsIndex` holds the item vectors of the rooms/streamers live *now* (``upsert`` on room start, ``remove`` on
room end) and answers exact top-k inner-product queries concurrently with those updates. It is "index-free": a brute
force ``queries @ items.T`` + top-k, no tree or graph to maintain, so updates are cheap and results exact.

The base class owns everything that must behave identically across backends: argument validation (with messages
that name the problem), the readers-writer locking, ``k' = min(k, len)``, the empty-index case and the
deterministic ``(-score, id)`` order of each result row. A backend implements the unlocked ``_`` primitives only.

Concurrency
-----------
Every public method is atomic with respect to every other. The scheme is a writer-preferring readers-writer lock:

* ``upsert``/``remove`` take it exclusively: one writer at a time, and no search runs while a write is applied;
* ``search`` and the read accessors take it shared: searches run in parallel with each other (torch and faiss
  release the GIL in their kernels), and each one sees the state before or after any single write call, never a
  half-applied one;
* a waiting writer blocks *new* searches, so a stream of searches cannot starve room starts/ends; the writer waits at
  most for the searches already in flight (one search latency), then applies its change in place (no copy).

A lock-free snapshot (compute outside the lock on references grabbed under it) was not chosen: the torch backend
fills holes in place (swap-with-last), so a snapshot would need a full copy of the item matrix on every write that
overlaps a search, and faiss's ``add`` may reallocate the very buffer a concurrent search is reading (undefined
behaviour, not just a torn read). Waiting one search is far cheaper than either.
"""

from __future__ import annotations

import numbers
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

_INT64_MAX = np.iinfo(np.int64).max


class _ReadWriteLock:
    """Writer-preferring readers-writer lock (not reentrant: never nest ``read()`` inside ``read()``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def as_ids(ids: Any, name: str = "ids") -> np.ndarray:
    """``ids`` as a 1-D int64 array; ``ValueError`` unless it is a 1-D array (or sequence) of integers."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and int(arr.max()) > _INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {int(arr.max())}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_matrix(x: Any, dim: int, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(n, dim)`` array of finite values, or ``ValueError`` naming the problem."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {arr.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, rejected below
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} must be finite (no NaN/inf, also after the cast to float32): "
                         f"row {int(bad[0])} column {int(bad[1])} is {arr[bad[0], bad[1]]}")
    return arr


def sort_rows(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row of ``(q, k)`` results by descending score, ties by ascending id."""
    if scores.size == 0:
        return scores, ids
    order = np.lexsort((ids, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


class MipsIndex(ABC):
    """Exact top-k inner-product search over a mutable set of ``(id, vector)`` items. See the module docstring.

    Ids are int64 (any value), vectors float32 ``(dim,)``. Results are exact; within a row they are sorted by
    descending score, then ascending id. When an exact tie straddles the k-th position, *which* of the tied items
    make it into the result is backend-dependent (top-k selection is not stable), but the returned scores are exact.
    """

    def __init__(self, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._dim = int(dim)
        self._rw = _ReadWriteLock()

    # ------------------------------------------------------------------ public API

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    def upsert(self, ids: Any, vectors: Any) -> None:
        """Add the items ``ids`` ``(n,)`` int with ``vectors`` ``(n, dim)``; an id already present gets the new vector.

        ``ValueError`` (nothing applied) on non-integer or non-1-D ids, a wrong vector shape, NaN/inf, or an id
        repeated inside the call.
        """
        ids_ = as_ids(ids)
        vecs = as_matrix(vectors, self._dim, "vectors")
        if vecs.shape[0] != ids_.shape[0]:
            raise ValueError(f"vectors must have one row per id: {ids_.shape[0]} ids, {vecs.shape[0]} rows")
        if ids_.size == 0:
            return
        uniq, counts = np.unique(ids_, return_counts=True)
        if uniq.size != ids_.size:
            raise ValueError(f"duplicate ids in one upsert call: {uniq[counts > 1][:10].tolist()}")
        with self._rw.write():
            self._upsert(ids_, vecs)

    def remove(self, ids: Any) -> int:
        """Remove the ``ids`` ``(n,)`` that are present (absent ones are ignored); returns how many were removed."""
        ids_ = np.unique(as_ids(ids))
        if ids_.size == 0:
            return 0
        with self._rw.write():
            present = ids_[self._contains_many(ids_)]
            if present.size:
                self._remove(present)
            return int(present.size)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by inner product.

        ``queries``: ``(q, dim)`` or ``(dim,)`` (treated as ``q = 1``). Returns ``(scores, ids)``, float32 and int64
        ``(q, k')`` with ``k' = min(k, len(self))`` (``(q, 0)`` on an empty index); each row by descending score,
        ties by ascending id. ``ValueError`` if ``k <= 0`` or the queries have a wrong shape or NaN/inf.
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"k must be an integer, got {k!r}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        q = as_matrix(q, self._dim, "queries")
        with self._rw.write() if self._exclusive_search else self._rw.read():
            n = self._count()
            if n == 0 or q.shape[0] == 0:
                return np.zeros((q.shape[0], 0), dtype=np.float32), np.zeros((q.shape[0], 0), dtype=np.int64)
            scores, ids = self._search(q, min(int(k), n))
        return sort_rows(np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def __len__(self) -> int:
        with self._rw.read():
            return self._count()

    def __contains__(self, item: object) -> bool:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            return False
        if not -_INT64_MAX - 1 <= int(item) <= _INT64_MAX:
            return False
        with self._rw.read():
            return bool(self._contains_many(np.array([int(item)], dtype=np.int64))[0])

    def ids(self) -> np.ndarray:
        """Sorted int64 ``(len,)`` array of the ids present."""
        with self._rw.read():
            return np.sort(self._ids())

    def vectors_of(self, ids: Any) -> np.ndarray:
        """float32 ``(n, dim)`` vectors of ``ids`` ``(n,)``, in that order; ``KeyError`` naming the first missing id."""
        ids_ = as_ids(ids)
        with self._rw.read():
            present = self._contains_many(ids_)
            if not present.all():
                raise KeyError(f"id {int(ids_[np.argmin(present)])} is not in the index")
            if ids_.size == 0:
                return np.zeros((0, self._dim), dtype=np.float32)
            return np.asarray(self._vectors_of(ids_), dtype=np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self._dim}, len={len(self)})"

    # ------------------------------------------------------------------ backend primitives (called under the lock)

    #: searches take the lock exclusively (e.g. a faiss GPU index, whose resources are not thread-safe)
    _exclusive_search: bool = False

    @abstractmethod
    def _count(self) -> int:
        """Number of items."""

    @abstractmethod
    def _contains_many(self, ids: np.ndarray) -> np.ndarray:
        """bool ``(n,)``: which of ``ids`` (int64 ``(n,)``) are present."""

    @abstractmethod
    def _upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Validated unique int64 ``ids`` ``(n,)``, float32 C-contiguous ``vectors`` ``(n, dim)``, ``n >= 1``."""

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> None:
        """Remove unique int64 ``ids`` ``(n,)``, all present, ``n >= 1``."""

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of float32 ``queries`` ``(q, dim)``, ``1 <= k <= count``: scores and ids ``(q, k)``, any order."""

    @abstractmethod
    def _ids(self) -> np.ndarray:
        """int64 ``(count,)`` ids present, any order."""

    @abstractmethod
    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """float32 ``(n, dim)`` vectors of present int64 ``ids`` ``(n,)``."""
