"""recsys.mips: one suite run against every backend (exactness vs numpy, updates, validation, concurrency)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from pipelines.bench_mips import _latency_ms, bench_mips
from recsys.mips import BACKENDS, FaissMipsIndex, MipsIndex, TorchMipsIndex, faiss_has_gpu, make_index

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DIM = 16


@pytest.fixture(params=BACKENDS)
def new_index(request: pytest.FixtureRequest) -> Callable[..., MipsIndex]:
    """``new_index(dim=DIM)``: an empty index of the backend under test (small torch capacity, so it grows)."""
    return lambda dim=DIM: make_index(request.param, dim, capacity=8)


def brute_force(items: dict[int, np.ndarray], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: ``(q, min(k, n))`` scores and ids, by descending score then ascending id."""
    ids = np.array(sorted(items), dtype=np.int64)
    if ids.size == 0:
        return np.zeros((len(queries), 0)), np.zeros((len(queries), 0), dtype=np.int64)
    mat = np.stack([items[i] for i in ids]).astype(np.float64)
    scores = queries.astype(np.float64) @ mat.T
    kk = min(k, ids.size)
    out_s, out_i = [], []
    for row in scores:
        order = np.lexsort((ids, -row))[:kk]
        out_s.append(row[order])
        out_i.append(ids[order])
    return np.array(out_s), np.array(out_i)


def assert_matches(index: MipsIndex, items: dict[int, np.ndarray], queries: np.ndarray, k: int) -> None:
    scores, ids = index.search(queries, k)
    ref_s, ref_i = brute_force(items, queries, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (len(queries), min(k, len(items)))
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)


def random_items(rng: np.random.Generator, ids: np.ndarray, dim: int = DIM) -> dict[int, np.ndarray]:
    return {int(i): rng.standard_normal(dim).astype(np.float32) for i in ids}


def load(index: MipsIndex, items: dict[int, np.ndarray]) -> None:
    ids = np.array(list(items), dtype=np.int64)
    index.upsert(ids, np.stack([items[int(i)] for i in ids]))


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("k", [1, 10, 200, 500])
def test_search_equals_brute_force(new_index: Callable[..., MipsIndex], k: int) -> None:
    rng = np.random.default_rng(k)
    items = random_items(rng, rng.choice(10_000, 200, replace=False) - 3_000)  # some negative ids too
    index = new_index()
    load(index, items)
    assert len(index) == 200
    assert_matches(index, items, rng.standard_normal((7, DIM)).astype(np.float32), k)


def test_single_query_vector_and_query_dtypes(new_index: Callable[..., MipsIndex]) -> None:
    rng = np.random.default_rng(1)
    items = random_items(rng, np.arange(50))
    index = new_index()
    load(index, items)
    q = rng.standard_normal(DIM)  # float64, 1-D
    scores, ids = index.search(q, 5)
    assert scores.shape == ids.shape == (1, 5)
    np.testing.assert_array_equal(ids, brute_force(items, q[None, :], 5)[1])


def test_ties_are_ordered_by_id(new_index: Callable[..., MipsIndex]) -> None:
    index = new_index(dim=4)
    vec = np.array([1.0, 2.0, 0.0, 0.0], dtype=np.float32)
    index.upsert(np.array([50, 7, 31, 2]), np.stack([vec] * 4))
    index.upsert(np.array([40]), np.array([[5.0, 5.0, 0.0, 0.0]], dtype=np.float32))
    scores, ids = index.search(np.array([1.0, 1.0, 0.0, 0.0], dtype=np.float32), 10)
    assert ids.tolist() == [[40, 2, 7, 31, 50]]
    assert scores.tolist() == [[10.0, 3.0, 3.0, 3.0, 3.0]]


