"""The service through HTTP (FastAPI TestClient, lifespan included) on the embedded defaults."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from recsys.feed.decision_log import read_decisions
from serving.app import create_app
from tests.serving.conftest import SERVE_TIME

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def wait_ready(client: TestClient, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.get("/readyz")
        if r.status_code == 200 or time.monotonic() > deadline:
            return r.json() | {"_status": r.status_code}
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(serve_config):
    with TestClient(create_app(serve_config)) as c:
        assert wait_ready(c)["_status"] == 200
        yield c


def test_recommend_returns_live_ranked_rooms_with_an_allocation(client: TestClient, tiny_data) -> None:
    rooms = tiny_data.tables["rooms"]
    r = client.post("/v1/recommend", json={"user_id": 5, "k": 5, "time_ms": SERVE_TIME})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 5 and body["time_ms"] == SERVE_TIME
    assert not body["fallback"]
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    ids = [it["live_id"] for it in body["items"]]
    live = rooms.filter(rooms["live_id"].is_in(ids))
    # every returned room is live at the request time (half-open [start, end))
    assert live.height == 5
    assert (live["start_timestamp"] <= SERVE_TIME).all() and (live["end_timestamp"] > SERVE_TIME).all()
    a = body["allocation"]
    assert a["live_id"] == ids[0] and 0.0 <= a["prob_insert"] <= 1.0
    assert a["propensity"] == pytest.approx(a["prob_insert"] if a["insert"] else 1 - a["prob_insert"])
    assert set(body["timings_ms"]) == {"features", "retrieve", "prerank", "rank", "allocate", "log"}
    assert set(body["models"]) == {"retriever", "ranker", "policy"}


def test_unknown_user_is_a_cold_start_not_an_error(client: TestClient) -> None:
    r = client.post("/v1/recommend", json={"user_id": 10**12, "time_ms": SERVE_TIME})
    assert r.status_code == 200
    assert r.json()["cold_start"] is True and r.json()["items"]


@pytest.mark.parametrize("body, field", [
    ({"user_id": "abc"}, "user_id"),
    ({"user_id": -1}, "user_id"),
    ({"user_id": 1, "k": 0}, "k"),
    ({"user_id": 1, "time_ms": 1_747_000_000}, "time_ms"),  # seconds, not milliseconds
    ({"user_id": 1, "colour": "red"}, "colour"),
    ({"user_id": 1, "context": {"request_index": -2}}, "request_index"),
    ({}, "user_id"),
])
def test_bad_input_is_a_422_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 422
    assert any(field in err["loc"] for err in r.json()["detail"]), r.json()


def test_malformed_json_is_a_422(client: TestClient) -> None:
    r = client.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_metrics_expose_stage_latencies_and_index_size(client: TestClient) -> None:
    client.post("/v1/recommend", json={"user_id": 3, "time_ms": SERVE_TIME})
    text = client.get("/metrics").text
    for stage in ("features", "retrieve", "prerank", "rank", "allocate", "log"):
        assert f'recsys_stage_seconds_count{{stage="{stage}"}}' in text
    size = [ln for ln in text.splitlines() if ln.startswith("recsys_index_items ")]
    assert size and float(size[0].split()[1]) > 0


def test_health_ready_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["index_items"] > 0
    spec = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/healthz", "/readyz", "/metrics", "/admin/reload"} <= set(spec["paths"])
    assert spec["components"]["schemas"]["RecommendRequest"]["examples"]


def test_the_ranker_stage_fuses_the_mips_scores_when_the_model_says_so(client: TestClient) -> None:
    """With fusion weights (0, 1, 0) the GRank ranker stage keeps the MIPS order, so the k2 rooms passed on are
    MIPS's top k2; with (1, 0, 0) they are the ranker's top k2."""
    rec = client.app.state.service.recommender
    model, catalog = rec.bundle.retriever.model, rec.bundle.catalog
    found: list = []
    search = catalog.search

    def spy(*args, **kwargs):
        found[:] = search(*args, **kwargs)
        return found

    k2 = rec.cfg.k2
    catalog.search, saved = spy, model.fusion_weights.clone()
    try:
        for weight in (0.0, 1.0):
            model.set_fusion_weights(torch.tensor([weight, 1.0 - weight, 0.0]))
            body = client.post("/v1/recommend", json={"user_id": 5, "k": k2, "time_ms": SERVE_TIME}).json()
            rows, mips, rooms = found[0]
            assert len(rooms) > k2
            if weight == 0.0:
                expected = {rooms[i].live_id for i in np.argsort(-mips, kind="stable")[:k2]}
                assert {it["live_id"] for it in body["items"]} == expected
            else:
                assert {it["live_id"] for it in body["items"]} != expected  # the ranker reorders the candidates
    finally:
        catalog.search = search
        model.set_fusion_weights(saved)


def test_reload_needs_the_token(client: TestClient) -> None:
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_reload_with_a_bad_reference_keeps_the_serving_models(client: TestClient, tmp_path: Path) -> None:
    before = client.get("/readyz").json()["models"]
    r = client.post("/admin/reload", json={"ranker": str(tmp_path / "missing")},
                    headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 400 and "missing" in r.json()["detail"]
    assert client.get("/readyz").json()["models"] == before
    assert client.post("/v1/recommend", json={"user_id": 1, "time_ms": SERVE_TIME}).status_code == 200


def reload_under_load(client: TestClient, reloads: int = 2, users: int = 50) -> list[int]:
    """Reload ``reloads`` times (each must succeed) while three threads send requests; the requests' statuses."""
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            statuses.append(client.post("/v1/recommend", json={"user_id": 1 + i % users, "time_ms": SERVE_TIME})
                            .status_code)
            i += 1

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for _ in range(reloads):
            r = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200, r.text
            assert r.json()["index_items"] > 0
    finally:
        stop.set()
        for w in workers:
            w.join()
    return statuses


