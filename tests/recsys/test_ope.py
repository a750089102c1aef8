"""Tests for recsys.ope against closed-form values of small bandits and MDPs."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from recsys.ope import (
    Estimate,
    bootstrap_ci,
    cumulative_importance_weights,
    direct_method,
    doubly_robust,
    effective_sample_size,
    fit_fqe,
    fqe,
    implied_rate,
    importance_weights,
    ips,
    ncis,
    pdis,
    sequential_dr,
    snips,
    trajectory_is,
    weight_stats,
)

# --------------------------------------------------------------------------- bandit world

P_X = np.array([0.5, 0.3, 0.2])  # context distribution
MU1 = np.array([0.3, 0.5, 0.7])  # logging mu(insert | x)
PI1 = np.array([0.8, 0.4, 0.1])  # target pi(insert | x)
MEAN_R = np.array([[0.2, 0.6], [0.5, 0.3], [0.1, 0.9]])  # E[r | x, a]
NOISE_SD = 0.1  # reward = mean + Gaussian noise (a watch-time-like continuous reward)


def _probs(p1: np.ndarray, x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Probability of action a in context x for a policy with pi(1 | x) = p1[x]."""
    return np.where(a == 1, p1[x], 1.0 - p1[x])


def _bandit_truth() -> float:
    per_x = (1.0 - PI1) * MEAN_R[:, 0] + PI1 * MEAN_R[:, 1]
    return float(P_X @ per_x)


def _bandit_log(n: int, seed: int) -> dict[str, np.ndarray]:
    """Log n decisions of mu with Bernoulli rewards, plus exact model quantities."""
    rng = np.random.default_rng(seed)
    x = rng.choice(3, size=n, p=P_X)
    a = (rng.random(n) < MU1[x]).astype(int)
    r = MEAN_R[x, a] + NOISE_SD * rng.standard_normal(n)
    return {
        "x": x,
        "a": a,
        "r": r,
        "mu": _probs(MU1, x, a),
        "pi": _probs(PI1, x, a),
        "q": MEAN_R[x, a],
        "v": (1.0 - PI1[x]) * MEAN_R[x, 0] + PI1[x] * MEAN_R[x, 1],
    }


def test_bandit_estimators_recover_true_value() -> None:
    truth = _bandit_truth()
    d = _bandit_log(40_000, seed=1)
    w = d["pi"] / d["mu"]
    assert w.max() < 4.0
    # A wrong but self-consistent model: v-hat is pi's expectation of the same q-hat.
    wrong_table = np.array([[0.5, 0.5], [0.9, 0.0], [0.4, 0.4]])
    x = d["x"]
    wrong_q = wrong_table[x, d["a"]]
    wrong_v = (1.0 - PI1[x]) * wrong_table[x, 0] + PI1[x] * wrong_table[x, 1]
    estimates = {
        "ips": ips(d["r"], d["mu"], d["pi"]),
        "snips": snips(d["r"], d["mu"], d["pi"]),
        "ncis": ncis(d["r"], d["mu"], d["pi"], cap=4.0),
        "dr_exact": doubly_robust(d["r"], d["mu"], d["pi"], d["q"], d["v"]),
        "dr_wrong": doubly_robust(d["r"], d["mu"], d["pi"], wrong_q, wrong_v),
    }
    for name, est in estimates.items():
        assert isinstance(est, Estimate)
        assert est.n == 40_000
        assert abs(est.value - truth) < 0.015, (name, est.value, truth)
    # NCIS with a cap above every weight (or an infinite cap) is SNIPS.
    assert estimates["ncis"].value == pytest.approx(estimates["snips"].value, rel=1e-12)
    inf_cap = ncis(d["r"], d["mu"], d["pi"], cap=math.inf).value
    assert inf_cap == pytest.approx(estimates["snips"].value, rel=1e-12)
    assert estimates["ncis"].capped_fraction == 0.0
    # The direct method with a wrong model is biased; DR corrects it.
    assert abs(direct_method(wrong_v).value - truth) > 0.05


