"""Fixtures of the serving tests: tiny exports of the three models (trained once per session, a few steps each)
and a service configuration at a time when rooms are live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.timeutil import MS_PER_DAY, MS_PER_HOUR, WINDOW_START_MS

#: 20:00 UTC on day 10 of the tiny twin: a few dozen rooms are live
SERVE_TIME = WINDOW_START_MS + 10 * MS_PER_DAY + 20 * MS_PER_HOUR


@pytest.fixture(scope="session")
def serving_exports(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"retriever", "ranker", "policy"}`` export directories trained on the tiny twin (no MLflow)."""
    from recsys.cli import main

    out = tmp_path_factory.mktemp("serving-exports")
    small = json.dumps({"dim": 32, "layers": 2, "n_sub": 8})
    assert main(["train", "retrieval", "--model", "grank", "--data", str(tiny_dir), "--options", small,
                 "--max-steps", "8", "--batch-size", "64", "--negatives", "64", "--export", str(out / "retriever"),
                 "--no-mlflow", "--quiet"]) == 0
    assert main(["train", "ranker", "--model", "tokenmixer", "--data", str(tiny_dir), "--max-steps", "8",
                 "--export", str(out / "ranker"), "--no-mlflow"]) == 0
    assert main(["train", "allocator", "--policy", "slmgac", "--data", str(tiny_dir), "--sessions", "200",
                 "--true-sessions", "200", "--steps", "30", "--export", str(out / "policy"), "--no-mlflow"]) == 0
    return {k: out / k for k in ("retriever", "ranker", "policy")}


@pytest.fixture(scope="module")
def serve_config(serving_exports: dict[str, Path], tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A memory-store configuration warmed from the tiny twin up to :data:`SERVE_TIME`, logging decisions."""
    from serving.config import ServeConfig

    return ServeConfig(retriever=str(serving_exports["retriever"]), ranker=str(serving_exports["ranker"]),
                       policy=str(serving_exports["policy"]), warm_data=tiny_dir, warm_until=SERVE_TIME,
                       decision_log=str(tmp_path_factory.mktemp("log") / "decisions.jsonl"), admin_token="s3cret",
                       live_sync_s=0.2, k1=50, k2=20)
