"""Benchmark of exact MIPS over the live items: torch matmul+topk vs faiss ``IndexFlatIP`` vs approximate HNSW.

``bench_mips(scale)`` returns ``(device_type, metrics)`` like the other benchmarks of ``recsys bench``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch

from recsys.mips import FaissMipsIndex, MipsIndex, TorchMipsIndex, faiss_has_gpu

if TYPE_CHECKING:
    from recsys.config import PlatformConfig

log = logging.getLogger(__name__)

N_ITEMS = 452_621  # items in the live pool
N_ITEMS_TINY = 20_000
BATCHES = (1, 256)
REL_TIE_TOL = 1e-5  # float32 vs float64 scores closer than this (relative) count as ties for the exact recalls
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40


#: timed calls per backend between switches in :func:`_latency_ms`
LATENCY_BLOCK = 50


def _latency_ms(searches: dict[str, Callable[[np.ndarray], object]], batches: list[np.ndarray], warmup: int,
                repeats: int, block: int = LATENCY_BLOCK) -> dict[str, np.ndarray]:
    """Wall-clock ms of ``repeats`` calls of each search, cycling over ``batches``.

    The backends are **interleaved in blocks**: each takes ``block`` timed calls in turn (every one of them on the
    same queries), the order rotating from round to round, so that a burst of load on the shared machine hits every
    backend alike instead of whichever was measuring at the time. Each block starts with ``warmup`` untimed calls:
    torch and faiss bring their own OpenMP thread pools, whose threads spin for a while after a parallel region, and a
    call right after a switch competes with the other library's spinning threads (measured: interleaving call by
    call tripled faiss's median here), which no single-backend deployment sees."""
    names = list(searches)
    out = {name: np.empty(repeats) for name in names}
    for r, lo in enumerate(range(0, repeats, block)):
        hi = min(lo + block, repeats)
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            search = searches[name]
            for i in range(warmup):
                search(batches[(lo + i) % len(batches)])
            for i in range(lo, hi):
                q = batches[i % len(batches)]
                t0 = time.perf_counter()
                search(q)
                out[name][i] = (time.perf_counter() - t0) * 1e3
    return out