def test_dr_with_exact_model_has_much_lower_variance_than_ips() -> None:
    values: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    for seed in range(40):
        d = _bandit_log(2_000, seed=100 + seed)
        values["ips"].append(ips(d["r"], d["mu"], d["pi"]).value)
        values["snips"].append(snips(d["r"], d["mu"], d["pi"]).value)
        values["dr"].append(doubly_robust(d["r"], d["mu"], d["pi"], d["q"], d["v"]).value)
    sd = {k: float(np.std(v)) for k, v in values.items()}
    assert sd["dr"] < 0.6 * sd["ips"]
    assert sd["snips"] < sd["ips"]
    # IPS is unbiased: the mean over repetitions is close to the truth.
    assert abs(np.mean(values["ips"]) - _bandit_truth()) < 3 * sd["ips"] / math.sqrt(40)


def test_dr_with_perfect_model_and_deterministic_rewards_has_zero_variance() -> None:
    x = np.repeat(np.arange(3), [500, 300, 200])  # fixed contexts across logging seeds
    v = (1.0 - PI1[x]) * MEAN_R[x, 0] + PI1[x] * MEAN_R[x, 1]
    values = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        a = (rng.random(x.size) < MU1[x]).astype(int)
        r = MEAN_R[x, a]  # deterministic rewards: r = q exactly
        est = doubly_robust(r, _probs(MU1, x, a), _probs(PI1, x, a), MEAN_R[x, a], v)
        values.append(est.value)
    assert np.ptp(values) < 1e-12
    assert values[0] == pytest.approx(_bandit_truth(), rel=1e-12)


def test_snips_and_ncis_are_scale_invariant_ips_is_not() -> None:
    d = _bandit_log(5_000, seed=7)
    c = 0.5  # pi * c stays in [0, 1]
    estimators = (
        snips,
        lambda *a: ncis(*a, cap=math.inf),
        lambda *a: ncis(*a, cap_quantile=0.9),
    )
    for est in estimators:
        base = est(d["r"], d["mu"], d["pi"]).value
        scaled = est(d["r"], d["mu"], c * d["pi"]).value
        assert scaled == pytest.approx(base, rel=1e-12)
    base_ips = ips(d["r"], d["mu"], d["pi"]).value
    assert ips(d["r"], d["mu"], c * d["pi"]).value == pytest.approx(c * base_ips, rel=1e-12)
    # A constant cap that binds is not invariant, and is reported.
    capped = ncis(d["r"], d["mu"], d["pi"], cap=1.5)
    assert capped.cap == 1.5
    assert 0.0 < capped.capped_fraction < 1.0  # type: ignore[operator]
    # Default cap is 10.
    assert ncis(d["r"], d["mu"], d["pi"]).cap == 10.0


def test_on_policy_identity() -> None:
    d = _bandit_log(3_000, seed=3)
    w = importance_weights(d["mu"], d["mu"])
    assert np.all(w == 1.0)
    mean = float(d["r"].mean())
    for est in (ips, snips, ncis):
        e = est(d["r"], d["mu"], d["mu"])
        assert e.value == pytest.approx(mean, rel=1e-12, abs=1e-15)
        assert e.ess == pytest.approx(3_000, rel=1e-12)
        assert e.max_weight == 1.0
    assert effective_sample_size(w) == pytest.approx(3_000, rel=1e-12)


# --------------------------------------------------------------------------- diagnostics


def test_effective_sample_size_formula() -> None:
    assert effective_sample_size(np.array([1.0, 2.0, 3.0])) == pytest.approx(36.0 / 14.0)
    assert effective_sample_size(np.full(50, 0.3)) == pytest.approx(50.0)
    assert effective_sample_size(np.array([0.0, 0.0, 7.0])) == pytest.approx(1.0)
    assert effective_sample_size(np.zeros(4)) == 0.0
    w = np.random.default_rng(0).exponential(size=100)
    assert effective_sample_size(5.0 * w) == pytest.approx(effective_sample_size(w))


