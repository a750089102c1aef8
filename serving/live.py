"""The rooms live now and the exact MIPS index over their item vectors, kept current incrementally.

The stream workers keep the live-room set in the feature store (a room's start adds it, its end removes it); the
service reads that set every ``live_sync_s`` and applies the difference to the index: items whose first room started
are embedded and upserted, items whose last room ended are removed. No rebuild, and searches run concurrently with
syncs (the index's readers-writer lock). At streamer granularity an item is a streamer and stays in the index while
one of its rooms is live; at room granularity an item is a room of the retriever's catalogue (a room it never saw has
no vector and is served only by the popularity fallback).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.retrieval.export import LoadedRetriever
from recsys.mips import faiss_has_gpu, make_index
from recsys.stream.features import LiveRoom


@dataclass(frozen=True)
class SyncStats:
    live_rooms: int
    added: int
    removed: int
    unindexed_rooms: int  # live rooms whose item has no vector in the retriever


def _started_by(rooms: Sequence[LiveRoom], now: int) -> LiveRoom | None:
    """The first room of ``rooms`` (latest start first) that had started by ``now``."""
    for room in rooms:
        if room.start <= now:
            return room
    return None


class LiveCatalog:
    """Live rooms by item row and the MIPS index of those items (see the module docstring)."""

    def __init__(self, retriever: LoadedRetriever, backend: str = "torch", device: torch.device | str = "cpu") -> None:
        self.retriever = retriever
        self.granularity = retriever.catalog.granularity
        self.device = torch.device(device)
        with torch.no_grad():
            dim = int(retriever.model.item_vectors(torch.ones(1, dtype=torch.long, device=self.device)).shape[-1])
        # the index lives on the models' device: CUDA MIPS (torch, or faiss with a GPU build) when there is a GPU
        device_kind = "cuda" if self.device.type == "cuda" else "cpu"
        if backend == "faiss" and device_kind == "cuda" and not faiss_has_gpu():
            device_kind = "cpu"
        self.index = make_index(backend, dim, device=str(self.device) if backend == "torch" else device_kind)
        self.rooms: dict[int, LiveRoom] = {}  # live_id -> room
        self._item_rooms: dict[int, list[LiveRoom]] = {}  # item row -> its live rooms, latest start first
        self.popularity: dict[int, int] = {}  # live_id -> recent entries at the last sync (for the fallback)
        self.latest_start: int | None = None  # the stream's event time as the live set shows it
        self._sync_lock = threading.Lock()

    def item_rows(self, rooms: Sequence[LiveRoom]) -> np.ndarray:
        raw = [r.streamer_id if self.granularity == "streamer" else r.live_id for r in rooms]
        return self.retriever.catalog.rows(np.asarray(raw, np.int64))

    @torch.no_grad()
    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return self.retriever.model.item_vectors(t).float().cpu().numpy()

    def sync(self, rooms: Sequence[LiveRoom], popularity: dict[int, int] | None = None) -> SyncStats:
        """Make the index hold exactly the items of ``rooms`` (the live set read from the store)."""
        with self._sync_lock:
            rows = self.item_rows(rooms)
            by_item: dict[int, list[LiveRoom]] = {}
            for room, row in zip(rooms, rows.tolist()):
                if row > 0:
                    by_item.setdefault(row, []).append(room)
            for lst in by_item.values():
                lst.sort(key=lambda r: (-r.start, r.live_id))
            new, old = set(by_item), set(self._item_rooms)
            add = np.array(sorted(new - old), np.int64)
            gone = np.array(sorted(old - new), np.int64)
            if add.size:
                self.index.upsert(add, self._vectors(add))
            # publish the new room map before removing: a search that still sees a removed item finds no room for
            # it and drops it
            self._item_rooms = by_item
            self.rooms = {r.live_id: r for r in rooms}
            self.latest_start = max((r.start for r in rooms), default=None)
            if popularity is not None:
                self.popularity = popularity
            if gone.size:
                self.index.remove(gone)
            return SyncStats(len(rooms), int(add.size), int(gone.size), int(np.count_nonzero(rows == 0)))

    def room_of(self, item_row: int, now: int) -> LiveRoom | None:
        """The item's most recently started room that had started by ``now``."""
        return _started_by(self._item_rooms.get(int(item_row), ()), now)

    def search(self, user_vectors: np.ndarray, k: int, nows: list[int]
               ) -> list[tuple[np.ndarray, np.ndarray, list[LiveRoom]]]:
        """Top-``k`` live items by inner product for each row of ``user_vectors`` ``(B, d)`` (one batched search):
        per row the item rows, scores and rooms, dropping items with no room started by that row's time."""
        n = len(self.index)
        if n == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32), []) for _ in nows]
        scores, ids = self.index.search(np.asarray(user_vectors, np.float32), min(k, n))
        item_rooms = self._item_rooms  # one snapshot for the whole batch (a sync replaces the dict, never edits it)
        out = []
        for row_ids, row_scores, now in zip(ids, scores, nows):
            keep, rooms = [], []
            for j, item in enumerate(row_ids.tolist()):
                room = _started_by(item_rooms.get(item, ()), now)
                if room is not None:
                    keep.append(j)
                    rooms.append(room)
            out.append((row_ids[keep], row_scores[keep], rooms))
        return out

    def popular(self, k: int, now: int) -> list[LiveRoom]:
        """The fallback: live rooms started by ``now`` by recent entries (then most recent start)."""
        rooms = [r for r in self.rooms.values() if r.start <= now]
        rooms.sort(key=lambda r: (-self.popularity.get(r.live_id, 0), -r.start, r.live_id))
        return rooms[:k]

    def __len__(self) -> int:
        return len(self.index)


__all__ = ["LiveCatalog", "SyncStats"]
