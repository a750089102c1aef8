"""Exact MIPS on torch: item vectors in one preallocated tensor, search = matmul + ``torch.topk``; CPU or CUDA."""

from __future__ import annotations

import threading

import numpy as np
import torch

from recsys.mips.base import MipsIndex

#: the largest score block (queries x rows) materialised at once, in elements (~256 MB of float32)
SCORE_BLOCK_ELEMS = 64 * 1024 * 1024
#: score blocks of at least this many elements are written into a per-thread buffer that is kept between searches
#: (CPU float32): a fresh 100+ MB array costs its page faults on every call (271 vs 310 ms median for 256 queries x
#: 452,621 x 64 on the 2-core dev machine, BENCHMARKS mips)
REUSE_BUFFER_ELEMS = 1024 * 1024


class TorchMipsIndex(MipsIndex):
    """Exact MIPS over a dense ``(capacity, dim)`` tensor on ``device``.

    Layout: rows ``[0, n)`` of ``self._vectors`` are the live items, ``self._slot_ids[s]`` is the id in row ``s`` and
    ``self._slot_of[id]`` its row. Capacity doubles when full (one ``O(n dim)`` copy, amortised ``O(dim)`` per add).
    ``remove`` moves the last live rows into the holes: ``O(removed dim)`` work, no rebuild, rows stay dense.

    ``search`` computes ``queries @ vectors[:n].T`` in blocks of at most ``chunk_rows`` rows and enough queries that
    a block holds at most :data:`SCORE_BLOCK_ELEMS` scores; each block is reduced with ``torch.topk`` and the
    per-block candidates (``k`` per block and query) are merged with a second ``topk``. Exact for ``dtype=float32``
    (float32 accumulation); a half-precision ``dtype`` halves memory and bandwidth but its scores are rounded.

    Thread safety: see :mod:`recsys.mips.base` (readers-writer lock; searches run in parallel with each other). On
    CUDA all work is queued on the calling thread's current stream; results are copied to the host before the lock
    is released, so a write never overlaps a search on the device.
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu", capacity: int = 1024,
                 dtype: torch.dtype = torch.float32, chunk_rows: int = 262_144) -> None:
        super().__init__(dim)
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk_rows = int(chunk_rows)
        self._vectors = torch.zeros((int(capacity), self.dim), dtype=dtype, device=self.device)
        self._slot_ids = np.zeros(int(capacity), dtype=np.int64)  # row -> id, valid in [0, n)
        self._slot_of: dict[int, int] = {}  # id -> row
        self._n = 0
        self._scratch = threading.local()  # per-thread reusable score buffer (see REUSE_BUFFER_ELEMS)

    @property
    def capacity(self) -> int:
        """Rows allocated (>= ``len(self)``)."""
        return int(self._vectors.shape[0])

    # ------------------------------------------------------------------ primitives

    def _count(self) -> int:
        return self._n

    def _contains_many(self, ids: np.ndarray) -> np.ndarray:
        slot_of = self._slot_of
        return np.fromiter((i in slot_of for i in ids.tolist()), dtype=bool, count=ids.size)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """int64 ``(n,)`` rows of present ``ids``."""
        slot_of = self._slot_of
        return np.fromiter((slot_of[i] for i in ids.tolist()), dtype=np.int64, count=ids.size)

    def _index(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rows).to(self.device)

    def _grow(self, needed: int) -> None:
        cap = self.capacity
        if needed <= cap:
            return
        new_cap = cap
        while new_cap < needed:
            new_cap *= 2
        vectors = torch.zeros((new_cap, self.dim), dtype=self.dtype, device=self.device)
        vectors[: self._n] = self._vectors[: self._n]
        slot_ids = np.zeros(new_cap, dtype=np.int64)
        slot_ids[: self._n] = self._slot_ids[: self._n]
        self._vectors, self._slot_ids = vectors, slot_ids

    def _upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        slot_of = self._slot_of
        rows = np.fromiter((slot_of.get(i, -1) for i in ids.tolist()), dtype=np.int64, count=ids.size)
        old = rows >= 0
        vecs = torch.from_numpy(vectors).to(device=self.device, dtype=self.dtype)
        if old.any():
            self._vectors[self._index(rows[old])] = vecs[torch.from_numpy(old).to(self.device)]
        new = ~old
        m = int(new.sum())
        if m:
            n = self._n
            self._grow(n + m)
            new_ids = ids[new]
            self._vectors[n: n + m] = vecs if m == ids.size else vecs[torch.from_numpy(new).to(self.device)]
            self._slot_ids[n: n + m] = new_ids
            slot_of.update(zip(new_ids.tolist(), range(n, n + m)))
            self._n = n + m

    def _remove(self, ids: np.ndarray) -> None:
        n = self._n
        new_n = n - ids.size
        gone = np.sort(self._rows(ids))
        holes = gone[gone < new_n]  # rows below the new end that must be refilled
        tail = np.arange(new_n, n, dtype=np.int64)
        movers = tail[~np.isin(tail, gone, assume_unique=True)]  # live rows past the new end; len == len(holes)
        for i in ids.tolist():
            del self._slot_of[i]
        if holes.size:
            # holes < new_n <= movers: source and destination rows are disjoint
            self._vectors[self._index(holes)] = self._vectors[self._index(movers)]
            moved_ids = self._slot_ids[movers]
            self._slot_ids[holes] = moved_ids
            self._slot_of.update(zip(moved_ids.tolist(), holes.tolist()))
        self._n = new_n

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self._n
        items = self._vectors[:n]
        q_all = torch.from_numpy(queries).to(device=self.device, dtype=self.dtype)
        rows_per_block = min(n, self.chunk_rows)
        q_per_block = max(1, SCORE_BLOCK_ELEMS // rows_per_block)
        out_scores, out_rows = [], []
        with torch.inference_mode():
            for q0 in range(0, q_all.shape[0], q_per_block):
                q = q_all[q0: q0 + q_per_block]
                cand_s, cand_r = [], []
                for r0 in range(0, n, rows_per_block):
                    block = self._scores(q, items[r0: r0 + rows_per_block])  # (qb, rb)
                    s, r = torch.topk(block, min(k, block.shape[1]), dim=1, sorted=False)
                    cand_s.append(s)
                    cand_r.append(r + r0)
                if len(cand_s) == 1:
                    s, r = cand_s[0], cand_r[0]
                else:  # merge the per-block candidates
                    s_all, r_all = torch.cat(cand_s, dim=1), torch.cat(cand_r, dim=1)
                    s, pos = torch.topk(s_all, k, dim=1, sorted=False)
                    r = torch.gather(r_all, 1, pos)
                out_scores.append(s.float())
                out_rows.append(r)
            scores = torch.cat(out_scores).cpu().numpy()
            rows = torch.cat(out_rows).cpu().numpy()
        return scores, self._slot_ids[rows]

    def _scores(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``q @ items.T``. On CPU in float32 the product goes through numpy's BLAS, which is multi-threaded for the
        batch-1 matrix-vector case where torch's CPU kernel runs on one core (2.1 vs 4.8 ms for 452,621 x 64 on the
        2-core dev machine); the result is bit-for-bit a float32 inner product either way, so search stays exact.
        Large blocks are written into the calling thread's scratch buffer: the returned tensor is valid until the
        thread's next call (``_search`` reduces each block with ``topk`` before computing the next)."""
        if self.device.type == "cpu" and self.dtype == torch.float32:
            shape = (q.shape[0], items.shape[0])
            size = shape[0] * shape[1]
            if size < REUSE_BUFFER_ELEMS:
                return torch.from_numpy(np.matmul(q.numpy(), items.numpy().T))
            buf = getattr(self._scratch, "buf", None)
            if buf is None or buf.size < size:
                buf = self._scratch.buf = np.empty(size, dtype=np.float32)
            out = buf[:size].reshape(shape)
            np.matmul(q.numpy(), items.numpy().T, out=out)
            return torch.from_numpy(out)
        return q @ items.T

    def _ids(self) -> np.ndarray:
        return self._slot_ids[: self._n].copy()

    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return self._vectors[self._index(self._rows(ids))].float().cpu().numpy()