def test_upsert_overwrites(new_index: Callable[..., MipsIndex]) -> None:
    rng = np.random.default_rng(2)
    items = random_items(rng, np.arange(100))
    index = new_index()
    load(index, items)
    q = rng.standard_normal((1, DIM)).astype(np.float32)
    before = index.search(q, 1)[1][0, 0]
    target = 17 if before != 17 else 18
    items[target] = (10 * q[0]).astype(np.float32)
    index.upsert(np.array([target]), items[target][None, :])
    assert len(index) == 100
    assert index.search(q, 1)[1][0, 0] == target
    np.testing.assert_array_equal(index.vectors_of([target]), items[target][None, :])
    # overwrite and add in the same call
    items[target] = -items[target]
    items[1000] = rng.standard_normal(DIM).astype(np.float32)
    index.upsert(np.array([1000, target]), np.stack([items[1000], items[target]]))
    assert len(index) == 101
    assert_matches(index, items, rng.standard_normal((5, DIM)).astype(np.float32), 30)


def test_incremental_updates_equal_a_rebuild(new_index: Callable[..., MipsIndex]) -> None:
    rng = np.random.default_rng(3)
    index = new_index()
    state: dict[int, np.ndarray] = {}
    for step in range(20):
        if step % 3 == 2 and state:
            ids = rng.choice(400, int(rng.integers(1, 80)), replace=False)  # present and absent ids
            expected = sum(int(i) in state for i in ids)
            assert index.remove(ids) == expected
            for i in ids:
                state.pop(int(i), None)
        else:
            ids = rng.choice(300, int(rng.integers(1, 60)), replace=False)  # new and existing ids
            vecs = rng.standard_normal((ids.size, DIM)).astype(np.float32)
            index.upsert(ids, vecs)
            state.update(zip(ids.tolist(), vecs))
        assert len(index) == len(state)
    assert len(state) > 50
    np.testing.assert_array_equal(index.ids(), np.array(sorted(state), dtype=np.int64))
    np.testing.assert_array_equal(index.vectors_of(index.ids()), np.stack([state[i] for i in sorted(state)]))
    fresh = new_index()
    load(fresh, state)
    queries = rng.standard_normal((10, DIM)).astype(np.float32)
    for k in (1, 25, len(state) + 5):
        got_s, got_i = index.search(queries, k)
        ref_s, ref_i = fresh.search(queries, k)
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_allclose(got_s, ref_s, rtol=1e-6, atol=1e-6)
        assert_matches(index, state, queries, k)


def test_removed_ids_are_never_returned(new_index: Callable[..., MipsIndex]) -> None:
    rng = np.random.default_rng(4)
    items = random_items(rng, np.arange(60))
    q = np.ones(DIM, dtype=np.float32)
    for i in range(10):  # the ten best items ...
        items[i] = (q * (10 + i)).astype(np.float32)
    index = new_index()
    load(index, items)
    assert index.remove(np.array([3, 9, 3, 0, 999])) == 3  # duplicates counted once, absent ignored
    for i in (3, 9, 0):
        del items[i]
    assert 3 not in index and 9 not in index and 4 in index and np.int64(4) in index
    assert "4" not in index and 4.0 not in index
    scores, ids = index.search(np.stack([q, -q]), 100)
    assert ids.shape == (2, 57)
    assert not set(ids.ravel().tolist()) & {0, 3, 9}
    assert_matches(index, items, np.stack([q, -q]), 100)
    assert index.remove([3, 9]) == 0
    assert index.remove(np.zeros(0, dtype=np.int64)) == 0


