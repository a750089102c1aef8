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
    assert 0.0 <= m["grank.room.generator_recall@4000"] <= 1.0
    assert m["grank_vs_two_tower.room.recall@500_rel"] == pytest.approx(
        m["grank.room.recall@500"] / m["two_tower.room.recall@500"] - 1.0)
    assert m["room.mean_live"] > 0 and m["room.test_targets"] > 0
    assert {"retrieval", "mips"} <= set(BENCHMARKS)


def test_bench_allocation_reports_the_contract_keys() -> None:
    from pipelines.benchmarks import bench_allocation

    _, m = bench_allocation("tiny", policies=("slmgac", "threshold", "plain_ac"))
    for p in ("slmgac", "threshold", "plain_ac"):
        for k in ("true_value", "true_cost", "alloc_ratio", "ips", "snips", "ncis", "dr", "fqe", "value_std_seeds"):
            assert f"{p}.{k}" in m, (p, k)
        assert 0.0 <= m[f"{p}.alloc_ratio"] <= 1.0 and m[f"{p}.value_std_seeds"] >= 0.0
        assert m[f"{p}.dr.ci_low"] <= m[f"{p}.dr"] <= m[f"{p}.dr.ci_high"]
    assert m["alloc_target"] == 0.3 and "logging.true_value" in m
