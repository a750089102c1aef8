"""``recsys bench retrieval`` on the tiny twin: every requested model reports every key of the issue's contract."""

from __future__ import annotations

import pytest

from pipelines.benchmarks import BENCHMARKS, bench_retrieval

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_bench_retrieval_reports_the_contract_keys() -> None:
    device, m = bench_retrieval("tiny", models=("popularity", "two_tower", "grank"), granularities=("room",))
    assert device in ("cpu", "cuda")
    for model in ("popularity", "two_tower", "grank"):
        for k in (5, 10, 20):
            assert 0.0 <= m[f"{model}.room.ndcg@{k}"] <= m[f"{model}.room.recall@{k}"] <= 1.0
        assert m[f"{model}.room.recall@50"] <= m[f"{model}.room.recall@500"] <= 1.0
    assert m["two_tower.room.train_samples_per_s"] > 0 and m["grank.room.steps"] == 20
    assert 0.0 <= m["grank.room.generator_recall@200"] <= 1.0
    assert m["grank_vs_two_tower.room.recall@500_rel"] == pytest.approx(
        m["grank.room.recall@500"] / m["two_tower.room.recall@500"] - 1.0)
    assert m["room.mean_live"] > 0 and m["room.test_targets"] > 0
    assert {"retrieval", "mips"} <= set(BENCHMARKS)
