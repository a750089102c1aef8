"""Exact maximum-inner-product search over the items live now: one interface (:class:`MipsIndex`), two backends.

* ``"torch"``: :class:`TorchMipsIndex`, matmul + ``torch.topk`` on a dense tensor (CPU or CUDA), swap-with-last
  removal in ``O(removed)``.
* ``"faiss"``: :class:`FaissMipsIndex`, ``IndexIDMap2(IndexFlatIP)`` (GPU only with a faiss GPU build).

Both are exact and index-free (no tree/graph), safe for searches concurrent with updates (see :mod:`.base`).
"""

from __future__ import annotations

from recsys.mips.base import MipsIndex
from recsys.mips.faiss_index import FaissMipsIndex, faiss_has_gpu
from recsys.mips.torch_index import TorchMipsIndex

BACKENDS = ("torch", "faiss")

__all__ = ["BACKENDS", "FaissMipsIndex", "MipsIndex", "TorchMipsIndex", "faiss_has_gpu", "make_index"]


def make_index(backend: str, dim: int, device: str = "cpu", capacity: int = 1024) -> MipsIndex:
    """A new empty index of ``dim``-dimensional vectors.

    ``backend``: one of :data:`BACKENDS`. ``device``: ``"cpu"`` or a CUDA device (``"cuda"``, ``"cuda:1"``); for
    faiss any CUDA device means ``use_gpu=True`` (all GPUs). ``capacity``: initial rows of the torch backend (it
    grows by doubling); ignored by faiss.
    """
    if backend == "torch":
        return TorchMipsIndex(dim, device=device, capacity=capacity)
    if backend == "faiss":
        kind = device.split(":", 1)[0]
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
        return FaissMipsIndex(dim, use_gpu=kind == "cuda")
    raise ValueError(f"unknown MIPS backend {backend!r}; available: {', '.join(BACKENDS)}")