def test_weight_stats() -> None:
    w = np.arange(1.0, 201.0)  # n = 200: top 1 % = the 2 largest
    s = weight_stats(w, cap=150.0)
    assert s.n == 200 and s.max == 200.0 and s.min == 1.0
    assert s.mean == pytest.approx(100.5)
    assert s.top1_share == pytest.approx((200.0 + 199.0) / w.sum())
    assert s.capped_fraction == pytest.approx(50 / 200)
    assert s.ess == pytest.approx(effective_sample_size(w))
    assert s.ess_fraction == pytest.approx(s.ess / 200)
    assert weight_stats(np.ones(10)).top1_share == pytest.approx(0.1)
    assert weight_stats(np.ones(10)).capped_fraction is None


def test_estimate_flags_low_ess() -> None:
    r = np.ones(1_000)
    mu = np.full(1_000, 0.5)
    pi = np.zeros(1_000)
    pi[0] = 1.0  # a single non-zero weight: ESS = 1 of 1000
    e = ips(r, mu, pi)
    assert e.ess == pytest.approx(1.0)
    assert e.ess_fraction == pytest.approx(1e-3)
    assert e.low_ess
    assert not ips(r, mu, mu).low_ess
    assert direct_method(r).ess is None and not direct_method(r).low_ess


def test_implied_rate_bandit() -> None:
    d = _bandit_log(20_000, seed=11)
    p1 = PI1[d["x"]]
    rate = implied_rate(p1)
    assert rate.allocation_ratio == pytest.approx(p1.mean())
    assert rate.cost is None
    # Cost = displaced video time when inserting: c = a * 2 x E[c] under pi is known.
    costs = d["a"] * 2.0
    rate = implied_rate(p1, d["mu"], d["pi"], costs=costs)
    truth = 2.0 * float(P_X @ PI1)
    assert rate.allocation_ratio == pytest.approx(float(P_X @ PI1), abs=0.01)
    assert rate.cost == pytest.approx(truth, abs=0.03)
    w = d["pi"] / d["mu"]
    assert rate.cost == pytest.approx(float(np.sum(w * costs) / np.sum(w)), rel=1e-12)


# --------------------------------------------------------------------------- 2-step MDP

S_P = np.array([0.5, 0.5])  # initial state distribution
MDP_MU1 = np.array([0.3, 0.6])  # logging pi(insert | s)
MDP_PI1 = np.array([0.7, 0.2])  # target pi(insert | s)
M0 = np.array([[0.2, 0.8], [0.4, 0.5]])  # E[r_0 | s, a]
M1 = np.array([[0.3, 0.7], [0.6, 0.1]])  # E[r_1 | s, a]
EXIT = np.array([0.1, 0.5])  # P(session ends after step 0 | a_0): inserting tires users
P_S1 = np.array([[0.8, 0.2], [0.2, 0.8]])  # P(s_1 | a_0)
GAMMA = 0.9


def _mdp_q() -> tuple[np.ndarray, np.ndarray]:
    """Exact Q_0 (s, a) and Q_1 (s, a) of the target policy."""
    q1 = M1
    v1 = (1.0 - MDP_PI1) * q1[:, 0] + MDP_PI1 * q1[:, 1]
    cont = GAMMA * (1.0 - EXIT) * (P_S1 @ v1)  # (a,)
    q0 = M0 + cont[None, :]
    return q0, q1


def _mdp_truth() -> float:
    q0, _ = _mdp_q()
    v0 = (1.0 - MDP_PI1) * q0[:, 0] + MDP_PI1 * q0[:, 1]
    return float(S_P @ v0)


