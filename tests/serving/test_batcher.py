"""Dynamic batching: concurrent submissions are served together, results go back to their callers, errors too."""

from __future__ import annotations

import threading
import time

import pytest

from serving.batcher import MicroBatcher


def test_queued_requests_are_served_as_one_batch_in_order() -> None:
    gate = threading.Event()
    batches: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        gate.wait(5)  # the first batch blocks until everything else has queued up
        batches.append(list(items))
        return [x * 10 for x in items]

    b = MicroBatcher(fn, max_batch=64)
    b.start()
    try:
        futures = [b.submit(0)]
        time.sleep(0.05)  # the worker is inside the first batch now
        futures += [b.submit(i) for i in range(1, 20)]
        gate.set()
        assert [f.result(5) for f in futures] == [i * 10 for i in range(20)]
    finally:
        b.stop()
    assert batches[0] == [0] and batches[1] == list(range(1, 20))  # the rest waited and went together


def test_max_batch_caps_a_batch() -> None:
    gate = threading.Event()
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        gate.wait(5)
        sizes.append(len(items))
        return items

    b = MicroBatcher(fn, max_batch=4)
    b.start()
    try:
        futures = [b.submit(0)]
        time.sleep(0.05)
        futures += [b.submit(i) for i in range(1, 9)]
        gate.set()
        assert [f.result(5) for f in futures] == list(range(9))
    finally:
        b.stop()
    assert sizes == [1, 4, 4]


def test_a_failing_batch_fails_each_of_its_callers_and_the_worker_survives() -> None:
    def fn(items: list[int]) -> list[int]:
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return items

    b = MicroBatcher(fn)
    b.start()
    try:
        with pytest.raises(ValueError, match="negative"):
            b.submit(-1).result(5)
        assert b.submit(3).result(5) == 3
    finally:
        b.stop()


def test_a_wrong_number_of_results_is_an_error() -> None:
    b = MicroBatcher(lambda items: [])
    b.start()
    try:
        with pytest.raises(RuntimeError, match="0 results for 1 items"):
            b.submit(1).result(5)
    finally:
        b.stop()


def test_submit_needs_a_running_batcher_and_bad_sizes_are_rejected() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        MicroBatcher(lambda items: items).submit(1)
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda items: items, max_batch=0)


def test_batch_path_equals_the_single_request_path(serve_config) -> None:
    """A request served inside a batch gets the same rooms and allocation as when served alone."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.schemas import RecommendRequest
    from tests.serving.conftest import SERVE_TIME
    from tests.serving.test_app import wait_ready

    # without the exposure pacer, whose offset moves between the batched and the single-request passes
    cfg = serve_config.model_copy(update={"decision_log": None, "alloc_pacing": False})
    with TestClient(create_app(cfg)) as client:
        assert wait_ready(client)["_status"] == 200
        rec = client.app.state.service.recommender
        reqs = [RecommendRequest(user_id=u, time_ms=SERVE_TIME, k=8) for u in (1, 2, 3, 10**12, 5)]
        together = rec.recommend_batch(reqs)
        alone = [rec.recommend_batch([r])[0] for r in reqs]
    for a, b in zip(together, alone):
        assert [i.live_id for i in a.items] == [i.live_id for i in b.items]
        assert [i.score for i in a.items] == pytest.approx([i.score for i in b.items], rel=1e-4, abs=1e-5)
        assert a.allocation.insert == b.allocation.insert
        assert a.allocation.prob_insert == pytest.approx(b.allocation.prob_insert, abs=1e-5)