def test_reload_under_load_fails_no_request(client: TestClient) -> None:
    statuses = reload_under_load(client)
    assert statuses and set(statuses) == {200}
    assert 'recsys_reloads_total{result="ok"} 2.0' in client.get("/metrics").text


def test_every_decision_is_logged_with_its_propensity(client: TestClient, serve_config) -> None:
    ids = [client.post("/v1/recommend", json={"user_id": u, "time_ms": SERVE_TIME}).json()["request_id"]
           for u in (11, 12, 13)]
    records = {r.request_id: r for r in read_decisions(serve_config.decision_log)}
    for rid in ids:
        rec = records[rid]
        assert rec.timestamp == SERVE_TIME and len(rec.features) == len(rec.feature_names)
        assert rec.propensity == pytest.approx(rec.prob_insert if rec.action else 1 - rec.prob_insert)


def test_the_allocator_state_holds_the_top_streamers_day_clicks(client: TestClient, serve_config, tiny_data
                                                                  ) -> None:
    """``log_popularity`` = log1p of the top room's streamer's clicks in [t - 1 day - 1 ms, t) (what the
    environment's ranker estimator computes offline), counted here from the click table."""
    clicks = tiny_data.tables["click"]
    cs, ct = clicks["streamer_id"].to_numpy(), clicks["timestamp"].to_numpy()
    rooms = tiny_data.tables["rooms"]
    streamer_of = dict(zip(rooms["live_id"].to_list(), rooms["streamer_id"].to_list()))
    ids = [client.post("/v1/recommend", json={"user_id": u, "time_ms": SERVE_TIME}).json()["request_id"]
           for u in (21, 22, 23, 24)]
    records = {r.request_id: r for r in read_decisions(serve_config.decision_log)}
    seen = []
    for rid in ids:
        rec = records[rid]
        x = dict(zip(rec.feature_names, rec.features))
        sid = streamer_of[rec.live_id]
        n = int(np.sum((cs == sid) & (ct >= SERVE_TIME - 86_400_000 - 1) & (ct < SERVE_TIME)))
        assert x["log_popularity"] == pytest.approx(np.log1p(n))
        seen.append(n)
    assert max(seen) > 0