def _mdp_log(n_sessions: int, seed: int) -> dict[str, np.ndarray]:
    """Roll the logging policy: rows sorted by (session, step)."""
    rng = np.random.default_rng(seed)
    s0 = rng.choice(2, size=n_sessions, p=S_P)
    a0 = (rng.random(n_sessions) < MDP_MU1[s0]).astype(int)
    r0 = M0[s0, a0] + NOISE_SD * rng.standard_normal(n_sessions)
    cont = rng.random(n_sessions) >= EXIT[a0]
    s1 = (rng.random(n_sessions) < P_S1[a0, 1]).astype(int)
    a1 = (rng.random(n_sessions) < MDP_MU1[s1]).astype(int)
    r1 = M1[s1, a1] + NOISE_SD * rng.standard_normal(n_sessions)
    ids = np.arange(n_sessions)
    sid = np.concatenate([ids, ids[cont]])
    step = np.concatenate([np.zeros(n_sessions, int), np.ones(int(cont.sum()), int)])
    s = np.concatenate([s0, s1[cont]])
    a = np.concatenate([a0, a1[cont]])
    r = np.concatenate([r0, r1[cont]])
    order = np.lexsort((step, sid))
    sid, step, s, a, r = sid[order], step[order], s[order], a[order], r[order]
    q0, q1 = _mdp_q()
    q_tab = np.stack([q0, q1])  # (step, s, a)
    q = q_tab[step, s, a]
    v = (1.0 - MDP_PI1[s]) * q_tab[step, s, 0] + MDP_PI1[s] * q_tab[step, s, 1]
    return {
        "sid": sid,
        "step": step,
        "s": s,
        "a": a,
        "r": r,
        "mu": _probs(MDP_MU1, s, a),
        "pi": _probs(MDP_PI1, s, a),
        "q": q,
        "v": v,
    }


def _seq(d: dict[str, np.ndarray], fn: Callable[..., Estimate], **kw: bool) -> Estimate:
    return fn(d["r"], d["mu"], d["pi"], d["sid"], d["step"], GAMMA, **kw)


def _seq_dr(d: dict[str, np.ndarray], q: np.ndarray, v: np.ndarray, **kw: bool) -> Estimate:
    return sequential_dr(d["r"], d["mu"], d["pi"], q, v, d["sid"], d["step"], GAMMA, **kw)


def test_sequential_estimators_recover_two_step_value() -> None:
    truth = _mdp_truth()
    d = _mdp_log(40_000, seed=5)
    estimates = {
        "pdis": _seq(d, pdis),
        "wpdis": _seq(d, pdis, weighted=True),
        "is": _seq(d, trajectory_is),
        "wis": _seq(d, trajectory_is, weighted=True),
        "dr": _seq_dr(d, d["q"], d["v"]),
        "wdr": _seq_dr(d, d["q"], d["v"], weighted=True),
        "dr_wrong_q": _seq_dr(d, np.full_like(d["q"], 0.5), np.full_like(d["v"], 0.5)),
    }
    for name, est in estimates.items():
        assert est.n == 40_000
        assert abs(est.value - truth) < 0.03, (name, est.value, truth)
    # The per-decision (bandit) estimator on the same rows answers a different question.
    assert abs(snips(d["r"], d["mu"], d["pi"]).value - truth) > 0.3
    # ESS refers to the sessions' final weights.
    rho = cumulative_importance_weights(d["mu"], d["pi"], d["sid"], d["step"])
    last = np.append(d["sid"][1:] != d["sid"][:-1], True)
    assert estimates["pdis"].ess == pytest.approx(effective_sample_size(rho[last]))


def test_sequential_variance_ordering() -> None:
    vals: dict[str, list[float]] = {"pdis": [], "is": [], "dr": []}
    for seed in range(30):
        d = _mdp_log(2_000, seed=200 + seed)
        vals["pdis"].append(_seq(d, pdis).value)
        vals["is"].append(_seq(d, trajectory_is).value)
        vals["dr"].append(_seq_dr(d, d["q"], d["v"]).value)
    sd = {k: float(np.std(v)) for k, v in vals.items()}
    assert sd["is"] > 1.1 * sd["pdis"]
    assert sd["dr"] < 0.6 * sd["pdis"]
    truth = _mdp_truth()
    for k, v in vals.items():  # unbiased: means within 4 standard errors
        assert abs(np.mean(v) - truth) < 4 * sd[k] / math.sqrt(30), k