def test_empty_index(new_index: Callable[..., MipsIndex]) -> None:
    index = new_index()
    assert len(index) == 0 and index.ids().shape == (0,) and index.ids().dtype == np.int64
    scores, ids = index.search(np.zeros((3, DIM), dtype=np.float32), 5)
    assert scores.shape == ids.shape == (3, 0) and scores.dtype == np.float32 and ids.dtype == np.int64
    assert index.search(np.zeros(DIM), 5)[1].shape == (1, 0)
    assert index.remove([1, 2]) == 0
    index.upsert(np.arange(5), np.ones((5, DIM), dtype=np.float32))
    assert index.remove(np.arange(5)) == 5
    assert index.search(np.zeros((2, DIM)), 5)[0].shape == (2, 0)
    index.upsert(np.zeros(0, dtype=np.int64), np.zeros((0, DIM)))  # empty upsert is a no-op
    assert len(index) == 0
    assert index.vectors_of([]).shape == (0, DIM)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("ids", "vectors", "match"), [
    (np.arange(3), np.zeros((3, DIM + 1)), r"shape \(n, 16\)"),
    (np.arange(3), np.zeros(DIM), r"shape \(n, 16\)"),
    (np.arange(3), np.zeros((2, DIM)), "one row per id"),
    (np.arange(3), np.array([[0.0] * DIM, [np.nan] * DIM, [0.0] * DIM]), "finite.*row 1"),
    (np.arange(3), np.full((3, DIM), np.inf), "finite"),
    (np.arange(3), np.full((3, DIM), 1e300), "finite"),  # overflows float32
    (np.array([4, 5, 4]), np.zeros((3, DIM)), r"duplicate ids.*\[4\]"),
    (np.array([1.0, 2.0, 3.0]), np.zeros((3, DIM)), "ids must be integers"),
    (np.arange(3)[None, :], np.zeros((3, DIM)), "ids must be 1-D"),
    (np.arange(3), np.array([["a"] * DIM] * 3), "real numbers"),
])
def test_upsert_validation(new_index: Callable[..., MipsIndex], ids: np.ndarray, vectors: np.ndarray,
                           match: str) -> None:
    index = new_index()
    index.upsert(np.array([100]), np.ones((1, DIM)))
    with pytest.raises(ValueError, match=match):
        index.upsert(ids, vectors)
    assert index.ids().tolist() == [100]  # nothing applied


def test_search_validation(new_index: Callable[..., MipsIndex]) -> None:
    index = new_index()
    index.upsert(np.arange(4), np.ones((4, DIM)))
    q = np.ones((2, DIM), dtype=np.float32)
    for k in (0, -3):
        with pytest.raises(ValueError, match="k must be positive"):
            index.search(q, k)
    with pytest.raises(ValueError, match="k must be an integer"):
        index.search(q, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"queries must have shape \(n, 16\)"):
        index.search(np.ones((2, DIM - 1)), 2)
    with pytest.raises(ValueError, match="queries must be finite"):
        index.search(np.full(DIM, np.nan), 2)
    with pytest.raises(ValueError, match="ids must be 1-D"):
        index.remove(np.ones((2, 2), dtype=np.int64))


def test_vectors_of_names_the_missing_id(new_index: Callable[..., MipsIndex]) -> None:
    index = new_index()
    vecs = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)
    index.upsert(np.array([10, 11, 12]), vecs)
    np.testing.assert_array_equal(index.vectors_of(np.array([12, 10])), vecs[[2, 0]])
    with pytest.raises(KeyError, match="id 7 "):
        index.vectors_of([10, 7, 8])


def test_make_index_and_constructor_errors() -> None:
    assert isinstance(make_index("torch", 4), TorchMipsIndex)
    assert isinstance(make_index("faiss", 4), FaissMipsIndex)
    with pytest.raises(ValueError, match="unknown MIPS backend 'annoy'"):
        make_index("annoy", 4)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        make_index("torch", 0)
    if faiss_has_gpu():
        assert FaissMipsIndex(4, use_gpu=True).use_gpu
    else:
        with pytest.raises(RuntimeError, match="GPU support"):
            make_index("faiss", 4, device="cuda")


