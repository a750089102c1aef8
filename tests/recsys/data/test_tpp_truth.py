"""The synthetic twin's true TPP intensities (recsys.data.tpp_truth): units, integrals, the time-change check and
the oracle log-likelihood on the tiny twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.data.builders import event_sequences
from recsys.data.errors import DataValidationError
from recsys.data.tpp import MIN_GAP, build_tpp_tasks
from recsys.data.tpp_truth import (
    GIFT_AT_CLICK,
    POINT_MASS_GAPS,
    TPPTruth,
    oracle_log_likelihood,
    sequence_log_likelihood,
    window_bounds_ms,
)
from recsys.timeutil import MS_PER_HOUR, MS_PER_MINUTE, WINDOW_START_MS

WINDOW_DAYS = 7


@pytest.fixture(scope="module")
def truth(tiny_dir: Path) -> TPPTruth:
    return TPPTruth.load(tiny_dir)


@pytest.fixture(scope="module")
def tasks(tiny_data):
    t = tiny_data.tables
    return build_tpp_tasks(event_sequences(t["click"], t["like"], t["comment"], t["gift"]), WINDOW_DAYS, 32, 0)


def _busiest_user(truth: TPPTruth) -> int:
    return int(np.argmax(np.diff(truth.click_off[:-1])))


def test_missing_truth_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="no ground truth"):
        TPPTruth.load(tmp_path)


def test_baseline_matches_the_hour_profile_and_its_integral(truth: TPPTruth) -> None:
    # 19:00 CST on day 5 (a Saturday): hour 19 x weekend weight
    t = WINDOW_START_MS + (5 * 24 + 19) * MS_PER_HOUR + 7 * MS_PER_MINUTE
    assert truth.baseline(np.array([t]))[0] == pytest.approx(truth.hour_profile[19] * truth.day_weights[5])
    a, b = WINDOW_START_MS + 90 * MS_PER_MINUTE, WINDOW_START_MS + 30 * MS_PER_HOUR + 17 * MS_PER_MINUTE
    grid = np.linspace(a, b, 200_001).astype(np.int64)
    numeric = np.trapezoid(truth.baseline(grid), grid / MS_PER_MINUTE)
    assert truth.baseline_integral(np.array([a]), np.array([b]))[0] == pytest.approx(numeric, rel=1e-3)


def test_exposure_and_room_integrals_match_numeric_integration(truth: TPPTruth) -> None:
    u = _busiest_user(truth)
    ct = truth.click_t[truth.click_off[u]:truth.click_off[u + 1]]
    a, b = int(ct[0]) - 5 * MS_PER_MINUTE, int(ct[0]) + 6 * MS_PER_HOUR
    grid = np.linspace(a, b, 400_001).astype(np.int64)
    x = grid / MS_PER_MINUTE
    assert truth.exposure_integral(u, a, b) == pytest.approx(
        np.trapezoid(truth.exposure_intensity(u, grid), x), rel=1e-3)
    assert truth.room_integral(u, a, b) == pytest.approx(
        np.trapezoid(truth.room_intensities(u, grid).sum(1), x), rel=1e-3)


def test_excitation_only_counts_exposures_strictly_before(truth: TPPTruth) -> None:
    u = _busiest_user(truth)
    e = truth.exp_t[truth.exp_off[u]:truth.exp_off[u + 1]]
    at, after = truth.exposure_intensity(u, np.array([e[3], e[3] + 1]))
    # one millisecond later the exposure at e[3] has joined the history: a jump of n * beta
    assert after - at == pytest.approx(truth.branching * truth.beta_per_min, rel=1e-3)


def test_time_change_the_compensator_between_events_is_unit_exponential(truth: TPPTruth, tasks) -> None:
    """Under the true intensity the integral between consecutive events is Exp(1): mean 1, sd 1. A unit slip
    (ms against minutes, the hour profile, the 0.86 point mass) moves the mean far from 1."""
    ints = []
    for t in range(len(tasks)):
        raw, bounds = tasks.sequences[t], window_bounds_ms(tasks, t, WINDOW_DAYS)
        for i in range(len(raw.users)):
            ms, ty = raw.timestamps_ms[i], raw.types[i]
            for j in range(1, ms.size):
                ints.append(sequence_log_likelihood(truth, int(raw.users[i]), ms[j - 1:j + 1], ty[j - 1:j + 1],
                                                    tasks.time_scale_min, bounds).integral)
    ints = np.asarray(ints)
    assert ints.size > 2000
    assert 0.9 < ints.mean() < 1.1 and 0.85 < ints.std() < 1.15


def test_tied_gift_gets_the_point_mass(truth: TPPTruth) -> None:
    u = _busiest_user(truth)
    sl = slice(truth.click_off[u], truth.click_off[u + 1])
    c = int(np.argmax(truth.click_rates[sl, 2]))
    t_click, g = int(truth.click_t[sl][c]), truth.click_rates[sl, 2][c]
    scale = 20.0
    tied = sequence_log_likelihood(truth, u, np.array([t_click, t_click]), np.array([0, 3]), scale, (0, 2**62))
    later = sequence_log_likelihood(truth, u, np.array([t_click, t_click + 1000]), np.array([0, 3]), scale,
                                    (0, 2**62))
    cont = truth.room_intensities(u, np.array([t_click]))[0, 2] * scale
    assert tied.event_ll == pytest.approx(np.log(GIFT_AT_CLICK * g / (POINT_MASS_GAPS * MIN_GAP) + cont))
    assert later.event_ll < tied.event_ll
    assert tied.integral == pytest.approx(GIFT_AT_CLICK * g)  # the click's mass lies between the two events


def test_oracle_scores_every_event_and_beats_a_fitted_poisson(truth: TPPTruth, tasks) -> None:
    for t in range(len(tasks)):
        test = tasks.tasks[t].splits["test"]
        o = oracle_log_likelihood(truth, tasks, t, test, WINDOW_DAYS)
        assert o["n_zero"] == 0 and o["n_events"] == (test.valid.sum(1) - 1).sum()
        # per-mark homogeneous Poisson with rates fitted on these very sequences (an in-sample baseline)
        span = (test.times.max(1, where=test.valid, initial=0) - test.times[:, 0]).sum()
        scored = np.concatenate([test.types[i, 1:test.valid[i].sum()] for i in range(len(test))])
        counts = np.bincount(scored, minlength=tasks.n_types)
        rates = counts / span
        poisson = (counts[counts > 0] * np.log(rates[counts > 0])).sum() - rates.sum() * span
        assert o["ll_per_event"] > poisson / counts.sum() + 0.5, t