def _reference_scores(items: np.ndarray, queries: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """float64 ``(n, q)`` scores of ``items`` ``(n, d)`` against ``queries`` ``(q, d)``, in row chunks."""
    q64 = queries.astype(np.float64)
    out = np.empty((items.shape[0], queries.shape[0]))
    for r0 in range(0, items.shape[0], chunk):
        out[r0: r0 + chunk] = items[r0: r0 + chunk].astype(np.float64) @ q64.T
    return out


def _recall_vs_reference(found: np.ndarray, ref: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of ``found`` ``(q, k)`` (ids = rows of ``ref`` ``(n, q)``) in the true top-k.

    "Up to ties": a returned item counts when its float64 score is within ``REL_TIE_TOL`` (relative) of the float64
    k-th score, so a float32 rounding that swaps two near-equal items at the boundary is not a miss.
    """
    recalls = []
    for j in range(found.shape[0]):
        col = ref[:, j]
        kth = -np.partition(-col, k - 1)[k - 1]
        ids = np.unique(found[j][found[j] >= 0])
        recalls.append(float((col[ids] >= kth - REL_TIE_TOL * (1.0 + abs(kth))).sum()) / k)
    return float(np.mean(recalls))


def _overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of ``|found_i ∩ truth_i| / k`` for ``(q, k)`` id arrays."""
    k = truth.shape[1]
    return float(np.mean([np.intersect1d(f, t).size / k for f, t in zip(found, truth)]))


def _update_ms(index: MipsIndex, rng: np.random.Generator, m: int, reps: int, first_new_id: int) -> float:
    """Mean ms of one ``upsert`` of ``m`` new items + one ``remove`` of ``m`` present items (random, chosen untimed).

    One untimed warm-up round first (e.g. the torch backend's capacity doubling). The index size is unchanged.
    """
    live = index.ids()
    next_id = first_new_id
    times = []
    for r in range(reps + 1):
        new_ids = np.arange(next_id, next_id + m, dtype=np.int64)
        next_id += m
        new_vecs = rng.standard_normal((m, index.dim), dtype=np.float32)
        victims = rng.choice(live, m, replace=False)
        t0 = time.perf_counter()
        index.upsert(new_ids, new_vecs)
        removed = index.remove(victims)
        dt = (time.perf_counter() - t0) * 1e3
        assert removed == m, (removed, m)
        live = np.concatenate([np.setdiff1d(live, victims, assume_unique=True), new_ids])
        if r:
            times.append(dt)
    return float(np.mean(times))


def bench_mips(scale: str, cfg: PlatformConfig | None = None, seed: int = 0, n_items: int | None = None,
               dims: tuple[int, ...] = (64, 128), k: int = 500,
               repeats: int | None = None) -> tuple[str, dict[str, float]]:
    """Latency, recall and update cost of top-``k`` MIPS over ``n_items`` random Gaussian item vectors.

    Backends: ``exact`` = :class:`TorchMipsIndex` (CUDA when torch sees one), ``flat_ip`` = :class:`FaissMipsIndex`
    (GPU when the faiss build has one), ``hnsw`` = ``faiss.IndexHNSWFlat(d, 32, METRIC_INNER_PRODUCT)``
    (``efConstruction=40``, ``efSearch=max(2k, 512)``, always CPU: faiss has no GPU HNSW), built on the full set.
    Torch and faiss keep their default thread counts (all cores).

    ``n_items`` defaults to 452,621 (the issue's live pool) at every scale but ``"tiny"`` (20,000). For each dim of
    ``dims`` and batch size b in (1, 256): p50/p99 ms of one ``search`` call over ``repeats`` timed calls (default
    1,000 for b=1 and 20 for b=256; 50 and 5 at tiny), the backends interleaved in blocks of 50 calls, each block
    after a few warm-ups (:func:`_latency_ms`); b=1 cycles over 256 different queries.

    Metrics (``cfg`` is accepted for the ``recsys bench`` signature and unused): ``{exact,flat_ip,hnsw}.p50_ms``,
    ``.p99_ms`` (b=1) and ``.p50_ms_b256``, ``.p99_ms_b256``; ``{exact,flat_ip,hnsw}.build_s``;
    ``exact.recall``/``flat_ip.recall`` (20 queries vs a float64 numpy brute force, up to float32 ties: 1.0 means
    exact); ``hnsw.recall`` (100 queries, ``|hnsw top-k ∩ exact top-k| / k``); ``{exact,flat_ip}.update_ms`` (one
    upsert of 1,000 new items + one remove of 1,000 present ones, mean of 10 rounds); ``n_items``, ``k``,
    ``exact_vs_flat_ip.p99_ratio`` (b=1, first dim). Keys of the first dim are unsuffixed, other dims add ``_d{dim}``
    (e.g. ``exact.p99_ms_b256_d128``).
    """
    del cfg
    tiny = scale == "tiny"
    n = int(n_items if n_items is not None else (N_ITEMS_TINY if tiny else N_ITEMS))
    if n < 1 or k < 1:
        raise ValueError(f"need n_items >= 1 and k >= 1, got n_items={n}, k={k}")
    kk = min(k, n)
    reps = {1: repeats or (50 if tiny else 1000), 256: repeats or (5 if tiny else 20)}
    warmup = {1: 5, 256: 2}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    faiss_gpu = faiss_has_gpu()
    log.info("bench_mips scale=%s n=%d k=%d dims=%s torch=%s (%d threads) faiss=%s (%d omp threads)", scale, n, k,
             dims, device, torch.get_num_threads(), "gpu" if faiss_gpu else "cpu", faiss.omp_get_max_threads())
    m: dict[str, float] = {"n_items": float(n), "k": float(k)}
    for di, d in enumerate(dims):
        sfx = "" if di == 0 else f"_d{d}"
        rng = np.random.default_rng([seed, d])
        items = rng.standard_normal((n, d), dtype=np.float32)
        ids = np.arange(n, dtype=np.int64)
        lat_queries = rng.standard_normal((256, d), dtype=np.float32)
        recall_queries = rng.standard_normal((100, d), dtype=np.float32)
        batches = {1: [lat_queries[i: i + 1] for i in range(256)], 256: [lat_queries]}

        t0 = time.perf_counter()
        exact: MipsIndex = TorchMipsIndex(d, device=device)
        exact.upsert(ids, items)
        m[f"exact.build_s{sfx}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        flat: MipsIndex = FaissMipsIndex(d, use_gpu=faiss_gpu)
        flat.upsert(ids, items)
        m[f"flat_ip.build_s{sfx}"] = time.perf_counter() - t0
        log.info("d=%d: exact and flat_ip built (%.2fs, %.2fs)", d, m[f"exact.build_s{sfx}"],
                 m[f"flat_ip.build_s{sfx}"])

        ref = _reference_scores(items, recall_queries[:20])
        m[f"exact.recall{sfx}"] = _recall_vs_reference(exact.search(recall_queries[:20], k)[1], ref, kk)
        m[f"flat_ip.recall{sfx}"] = _recall_vs_reference(flat.search(recall_queries[:20], k)[1], ref, kk)
        exact_top = exact.search(recall_queries, k)[1]
        del ref

        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.add(items)
        hnsw.hnsw.efSearch = max(2 * k, 512)
        m[f"hnsw.build_s{sfx}"] = time.perf_counter() - t0
        log.info("d=%d: hnsw built in %.1fs", d, m[f"hnsw.build_s{sfx}"])
        m[f"hnsw.recall{sfx}"] = _overlap(hnsw.search(recall_queries, kk)[1], exact_top)

        searches: dict[str, Callable[[np.ndarray], object]] = {
            "exact": partial(exact.search, k=k),
            "flat_ip": partial(flat.search, k=k),
            "hnsw": partial(hnsw.search, k=kk),
        }
        for b in BATCHES:
            bsfx = ("" if b == 1 else f"_b{b}") + sfx
            latencies = _latency_ms(searches, batches[b], warmup[b], reps[b])
            for name, lat in latencies.items():
                m[f"{name}.p50_ms{bsfx}"] = float(np.percentile(lat, 50))
                m[f"{name}.p99_ms{bsfx}"] = float(np.percentile(lat, 99))
                log.info("d=%d b=%d %s: p50 %.2f ms, p99 %.2f ms", d, b, name, m[f"{name}.p50_ms{bsfx}"],
                         m[f"{name}.p99_ms{bsfx}"])
        del hnsw, searches

        upd = min(1000, n)
        for name, index in (("exact", exact), ("flat_ip", flat)):
            m[f"{name}.update_ms{sfx}"] = _update_ms(index, rng, upd, 10, first_new_id=n)
            log.info("d=%d %s: update %.2f ms", d, name, m[f"{name}.update_ms{sfx}"])
        del exact, flat, items
    m["exact_vs_flat_ip.p99_ratio"] = m["exact.p99_ms"] / m["flat_ip.p99_ms"]
    return device, m