def test_the_pacer_holds_the_policy_target_and_a_reload_restarts_it(serve_config) -> None:
    """The pacer takes its target from the policy export (trained for 0.3), or from the config; it moves the served
    insert probabilities toward it and shows its offset in /metrics; ``alloc_pacing=False`` serves them unpaced."""
    from serving.schemas import RecommendRequest

    def served(cfg) -> tuple[object, list[float], str]:
        with TestClient(create_app(cfg)) as c:
            assert wait_ready(c)["_status"] == 200
            rec = c.app.state.service.recommender
            probs = [r.allocation.prob_insert for _ in range(30) for r in rec.recommend_batch(
                [RecommendRequest(user_id=u, time_ms=SERVE_TIME, k=5) for u in range(1, 21)])]
            return rec.pacer, probs, c.get("/metrics").text

    cfg = serve_config.model_copy(update={"decision_log": None})
    pacer, unpaced, _ = served(cfg.model_copy(update={"alloc_pacing": False}))
    assert pacer is None
    for target in (0.05, 0.9):
        pacer, probs, metrics = served(cfg.model_copy(update={"alloc_target": target}))
        assert pacer.target == target and pacer.offset != 0.0
        assert abs(sum(probs[-100:]) / 100 - target) < 0.1, (target, sum(unpaced) / len(unpaced))
        gauge = next(line for line in metrics.splitlines() if line.startswith("recsys_pacing_offset "))
        assert float(gauge.split()[1]) == pytest.approx(pacer.offset)
    with TestClient(create_app(cfg)) as c:
        assert wait_ready(c)["_status"] == 200
        rec = c.app.state.service.recommender
        assert rec.pacer.target == pytest.approx(0.3)  # the export's allocation target
        rec.pacer.update([0.0] * 50)
        assert c.post("/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert rec.pacer.offset == 0.0  # a reloaded policy starts a new pacer


def test_reload_is_disabled_without_a_token(serve_config) -> None:
    cfg = serve_config.model_copy(update={"admin_token": None, "decision_log": None})
    with TestClient(create_app(cfg)) as c:
        assert c.post("/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 403


@pytest.mark.parametrize("raw", [
    b'{"user_id": 1, "context": {"fatigue": NaN}}',
    b'{"user_id": 1, "context": {"fatigue": Infinity}}',
    b'{"user_id": 1e400}',
    b'1e999',
    b'{"user_id": 1, "context": {"session_id": "\\ud800"}}',
])
def test_bodies_json_cannot_echo_are_still_a_422(client: TestClient, raw: bytes) -> None:
    # Python's JSON parser accepts NaN / Infinity / lone surrogates: the 422 must not fail on echoing them
    r = client.post("/v1/recommend", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_default_time_is_the_streams_event_time(client: TestClient, tiny_data) -> None:
    rooms = tiny_data.tables["rooms"]
    live = rooms.filter((rooms["start_timestamp"] <= SERVE_TIME) & (rooms["end_timestamp"] > SERVE_TIME))
    body = client.post("/v1/recommend", json={"user_id": 4}).json()
    assert body["time_ms"] == int(live["start_timestamp"].max())  # the latest room start the stream has shown


def test_a_decision_log_that_fails_does_not_fail_the_request(client: TestClient) -> None:
    rec = client.app.state.service.recommender

    class Broken:
        def write(self, record) -> None:
            raise OSError("No space left on device")

    before, rec.sink = rec.sink, Broken()
    try:
        r = client.post("/v1/recommend", json={"user_id": 6, "time_ms": SERVE_TIME})
    finally:
        rec.sink = before
    assert r.status_code == 200 and r.json()["items"]
    assert 'recsys_errors_total{kind="decision_log"} 1.0' in client.get("/metrics").text