def test_torch_capacity_grows_and_rows_stay_dense() -> None:
    rng = np.random.default_rng(5)
    index = TorchMipsIndex(DIM, capacity=4, chunk_rows=16)  # several row chunks per search
    state: dict[int, np.ndarray] = {}
    for start in range(0, 99, 3):
        ids = np.arange(start, start + 3)
        vecs = rng.standard_normal((3, DIM)).astype(np.float32)
        index.upsert(ids, vecs)
        state.update(zip(ids.tolist(), vecs))
    assert len(index) == 99 and index.capacity == 128
    assert index.remove(np.arange(0, 99, 2)) == 50  # holes everywhere, filled from the tail
    for i in range(0, 99, 2):
        del state[i]
    assert index.capacity == 128 and len(index) == 49
    np.testing.assert_array_equal(np.sort(index._slot_ids[: len(index)]), np.array(sorted(state)))
    assert all(index._slot_ids[row] == i for i, row in index._slot_of.items())
    np.testing.assert_array_equal(index.vectors_of(sorted(state)), np.stack([state[i] for i in sorted(state)]))
    queries = rng.standard_normal((9, DIM)).astype(np.float32)
    for k in (1, 20, 49, 60):
        assert_matches(index, state, queries, k)


# --------------------------------------------------------------------------- concurrency