def test_sequential_on_policy_and_weighting_conventions() -> None:
    d = _mdp_log(500, seed=9)
    on = {**d, "pi": d["mu"]}
    disc = GAMMA ** d["step"] * d["r"]
    mean_return = float(disc.sum() / 500)
    for fn in (pdis, trajectory_is):
        for weighted in (False, True):
            assert _seq(on, fn, weighted=weighted).value == pytest.approx(mean_return)
    # With gamma = 0 only step-0 rewards count.
    est = pdis(d["r"], d["mu"], d["mu"], d["sid"], d["step"], 0.0)
    assert est.value == pytest.approx(float(d["r"][d["step"] == 0].mean()))
    # Hand-computed PDIS on two tiny sessions: weights 2, then 2 * 0.5.
    r = np.array([1.0, 1.0, 3.0])
    mu = np.array([0.5, 0.5, 0.5])
    pi = np.array([1.0, 0.25, 1.0])
    sid = np.array([7, 7, 8])
    st = np.array([0, 1, 0])
    expected = (2 * 1 + 0.5 * 1 * 1 + 2 * 3) / 2
    assert pdis(r, mu, pi, sid, st, 0.5).value == pytest.approx(expected)
    expected = (1 * 1.5 + 2 * 3) / 2
    assert trajectory_is(r, mu, pi, sid, st, 0.5).value == pytest.approx(expected)
    # WPDIS: D_0 = 2 + 2 = 4; D_1 = 1 (alive) + 2 (session 8 ended, keeps its weight).
    wp = pdis(r, mu, pi, sid, st, 0.5, weighted=True).value
    assert wp == pytest.approx((2 * 1 + 2 * 3) / 4 + 0.5 * 1 * 1 / 3)


def test_sequential_implied_rate() -> None:
    d = _mdp_log(40_000, seed=21)
    p1 = MDP_PI1[d["s"]]
    rate = implied_rate(p1, d["mu"], d["pi"], costs=d["a"].astype(float),
                        session_ids=d["sid"], steps=d["step"])
    # Truth: E_pi[#inserts] / E_pi[#decisions].
    alive1 = S_P @ ((1 - MDP_PI1) * (1 - EXIT[0]) + MDP_PI1 * (1 - EXIT[1]))
    alive_by_a0 = np.stack([(1 - MDP_PI1) * (1 - EXIT[0]), MDP_PI1 * (1 - EXIT[1])], 1)
    s1_dist = S_P @ alive_by_a0 @ P_S1
    inserts = S_P @ MDP_PI1 + s1_dist @ MDP_PI1
    truth = float(inserts / (1.0 + alive1))
    assert rate.allocation_ratio == pytest.approx(truth, abs=0.01)
    # With c_t = a_t the cost per decision estimates the same ratio.
    assert rate.cost == pytest.approx(truth, abs=0.02)
    assert rate.n == d["r"].size


# --------------------------------------------------------------------------- FQE

N_S, N_A = 3, 2
R_TAB = np.array([[0.0, 1.0], [0.5, 0.2], [0.3, 2.0]])


