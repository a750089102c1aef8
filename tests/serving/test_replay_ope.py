"""A replayed hour of traffic through the service: its decision log is read by `recsys ope`."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipelines.serve_replay import logged_requests, replay
from recsys.cli import main
from recsys.feed.decision_log import join_outcomes, read_decisions
from recsys.timeutil import MS_PER_HOUR
from serving.app import create_app
from tests.serving.conftest import SERVE_TIME
from tests.serving.test_app import wait_ready

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_logged_requests_form_sessions(tiny_data) -> None:
    reqs = logged_requests(tiny_data, SERVE_TIME - 2 * MS_PER_HOUR, SERVE_TIME)
    assert reqs and [r.time_ms for r in reqs] == sorted(r.time_ms for r in reqs)
    by_session: dict[str, list] = {}
    for r in reqs:
        by_session.setdefault(r.session_id, []).append(r)
    for rs in by_session.values():
        assert [r.request_index for r in rs] == list(range(len(rs)))
        assert len({r.user_id for r in rs}) == 1


def test_replayed_traffic_decision_log_is_readable_by_recsys_ope(serve_config, tiny_data, tiny_dir: Path,
                                                                  tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    cfg = serve_config.model_copy(update={"decision_log": str(log)})
    reqs = logged_requests(tiny_data, SERVE_TIME - MS_PER_HOUR, SERVE_TIME, max_requests=150)
    with TestClient(create_app(cfg)) as client:
        assert wait_ready(client)["_status"] == 200

        def post(body: dict) -> dict:
            r = client.post("/v1/recommend", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        responses = replay(reqs, post)
    records = read_decisions(log)
    assert len(records) == len(reqs) == len(responses)
    assert any(r.action == 1 for r in records) and any(r.action == 0 and r.live_id for r in records)
    # later requests of a session carry the fatigue of the insertions the service decided
    fatigue = records[0].feature_names.index("fatigue")
    assert any(r.features[fatigue] > 0 for r in records if r.step > 0 and r.action >= 0)
    logged = join_outcomes(records, tiny_data.tables["click"])
    assert len(logged) == len(records) and logged.n_sessions == len({r.session_id for r in records})

    out = tmp_path / "ope"
    assert main(["ope", "--logs", str(log), "--data", str(tiny_dir), "--policy", "never", "--policy",
                 "constant:0.3", "--out", str(out), "--boot", "20", "--true-sessions", "200", "--no-mlflow"]) == 0
    assert (out / "report.md").exists() and (out / "report.html").exists()
    text = (out / "report.md").read_text()
    assert "`never`" in text and "`constant_0.3`" in text and f"{len(records)} decisions" in text
