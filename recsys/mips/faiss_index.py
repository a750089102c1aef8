"""Exact MIPS on faiss: ``IndexFlatIP`` (brute force, no training) wrapped in ``IndexIDMap2`` for external ids."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from recsys.mips.base import MipsIndex


def faiss_has_gpu() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU (never true for ``faiss-cpu``)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissMipsIndex(MipsIndex):
    """Exact MIPS with ``faiss.IndexIDMap2(faiss.IndexFlatIP(dim))``.

    ``upsert`` of an id already present = ``remove_ids`` then ``add_with_ids``; ``remove`` =
    ``remove_ids(IDSelectorBatch)``. Note faiss's costs: ``IndexFlat.remove_ids`` compacts the whole code array and
    ``IndexIDMap2`` then rebuilds its id->row hash map, so every call that removes (or overwrites) anything costs
    ``O(n dim)`` whatever the number of ids (the torch backend's swap-with-last is ``O(removed dim)``).
    A Python set of the ids answers ``__contains__``/``ids()``; ``vectors_of`` reconstructs through the IDMap2.

    ``use_gpu=True`` (needs :func:`faiss_has_gpu`): the CPU index stays the source of truth; searches run on a copy of
    its flat index made with ``faiss.index_cpu_to_all_gpus``, re-made on the first search after a write (``O(n dim)``
    upload), and they take the lock exclusively (faiss GPU resources are not thread-safe). Thread safety otherwise as
    in :mod:`recsys.mips.base`: faiss CPU searches are const and run in parallel with each other.
    """

    def __init__(self, dim: int, use_gpu: bool = False) -> None:
        super().__init__(dim)
        if use_gpu and not faiss_has_gpu():
            raise RuntimeError("FaissMipsIndex(use_gpu=True) needs a faiss build with GPU support and a visible GPU "
                               "(this is faiss-cpu or no GPU is visible); use use_gpu=False or the torch backend "
                               "with device='cuda'")
        self.use_gpu = bool(use_gpu)
        self._exclusive_search = self.use_gpu
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self._present: set[int] = set()
        self._gpu_index: Any = None  # GPU copy of self._index.index, None when stale
        self._gpu_ids: np.ndarray | None = None  # row -> id of that copy

    # ------------------------------------------------------------------ primitives

    def _count(self) -> int:
        return len(self._present)

    def _contains_many(self, ids: np.ndarray) -> np.ndarray:
        present = self._present
        return np.fromiter((i in present for i in ids.tolist()), dtype=bool, count=ids.size)

    def _upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        old = self._contains_many(ids)
        if old.any():
            self._index.remove_ids(faiss.IDSelectorBatch(ids[old]))
        self._index.add_with_ids(vectors, ids)
        self._present.update(ids.tolist())
        self._gpu_index = self._gpu_ids = None

    def _remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(ids))
        self._present.difference_update(ids.tolist())
        self._gpu_index = self._gpu_ids = None

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.use_gpu:
            scores, ids = self._index.search(queries, k)
            return scores, ids
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_all_gpus(self._index.index)
            self._gpu_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        assert self._gpu_ids is not None
        scores, rows = self._gpu_index.search(queries, k)
        return scores, self._gpu_ids[rows]

    def _ids(self) -> np.ndarray:
        return np.fromiter(self._present, dtype=np.int64, count=len(self._present))

    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(ids)
