"""The continual TPP protocol on the tiny twin: the four schemes, the transfer matrix and its summaries."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.benchmarks import bench_tpp
from pipelines.train_tpp import TPPTrainConfig, forgetting_summary

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_forgetting_summary_on_a_known_matrix() -> None:
    a = np.array([[1.0, 0.5, 0.0], [0.8, 2.0, 0.7], [0.6, 1.5, 3.0]])
    s = forgetting_summary(a)
    assert s["next"] == pytest.approx((0.5 + 0.7) / 2)
    assert s["current"] == pytest.approx(2.0)
    assert s["avg_final"] == pytest.approx(np.mean([0.6, 1.5, 3.0]))
    assert s["bwt"] == pytest.approx(((0.6 - 1.0) + (1.5 - 2.0)) / 2)
    assert s["forgetting"] == pytest.approx(((1.0 - 0.6) + (2.0 - 1.5)) / 2)


def test_bench_tpp_runs_every_scheme_on_tiny() -> None:
    device, m = bench_tpp("tiny")
    assert m["windows"] == 3
    for scheme in ("prompttpp", "online", "retrain", "pretrain"):
        for key in ("ll_next", "forgetting", "rmse_dt", "type_error"):
            assert np.isfinite(m[f"{scheme}.{key}"]), (scheme, key)
        assert 0.0 <= m[f"{scheme}.type_error"] <= 1.0 and m[f"{scheme}.rmse_dt"] > 0
        assert m[f"{scheme}.ll_next"] == pytest.approx(np.mean([m[f"{scheme}.w0.ll_next"], m[f"{scheme}.w1.ll_next"]]))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown scheme"):
        TPPTrainConfig(scheme="ewc")
    with pytest.raises(ValueError):
        TPPTrainConfig(epochs=0)