def _next_state(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    return (s + 1 + a) % N_S


def _terminal(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    return (s == 2) & (a == 1)


def _onehot(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    out = np.zeros((s.size, N_S * N_A))
    out[np.arange(s.size), s * N_A + a] = 1.0
    return out


def _phi_pi(s: np.ndarray, pi1: np.ndarray) -> np.ndarray:
    p1 = pi1[s][:, None]
    return (1.0 - p1) * _onehot(s, np.zeros_like(s)) + p1 * _onehot(s, np.ones_like(s))


def test_fqe_recovers_tabular_mdp_value() -> None:
    gamma = 0.9
    mu1 = np.array([0.5, 0.5, 0.3])
    pi1 = np.array([0.8, 0.1, 0.6])
    rng = np.random.default_rng(0)
    n_sessions, horizon = 300, 30
    rows_s, rows_a, starts = [], [], rng.integers(0, N_S, size=n_sessions)
    for s0 in starts:  # small Python rollout: 300 sessions
        s = int(s0)
        for _ in range(horizon):
            a = int(rng.random() < mu1[s])
            rows_s.append(s)
            rows_a.append(a)
            if _terminal(np.array(s), np.array(a)):
                break
            s = int(_next_state(np.array(s), np.array(a)))
    s_arr, a_arr = np.array(rows_s), np.array(rows_a)
    done = _terminal(s_arr, a_arr)
    phi_next = _phi_pi(_next_state(s_arr, a_arr), pi1) * (~done)[:, None]
    phi_start = _phi_pi(starts, pi1)
    r = R_TAB[s_arr, a_arr]

    # Exact Q: solve Q = R + gamma * P_pi Q over the 6 (s, a) pairs.
    s_all = np.repeat(np.arange(N_S), N_A)
    a_all = np.tile(np.arange(N_A), N_S)
    p_pi = _phi_pi(_next_state(s_all, a_all), pi1) * (~_terminal(s_all, a_all))[:, None]
    q_true = np.linalg.solve(np.eye(N_S * N_A) - gamma * p_pi, R_TAB[s_all, a_all])
    truth = float(np.mean(phi_start @ q_true))

    phi = _onehot(s_arr, a_arr)
    lstd = fqe(phi, phi_next, r, done, phi_start, gamma, iterations=None, ridge=1e-9)
    it = fqe(phi, phi_next, r, done, phi_start, gamma, iterations=400, ridge=1e-9)
    assert lstd.value == pytest.approx(truth, abs=1e-6)
    assert it.value == pytest.approx(truth, abs=1e-6)
    assert lstd.ess is None and lstd.n == n_sessions
    theta = fit_fqe(phi, phi_next, r, done, gamma, iterations=None, ridge=1e-9)
    np.testing.assert_allclose(theta, q_true, atol=1e-6)
    # A large ridge shrinks Q towards 0; the bias vanishes as ridge -> 0.
    errs = [
        abs(fqe(phi, phi_next, r, done, phi_start, gamma, None, lam).value - truth)
        for lam in (100.0, 1.0, 1e-3)
    ]
    assert errs[0] > errs[1] > errs[2]
    # Few iterations give the truncated (K-step) value, below the truth here (r >= 0).
    assert fqe(phi, phi_next, r, done, phi_start, gamma, 2, 1e-9).value < truth


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_covers_true_value() -> None:
    p, n = 0.3, 1_000
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        r = (rng.random(n) < p).astype(float)
        mu = np.full(n, 0.5)
        low, high = bootstrap_ci(lambda idx: snips(r[idx], mu[idx], mu[idx]).value, n,
                                 n_boot=300, seed=seed)
        assert low < r.mean() < high
        half = 1.96 * math.sqrt(p * (1 - p) / n)
        assert high - low == pytest.approx(2 * half, rel=0.25)
        covered += low <= p <= high
    assert covered >= 17


def test_bootstrap_by_groups_keeps_sessions_whole() -> None:
    # Sessions of different lengths whose discounted returns (gamma = 1) are all 4.
    rewards_by_session = [
        [4.0], [1.0, 3.0], [2.0, 2.0], [0.0, 1.0, 3.0], [4.0, 0.0, 0.0, 0.0]
    ]
    sid = np.concatenate([[k] * len(v) for k, v in enumerate(rewards_by_session)])
    step = np.concatenate([np.arange(len(v)) for v in rewards_by_session])
    r = np.concatenate(rewards_by_session)
    mu = np.full(r.size, 0.5)
    original = {k: np.flatnonzero(sid == k) for k in range(len(rewards_by_session))}
    seen_repeat = []

    def estimator(idx: np.ndarray) -> float:
        # Every block starting at step 0 must be exactly one original session, in order.
        starts = np.flatnonzero(step[idx] == 0)
        blocks = np.split(idx, starts[1:])
        for block in blocks:
            np.testing.assert_array_equal(block, original[int(sid[block[0]])])
        seen_repeat.append(len(blocks) > len({int(sid[b[0]]) for b in blocks}))
        return pdis(r[idx], mu[idx], mu[idx], sid[idx], step[idx], 1.0).value

    ci = bootstrap_ci(estimator, r.size, n_boot=200, groups=sid)
    assert ci == pytest.approx((4.0, 4.0))
    assert any(seen_repeat)  # duplicated sessions were drawn and read as separate ones
    # Resampling by users (two sessions each) keeps each user's sessions whole too.
    users = sid // 2
    ci = bootstrap_ci(estimator, r.size, n_boot=100, groups=users)
    assert ci == pytest.approx((4.0, 4.0))
    # Resampling rows breaks sessions apart, so the same statistic varies.
    def row_total(idx: np.ndarray) -> float:
        return float(r[idx].sum() / len(rewards_by_session))

    low, high = bootstrap_ci(row_total, r.size, n_boot=200)
    assert high > low
    # Same seed, same interval.
    assert bootstrap_ci(row_total, r.size, n_boot=200) == (low, high)


# --------------------------------------------------------------------------- validation

R3 = np.array([1.0, 0.0, 1.0])
P3 = np.array([0.5, 0.5, 0.5])
NAN3 = np.array([0.1, np.nan, 0.2])
I3 = np.eye(3)
F3 = np.zeros(3, dtype=bool)  # done flags
S3 = np.zeros(3, dtype=int)  # one session
T3 = np.arange(3)  # its steps


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ips(R3, P3, P3[:2]), "length mismatch"),
        (lambda: ips(R3, np.array([0.5, 0.0, 0.5]), P3), "logging_propensity"),
        (lambda: ips(R3, np.array([0.5, 1.2, 0.5]), P3), "logging_propensity"),
        (lambda: snips(R3, P3, np.array([0.5, -0.1, 0.5])), "target_propensity"),
        (lambda: snips(R3, P3, np.array([0.5, np.nan, 0.5])), "target_propensity"),
        (lambda: ips(np.array([1.0, np.nan, 0.0]), P3, P3), "rewards"),
        (lambda: ips(np.array([]), np.array([]), np.array([])), "rewards"),
        (lambda: ips(R3.reshape(3, 1), P3, P3), "rewards"),
        (lambda: snips(R3, P3, np.zeros(3)), "all importance weights are zero"),
        (lambda: ncis(R3, P3, P3, cap=0.0), "cap"),
        (lambda: ncis(R3, P3, P3, cap=2.0, cap_quantile=0.5), "cap_quantile"),
        (lambda: ncis(R3, P3, P3, cap_quantile=1.5), "cap_quantile"),
        (lambda: doubly_robust(R3, P3, P3, NAN3, R3), "q_hat_logged"),
        (lambda: doubly_robust(R3, P3, P3, R3, R3[:2]), "v_hat"),
        (lambda: effective_sample_size(np.array([1.0, -1.0])), "weights"),
        (lambda: weight_stats(np.array([1.0, np.inf])), "weights"),
        (lambda: pdis(R3, P3, P3, np.array([0, 0, 1]), np.array([0, 2, 0]), 0.9), "steps"),
        (lambda: pdis(R3, P3, P3, np.array([0, 1, 1]), np.array([0, 1, 0]), 0.9), "steps"),
        (lambda: pdis(R3, P3, P3, S3, T3.astype(float), 0.9), "steps"),
        (lambda: pdis(R3, P3, P3, S3[:2], T3, 0.9), "session_ids"),
        (lambda: pdis(R3, P3, P3, S3, T3, 1.5), "gamma"),
        (lambda: sequential_dr(R3, P3, P3, R3, R3[:1], S3, T3, 0.9), "v_hat"),
        (lambda: fqe(I3, I3, R3, np.array([0, 0, 1]), I3, 0.9), "done"),
        (lambda: fqe(I3, np.eye(2), R3, F3, I3, 0.9), "phi_next_pi"),
        (lambda: fqe(I3, I3, R3, F3, np.eye(2), 0.9), "phi_start_pi"),
        (lambda: fqe(I3, I3, R3, F3, I3, 0.9, 0), "iterations"),
        (lambda: fqe(I3, I3, R3, F3, I3, 0.9, ridge=-1.0), "ridge"),
        (lambda: implied_rate(np.array([0.5, 1.5])), "target_prob_insert"),
        (lambda: implied_rate(P3, costs=R3), "logging_propensity and target_propensity"),
        (lambda: implied_rate(P3, P3, P3, session_ids=S3), "session_ids and steps"),
        (lambda: bootstrap_ci(lambda i: 0.0, 3, groups=np.array([0, 1])), "groups"),
        (lambda: bootstrap_ci(lambda i: 0.0, 3, alpha=1.0), "alpha"),
        (lambda: bootstrap_ci(lambda i: 0.0, 0), "n must"),
        (lambda: bootstrap_ci(lambda i: float("nan"), 3, n_boot=5), "NaN"),
    ],
)
def test_validation_errors_name_the_argument(
    call: Callable[[], object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        call()