def test_torch_scratch_buffer_is_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large score blocks reuse a per-thread buffer: searches from several threads at once, each with its own
    queries and sizes (the buffer grows and shrinks in use), must each equal brute force. A buffer shared between
    threads would let one thread's matmul overwrite another's scores before its ``topk``."""
    import recsys.mips.torch_index as torch_index

    monkeypatch.setattr(torch_index, "REUSE_BUFFER_ELEMS", 1)  # every block goes through the scratch buffer
    rng = np.random.default_rng(8)
    index = TorchMipsIndex(DIM, chunk_rows=64)  # several row blocks per search
    items = random_items(rng, np.arange(300))
    load(index, items)
    errors: list[BaseException] = []

    def searcher(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            for i in range(30):
                queries = r.standard_normal((1 + (i + seed) % 7, DIM)).astype(np.float32)
                assert_matches(index, items, queries, 25)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_concurrent_searches_see_whole_writes(new_index: Callable[..., MipsIndex]) -> None:
    """A writer thread cycles through 4 writes while the main thread searches; every result must be one of the
    3 states between writes, never a mix (a torn snapshot shows a partial block, mixed versions, moved rows under
    the wrong id, or duplicates).

    Cycle: (a) upsert hot block (version v) + cold block in ONE call; (b) overwrite the hot block with version v+1;
    (c) remove the hot block (it sits before the cold rows, so the torch backend moves cold rows into its holes);
    (d) remove the cold block. Query = e0; hot score = 1000 + version, cold = 500, background < 10.
    """
    rng = np.random.default_rng(6)
    dim, n_bg, n_hot, n_cold = 8, 300, 64, 16
    index = new_index(dim=dim)
    bg_vecs = rng.standard_normal((n_bg, dim)).astype(np.float32)
    index.upsert(np.arange(n_bg), bg_vecs)
    hot, cold = np.arange(10_000, 10_000 + n_hot), np.arange(20_000, 20_000 + n_cold)
    cold_vecs = rng.standard_normal((n_cold, dim)).astype(np.float32)
    cold_vecs[:, 0] = 500.0
    query = np.eye(dim, dtype=np.float32)[0]
    k = n_hot + n_cold + 10
    bg_score = bg_vecs[:, 0]
    bg_top = np.lexsort((np.arange(n_bg), -bg_score))

    def hot_vecs(version: int) -> np.ndarray:
        v = rng.standard_normal((n_hot, dim)).astype(np.float32)
        v[:, 0] = 1000.0 + version
        return v

    done, errors = threading.Event(), []

    def writer() -> None:
        try:
            for op in range(200):
                version = op + 1
                if op % 4 == 0:
                    index.upsert(np.concatenate([hot, cold]), np.concatenate([hot_vecs(version), cold_vecs]))
                elif op % 4 == 1:
                    index.upsert(hot, hot_vecs(version))
                elif op % 4 == 2:
                    assert index.remove(hot) == n_hot
                else:
                    assert index.remove(cold) == n_cold
                time.sleep(0.0005)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen_states, last_version, n_searches = set(), 0, 0
    try:
        while not done.is_set() or n_searches < 20:
            scores, ids = index.search(query, k)
            scores, ids = scores[0], ids[0]
            n_searches += 1
            assert np.unique(ids).size == ids.size, "duplicate ids"
            is_hot, is_cold = np.isin(ids, hot), np.isin(ids, cold)
            state = (int(is_hot.sum()), int(is_cold.sum()))
            assert state in {(n_hot, n_cold), (0, n_cold), (0, 0)}, f"partial write seen: {state}"
            seen_states.add(state)
            if state[0]:
                versions = np.unique(scores[is_hot] - 1000.0)
                assert versions.size == 1, f"hot ids from versions {versions.tolist()} in one result"
                assert int(versions[0]) == versions[0] and versions[0] >= last_version, "version went back"
                last_version = int(versions[0])
                assert ids[:n_hot].tolist() == hot.tolist(), "hot block first, ties by ascending id"
            if state[1]:
                assert (scores[is_cold] == 500.0).all()
            rest = ~(is_hot | is_cold)
            n_rest = int(rest.sum())
            assert n_rest == k - state[0] - state[1]
            assert ids[rest].tolist() == bg_top[:n_rest].tolist(), "background rows torn"
            np.testing.assert_allclose(scores[rest], bg_score[bg_top[:n_rest]], rtol=1e-6, atol=1e-6)
    finally:
        done.wait(30)
        thread.join(30)
    assert not errors, errors
    assert len(seen_states) >= 2, (seen_states, n_searches)
    assert len(index) == n_bg


# --------------------------------------------------------------------------- benchmark


def test_bench_mips_tiny() -> None:
    device, m = bench_mips("tiny", n_items=2000, dims=(16,), repeats=3)
    assert device in ("cpu", "cuda")
    expected = {"n_items", "k", "exact_vs_flat_ip.p99_ratio", "hnsw.recall", "exact.recall", "flat_ip.recall",
                "exact.update_ms", "flat_ip.update_ms", "exact.build_s", "flat_ip.build_s", "hnsw.build_s"}
    for name in ("exact", "flat_ip", "hnsw"):
        for stat in ("p50_ms", "p99_ms"):
            expected |= {f"{name}.{stat}", f"{name}.{stat}_b256"}
    assert set(m) == expected
    assert all(isinstance(v, float) and np.isfinite(v) for v in m.values())
    assert m["n_items"] == 2000 and m["k"] == 500
    assert m["exact.recall"] == 1.0 and m["flat_ip.recall"] == 1.0
    assert 0.0 < m["hnsw.recall"] <= 1.0


def test_bench_latency_interleaves_the_backends_in_blocks() -> None:
    """Backends take turns in blocks of timed calls, each block after untimed warm-ups; the first backend rotates
    from round to round and every backend is timed on the same queries."""
    calls: list[tuple[str, int]] = []
    searches = {name: (lambda q, name=name: calls.append((name, int(q[0, 0])))) for name in ("a", "b", "c")}
    batches = [np.full((1, 2), i, np.float32) for i in range(10)]
    lat = _latency_ms(searches, batches, warmup=1, repeats=5, block=2)
    assert {k: v.shape for k, v in lat.items()} == {"a": (5,), "b": (5,), "c": (5,)}
    assert all((v >= 0).all() for v in lat.values())
    # rounds of (1 warm-up + block) calls per backend: blocks [0, 2), [2, 4), [4, 5)
    expected = []
    for r, (lo, hi) in enumerate([(0, 2), (2, 4), (4, 5)]):
        for j in range(3):
            name = "abc"[(r + j) % 3]
            expected += [(name, lo % 10)] + [(name, i) for i in range(lo, hi)]
    assert calls == expected
