"""The exposure pacer: it holds the insertion ratio at its target, keeps the policy's order, and starts neutral."""

from __future__ import annotations

import numpy as np
import pytest

from serving.pacing import InsertionPacer


def _serve(pacer: InsertionPacer, probs: np.ndarray, batch: int) -> np.ndarray:
    """Every request through the pacer in batches; the adjusted probabilities in order."""
    out = []
    for i in range(0, probs.size, batch):
        a = pacer.adjust(probs[i:i + batch])
        pacer.update(a)
        out.append(a)
    return np.concatenate(out)


@pytest.mark.parametrize("batch", [1, 50])
@pytest.mark.parametrize("target", [0.05, 0.3, 0.7])
def test_the_ratio_converges_to_the_target_from_a_policy_on_another_scale(target: float, batch: int) -> None:
    rng = np.random.default_rng(0)
    # a policy that, on shifted serving features, inserts about 2 % of the time (the quickstart's case)
    probs = 1.0 / (1.0 + np.exp(-(rng.normal(-4.0, 1.0, 6000))))
    assert probs.mean() < 0.05
    pacer = InsertionPacer(target)
    adjusted = _serve(pacer, probs, batch)
    assert abs(adjusted[-2000:].mean() - target) < 0.02
    assert pacer.offset != 0.0


def test_the_shift_keeps_the_policy_order_and_starts_at_zero() -> None:
    pacer = InsertionPacer(0.3)
    p = np.array([0.01, 0.2, 0.5, 0.9, 0.999])
    np.testing.assert_allclose(pacer.adjust(p), p, rtol=1e-9)  # offset 0: the policy as trained
    pacer.update(np.full(100, 0.0))  # far below target: the offset rises
    assert pacer.offset > 0
    a = pacer.adjust(p)
    assert np.all(np.diff(a) > 0) and np.all(a > p)


def test_one_update_is_bounded() -> None:
    pacer = InsertionPacer(0.5, lr=1.0, max_step=0.25, max_offset=1.0)
    pacer.update(np.zeros(10_000))
    assert pacer.offset == pytest.approx(0.25)
    for _ in range(10):
        pacer.update(np.zeros(10_000))
    assert pacer.offset == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs", [{"target": 0.0}, {"target": 1.0}, {"target": 0.3, "lr": 0.0}])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        InsertionPacer(**kwargs)
