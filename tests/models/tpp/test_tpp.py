"""Tests for models/tpp: batch, likelihood, thinning, AttNHP (+ prompt pool), THP, full-state checkpoints.

Each test names the defect of the reference code (brief ``tpp.md`` §6) or the failure it would catch. CPU, tiny
shapes."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from torch import Tensor

from models.tpp import (
    THP,
    AttNHP,
    NeuralTPP,
    PoissonTPP,
    PromptConfig,
    TPPBatch,
    TPPConfig,
    load_state,
    sample_next,
    save_state,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _cfg(prompt: PromptConfig | None = None, **kw: object) -> TPPConfig:
    base: dict = dict(n_types=4, d_model=8, d_time=4, layers=2, heads=2, n_mc=5, n_samples=20, dtime_max=10.0)
    base.update(kw)
    return TPPConfig(prompt=prompt, **base)


def _prompt(**kw: object) -> PromptConfig:
    base: dict = dict(pool_size=6, prompt_len=2, top_n=3)
    base.update(kw)
    return PromptConfig(**base)


def _random_lists(n_seq: int, max_len: int, seed: int, t0: float = 0.0, min_len: int = 2,
                  rates: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> tuple[list[list[float]], list[list[int]]]:
    """Marked Poisson sequences with per-mark ``rates`` (lengths uniform in [min_len, max_len])."""
    g = torch.Generator().manual_seed(seed)
    r = torch.tensor(rates)
    times, types = [], []
    for _ in range(n_seq):
        n = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        gaps = torch.empty(n).exponential_(generator=g) / r.sum()
        times.append((t0 + gaps.cumsum(0)).tolist())
        types.append(torch.multinomial(r / r.sum(), n, replacement=True, generator=g).tolist())
    return times, types


def _make(kind: str) -> NeuralTPP:
    if kind == "attnhp":
        return AttNHP(_cfg())
    if kind == "attnhp_prompt":
        return AttNHP(_cfg(_prompt()))
    if kind == "thp":
        return THP(_cfg())
    raise ValueError(kind)


def _mid_queries(batch: TPPBatch, fracs: tuple[float, ...] = (0.1, 0.5, 1.0)) -> Tensor:
    """Query times inside each row's interval (t_i, t_{i+1}] (1.0 past the last event) -> [B, S, G]."""
    t = batch.times
    gap = torch.cat([t[:, 1:] - t[:, :-1], torch.ones_like(t[:, :1])], 1)
    gap = torch.where(gap > 0, gap, torch.ones_like(gap))
    return t[..., None] + torch.tensor(fracs) * gap[..., None]


# =============================================================================
# Batch
# =============================================================================


def test_batch_from_lists_padding_dt_and_validation() -> None:
    b = TPPBatch.from_lists([[1.0, 1.5, 3.0], [2.0], []], [[0, 1, 3], [2], []])
    assert len(b) == 3 and b.times.shape == (3, 3)
    assert b.valid.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert torch.allclose(b.dt[0], torch.tensor([0.0, 0.5, 1.5])) and b.dt[1:].abs().sum() == 0
    assert b.lengths.tolist() == [3, 1, 0] and b.last_time().tolist() == [3.0, 2.0, 0.0]
    assert b.select([1]).times.shape == (1, 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        TPPBatch.from_lists([[1.0, 1.0]], [[0, 1]])
    with pytest.raises(ValueError, match="left-aligned"):
        TPPBatch(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2, dtype=torch.long), torch.tensor([[False, True]]))
    with pytest.raises(ValueError, match="t_end"):
        TPPBatch.from_lists([[1.0, 2.0]], [[0, 1]], t_end=[1.5])


# =============================================================================
# Causality (brief §11; defects 1 and 2)
# =============================================================================


@pytest.mark.parametrize("kind", ["attnhp", "attnhp_prompt", "thp"])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("what", ["type", "time"])
def test_perturbing_event_j_changes_only_positions_from_j(kind: str, mode: str, what: str) -> None:
    model = _make(kind).train(mode == "train")
    times, types = _random_lists(2, 12, seed=1, min_len=12)
    batch = TPPBatch.from_lists(times, types)
    q = _mid_queries(batch)
    j = 6
    t2, k2 = [list(ts) for ts in times], [list(ks) for ks in types]
    for s in range(2):
        if what == "type":
            k2[s][j] = (k2[s][j] + 1) % 4
        else:  # move event j inside (t_{j-1}, t_{j+1}); the query times stay fixed
            t2[s][j] = 0.5 * (t2[s][j - 1] + t2[s][j]) if s == 0 else 0.5 * (t2[s][j] + t2[s][j + 1])
    pert = TPPBatch.from_lists(t2, k2)
    with torch.no_grad():
        e1, e2 = model.encode(batch), model.encode(pert)
        l1, l2 = model.intensity_at(e1, q), model.intensity_at(e2, q)
    torch.testing.assert_close(e1.hidden[:, :j], e2.hidden[:, :j], rtol=0, atol=1e-6)
    torch.testing.assert_close(l1[:, :j], l2[:, :j], rtol=0, atol=1e-6)
    for i in range(j, 12):  # every later position sees the change (hidden of THP's row i, intensities of all)
        assert (l1[:, i] - l2[:, i]).abs().amax() > 1e-6, f"position {i} did not react to event {j}"
    assert (e1.hidden[:, j] - e2.hidden[:, j]).abs().amax() > 1e-6


def test_prompted_future_tail_does_not_leak_into_earlier_positions() -> None:
    """Defect 1's failure mode: with the unshifted mask, perturbing the last event times changed EVERY position."""
    model = AttNHP(_cfg(_prompt(pool_size=10, prompt_len=5, top_n=5))).eval()
    times, types = _random_lists(1, 30, seed=2, min_len=30)
    batch = TPPBatch.from_lists(times, types)
    t2 = [times[0][:-3] + [x + 5.0 for x in times[0][-3:]]]
    pert = TPPBatch.from_lists(t2, types)
    q = _mid_queries(batch)
    with torch.no_grad():
        l1, l2 = model.intensities(batch, q), model.intensities(pert, q)
        h1, h2 = model.encode(batch).hidden, model.encode(pert).hidden
    torch.testing.assert_close(l1[:, :27], l2[:, :27], rtol=0, atol=1e-6)
    torch.testing.assert_close(h1[:, :27], h2[:, :27], rtol=0, atol=1e-6)
    assert (h1[:, 27:] - h2[:, 27:]).abs().amax(-1).min() > 1e-6


def test_prompts_visible_to_every_row_and_events_only_causally() -> None:
    """Defect 1: the prompt columns must be unmasked for every row, event columns masked exactly for j > i."""
    pc = _prompt(pool_size=5, prompt_len=3, top_n=2)
    model = AttNHP(_cfg(pc)).eval()
    times, types = _random_lists(2, 7, seed=3, min_len=7)
    batch = TPPBatch.from_lists(times, types)
    enc = model.encode(batch)
    layer, c = model.stacks[0][1], enc.cache[0][1]
    s, p = 7, pc.n_tokens
    x = torch.randn(2, s, 3, 12)  # 3 query rows per position, D = 8 + 4
    _, a = layer.attend(x, c.k, c.v, c.prompt, include_self=True, return_weights=True)
    assert a.shape == (2, s, 3, p + s + 1)
    assert (a[..., :p] > 0).all(), "a prompt token is hidden from some row"
    future = torch.ones(s, s, dtype=torch.bool).triu(1)[None, :, None, :].expand(2, s, 3, s)
    assert (a[..., p:p + s][future] == 0).all() and (a[..., p:p + s][~future] > 0).all()
    assert (a[..., -1] > 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, s, 3))
    # and the prompts do reach position 0's output
    with torch.no_grad():
        h1 = model.encode(batch).hidden
        for stack in model.stacks:
            for lay in stack:
                lay.pool_v.prompts.add_(1.0)
        h2 = model.encode(batch).hidden
    assert (h1[:, 0] - h2[:, 0]).abs().amax() > 1e-4


def test_attnhp_query_chunking_and_padding_values_do_not_change_results() -> None:
    model = AttNHP(_cfg(_prompt())).eval()
    batch = TPPBatch.from_lists(*_random_lists(3, 6, seed=13))
    q = batch.times[..., None] + torch.rand(*batch.times.shape, 40)
    chunked = AttNHP(_cfg(_prompt(), max_attn_elems=200)).eval()
    chunked.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = model.intensities(batch, q)
        torch.testing.assert_close(chunked.intensities(batch, q), ref)
        junk = TPPBatch(batch.times, batch.types.masked_fill(~batch.valid, -1), batch.valid)  # -1 padding marks
        torch.testing.assert_close(model.intensities(junk, q)[batch.valid], ref[batch.valid])


# =============================================================================
# Log-likelihood
# =============================================================================


@pytest.mark.parametrize("rule", ["mc", "trapezoid"])
def test_poisson_log_likelihood_matches_closed_form(rule: str) -> None:
    rates = torch.tensor([0.5, 1.0, 2.0, 0.25])
    model = PoissonTPP(_cfg())
    with torch.no_grad():
        model.log_rate.copy_(rates.log())
    times, types = _random_lists(5, 9, seed=4, min_len=1)
    t_end = [ts[-1] + 0.7 for ts in times]
    for end in (None, t_end):
        batch = TPPBatch.from_lists(times, types, t_end=end)
        ll = model.log_likelihood(batch, rule=rule, n_points=7)
        assert ll.total.requires_grad
        for b, (ts, ks) in enumerate(zip(times, types)):
            span = ts[-1] - ts[0] + (0.7 if end is not None else 0.0)
            expect = sum(math.log(rates[k]) for k in ks[1:]) - float(rates.sum()) * span
            assert ll.n_events[b] == len(ts) - 1
            assert float(ll.total[b].detach()) == pytest.approx(expect, rel=1e-5, abs=1e-5)


def test_attnhp_event_term_exact_and_mc_integral_converges_to_dense_trapezoid() -> None:
    model = AttNHP(_cfg(_prompt())).eval()
    times, types = _random_lists(2, 6, seed=5, min_len=6)
    batch = TPPBatch.from_lists(times, types)
    with torch.no_grad():
        enc = model.encode(batch)
        ref = model.log_likelihood(batch, n_points=801, rule="trapezoid", enc=enc)
        # event term = log lambda_{k_{i+1}}(t_{i+1}) on row i
        lam = model.intensity_at(enc, torch.cat([batch.times[:, 1:], batch.times[:, -1:]], 1)[..., None])[:, :, 0]
        ev = lam[:, :-1].gather(-1, batch.types[:, 1:, None])[..., 0].log().sum(1)
        torch.testing.assert_close(ref.event_ll, ev, rtol=1e-5, atol=1e-5)
        g = torch.Generator().manual_seed(0)
        err_small = torch.stack([(model.log_likelihood(batch, n_points=2, generator=g, enc=enc).non_event
                                  - ref.non_event).abs() for _ in range(10)]).mean()
        big = model.log_likelihood(batch, n_points=2000, generator=g, enc=enc)
    err_big = (big.non_event - ref.non_event).abs()
    assert (err_big <= 0.03 * ref.non_event).all()
    assert err_big.mean() < err_small
    torch.testing.assert_close(big.event_ll, ref.event_ll)


def test_loss_reports_pure_log_likelihood_and_adds_prompt_term() -> None:
    """Defect 7: the reported log-likelihood must not contain the prompt matching term."""
    model = AttNHP(_cfg(_prompt(alpha=0.5)))
    times, types = _random_lists(3, 8, seed=6)
    batch = TPPBatch.from_lists(times, types)
    loss, stats = model.loss(batch, generator=torch.Generator().manual_seed(1))
    ll = model.log_likelihood(batch, generator=torch.Generator().manual_seed(1))
    pure = float(ll.total.sum().detach() / ll.n_events.sum())
    assert stats["ll_per_event"] == pytest.approx(pure, rel=1e-5)
    assert stats["aux_loss"] > 0
    assert float(loss.detach()) == pytest.approx(-pure + stats["aux_loss"], rel=1e-5)


# =============================================================================
# Thinning (defects 3 and 4)
# =============================================================================


def _const(rate: float, k: int = 4):
    return lambda q: torch.full((*q.shape, k), rate / k)


@pytest.mark.parametrize("bound", [2.0, 5.0])
def test_thinning_constant_rate_mean(bound: float) -> None:
    """Rate 2 -> mean 0.5; with the loose bound 5 the i.i.d.-candidate sampler (no cumsum) gives about 0.2."""
    last = torch.arange(200.0).reshape(8, 25) + 100.0
    out = sample_next(_const(2.0), last, torch.full_like(last, bound), n_samples=100, dtime_max=20.0,
                      generator=torch.Generator().manual_seed(0))
    assert float(out.dt_mean.mean()) == pytest.approx(0.5, abs=0.02)
    torch.testing.assert_close(out.type_probs, torch.full((8, 25, 4), 0.25))
    assert out.bound_violations == 0 and out.censored_share == 0.0
    assert out.accepted_share == pytest.approx(2.0 / bound, abs=0.02)


def test_thinning_linear_intensity_mean_types_and_absolute_time_coordinate() -> None:
    """lambda(t) = 1 + (t - t_i) split into marks 0 (the 1) and 1 (the ramp): mean dt = 0.6557 and P(mark 1) =
    1 - 0.6557. The fn reads ABSOLUTE times (defect 3): passing relative times would make the ramp negative."""
    last = torch.linspace(100.0, 130.0, 30).reshape(3, 10)
    seen: list[Tensor] = []

    def fn(q: Tensor) -> Tensor:
        seen.append(q - last[..., None])
        ramp = (q - last[..., None]).clamp_min(0.0)
        return torch.stack([torch.ones_like(q), ramp, torch.zeros_like(q), torch.zeros_like(q)], -1)

    out = sample_next(fn, last, torch.full_like(last, 11.0), n_samples=400, dtime_max=10.0, n_exp=8,
                      generator=torch.Generator().manual_seed(0))
    assert float(out.dt_mean.mean()) == pytest.approx(0.6557, abs=0.02)
    assert float(out.type_probs[..., 1].mean()) == pytest.approx(1 - 0.6557, abs=0.02)
    assert out.bound_violations == 0
    assert min(float(d.min()) for d in seen) >= 0.0


def test_thinning_detects_invalid_bound_and_reports_censoring() -> None:
    last = torch.zeros(2, 5)
    ramp = lambda q: torch.stack([1.0 + q, torch.zeros_like(q)], -1)  # noqa: E731
    bad = sample_next(ramp, last, torch.full_like(last, 1.5), n_samples=50, dtime_max=10.0,
                      generator=torch.Generator().manual_seed(0))
    assert bad.bound_violations > 0
    slow = sample_next(_const(0.1), last, torch.full_like(last, 0.1), n_samples=200, dtime_max=1.0,
                       generator=torch.Generator().manual_seed(0))
    assert slow.censored_share == pytest.approx(math.exp(-0.1), abs=0.03)
    assert float(slow.samples.max()) == 1.0


@pytest.mark.parametrize("kind", ["attnhp_prompt", "thp"])
def test_model_sampler_queries_are_after_history_and_bound_holds(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every query time handed to the model by predict_next is >= the last history time of its row (defect 3)."""
    model = _make(kind).eval()
    times, types = _random_lists(3, 10, seed=7, t0=100.0)
    batch = TPPBatch.from_lists(times, types)
    gaps: list[Tensor] = []
    orig = model.intensity_at

    def spy(enc, q):
        gaps.append((q - enc.batch.times[..., None])[enc.batch.valid])
        return orig(enc, q)

    monkeypatch.setattr(model, "intensity_at", spy)
    out = model.predict_next(batch, n_samples=30, generator=torch.Generator().manual_seed(0))
    assert min(float(g.min()) for g in gaps) >= 0.0
    assert out.bound_violations == 0
    assert out.dt_mean.shape == batch.times.shape and (out.dt_mean[batch.valid] > 0).all()
    assert torch.equal(out.dt, out.dt_mean) and torch.equal(out.types, out.type_probs.argmax(-1))
    torch.testing.assert_close(out.type_probs[batch.valid].sum(-1), torch.ones(int(batch.valid.sum())))


# =============================================================================
# Batch independence (defect 5)
# =============================================================================


def test_prompted_outputs_do_not_depend_on_batchmates() -> None:
    model = AttNHP(_cfg(_prompt(batchwise_train=True))).eval()
    times, types = _random_lists(6, 11, seed=8)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3)).tolist()
    big = TPPBatch.from_lists([times[i] for i in perm], [types[i] for i in perm])
    with torch.no_grad():
        enc_big = model.encode(big)
        lam_big = model.intensity_at(enc_big, _mid_queries(big))
        ll_big = model.log_likelihood(big, rule="trapezoid", n_points=9, enc=enc_big)
        bound_big = model.intensity_bound(enc_big, 5.0)
        for row, i in enumerate(perm):
            one = TPPBatch.from_lists([times[i]], [types[i]])
            n = len(times[i])
            enc = model.encode(one)
            torch.testing.assert_close(enc.hidden[0], enc_big.hidden[row, :n], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.intensity_at(enc, _mid_queries(one))[0], lam_big[row, :n],
                                       rtol=1e-5, atol=1e-5)
            ll = model.log_likelihood(one, rule="trapezoid", n_points=9, enc=enc)
            assert float(ll.total[0]) == pytest.approx(float(ll_big.total[row]), rel=1e-5, abs=1e-5)
            torch.testing.assert_close(model.intensity_bound(enc, 5.0)[0], bound_big[row, :n], rtol=1e-5, atol=1e-5)
            assert torch.equal(enc.cache[1][1].prompt.idx_v[0], enc_big.cache[1][1].prompt.idx_v[row, :n])


# =============================================================================
# Hyperparameters wired (defect 7)
# =============================================================================


@pytest.mark.parametrize(("pool", "plen", "top"), [(10, 5, 5), (4, 3, 1), (7, 1, 7)])
def test_prompt_hyperparameters_reach_the_pools(pool: int, plen: int, top: int) -> None:
    cfg = _cfg(PromptConfig(pool_size=pool, prompt_len=plen, top_n=top), layers=2, heads=2)
    model = AttNHP(cfg)
    pools = [p for stack in model.stacks for lay in stack for p in (lay.pool_k, lay.pool_v)]
    assert len(pools) == 8
    assert all(p.keys.shape == (pool, 12) and p.prompts.shape == (pool, plen, 8) for p in pools)
    batch = TPPBatch.from_lists(*_random_lists(2, 5, seed=9, min_len=5))
    enc = model.encode(batch)
    ctx = enc.cache[0][0].prompt
    assert ctx.idx_k.shape == (2, 5, top) and ctx.n_tokens == top * plen == cfg.prompt.n_tokens
    _, a = model.stacks[0][0].attend(torch.randn(2, 5, 1, 12), enc.cache[0][0].k, enc.cache[0][0].v, ctx,
                                     include_self=True, return_weights=True)
    assert a.shape[-1] == top * plen + 5 + 1
    n_prompt = sum(p.numel() for p in pools for p in (p.keys, p.prompts))
    assert n_prompt == 8 * (pool * 12 + pool * plen * 8)


def test_alpha_time_prompt_and_batchwise_switches_are_used() -> None:
    batch = TPPBatch.from_lists(*_random_lists(3, 9, seed=10, min_len=4))
    outs = {}
    for alpha in (0.1, 0.3):
        torch.manual_seed(0)
        outs[alpha] = AttNHP(_cfg(_prompt(alpha=alpha))).eval().encode(batch).aux_loss.detach()
    assert float(outs[0.3]) == pytest.approx(3 * float(outs[0.1]), rel=1e-5)
    q = _mid_queries(batch)
    lams = {}
    for mode in ("causal_mean", "mean", "task_const"):
        torch.manual_seed(0)
        m = AttNHP(_cfg(_prompt(time_prompt=mode))).eval()
        lams[mode] = m.intensities(batch, q).detach()
    assert not torch.allclose(lams["causal_mean"], lams["mean"])
    m.set_task_time(7.0)
    assert not torch.allclose(m.intensities(batch, q).detach(), lams["task_const"])
    torch.manual_seed(0)
    bw = AttNHP(_cfg(_prompt(batchwise_train=True))).train()
    idx = bw.encode(batch).cache[0][0].prompt.idx_k
    assert (idx == idx[0, 0]).all()  # one shared selection in training mode
    per_pos = bw.eval().encode(batch).cache[0][0].prompt.idx_k
    assert per_pos.shape == idx.shape and not torch.equal(per_pos, idx)  # per position at evaluation


# =============================================================================
# Full-state checkpoints (defect 6)
# =============================================================================


def test_state_round_trip_restores_everything_and_rejects_mismatch(tmp_path) -> None:
    cfg = _cfg(_prompt(time_prompt="task_const"))
    model = AttNHP(cfg)
    model.set_task_time(2.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = TPPBatch.from_lists(*_random_lists(3, 8, seed=11))
    for _ in range(2):
        opt.zero_grad()
        model.loss(batch)[0].backward()
        opt.step()
    buf = io.BytesIO()
    gen = torch.Generator().manual_seed(5)
    save_state(buf, model, opt, extra={"task": 3, "gen": gen.get_state(), "note": "w1"})
    after = (torch.rand(4), random.random(), np.random.rand())

    torch.manual_seed(123)
    fresh = AttNHP(cfg)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    buf.seek(0)
    got = load_state(buf, fresh, fresh_opt)
    assert got.extra["task"] == 3 and got.extra["note"] == "w1" and got.n_tensors == len(model.state_dict())
    now = (torch.rand(4), random.random(), np.random.rand())
    assert torch.equal(now[0], after[0]) and now[1:] == after[1:]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name
    assert float(fresh.task_time) == 2.5
    so, sf = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert so.keys() == sf.keys() and all(torch.equal(so[k][f], sf[k][f]) for k in so for f in so[k])
    # training continues identically
    for m, o in ((model, opt), (fresh, fresh_opt)):
        o.zero_grad()
        m.loss(batch, generator=torch.Generator().manual_seed(0))[0].backward()
        o.step()
    for (n1, p1), (_, p2) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p1, p2), n1

    path = tmp_path / "state.pt"
    save_state(path, model, opt, extra={"task": 4})
    assert load_state(path, model).extra == {"task": 4}
    with pytest.raises(ValueError, match="config"):
        load_state(path, AttNHP(_cfg(_prompt(pool_size=8, time_prompt="task_const"))))
    with pytest.raises(ValueError, match="checkpoint of AttNHP"):
        load_state(path, THP(_cfg()))
    payload = torch.load(path, weights_only=True)
    payload["model"].pop(next(iter(payload["model"])))
    bad = io.BytesIO()
    torch.save(payload, bad)
    bad.seek(0)
    with pytest.raises(RuntimeError, match="tensors"):
        load_state(bad, model)
    with pytest.raises(TypeError, match="plain"):
        save_state(io.BytesIO(), model, extra={"bad": object()})


def test_state_rng_restore() -> None:
    model = THP(_cfg())
    buf = io.BytesIO()
    save_state(buf, model)
    a = (torch.rand(5), random.random(), np.random.rand(2))
    buf.seek(0)
    load_state(buf, model)
    b = (torch.rand(5), random.random(), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


# =============================================================================
# Training smoke test
# =============================================================================


@pytest.mark.parametrize("kind", ["attnhp_prompt", "thp"])
def test_thirty_adam_steps_increase_log_likelihood(kind: str) -> None:
    model = _make(kind)
    batch = TPPBatch.from_lists(*_random_lists(8, 16, seed=12, min_len=8, rates=(3.0, 1.0, 0.5, 0.25)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def ll_per_event() -> float:
        with torch.no_grad():
            ll = model.eval().log_likelihood(batch, rule="trapezoid", n_points=11)
        model.train()
        return float(ll.total.sum() / ll.n_events.sum())

    before = ll_per_event()
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch, generator=g)[0].backward()
        opt.step()
    after = ll_per_event()
    assert after > before + 0.05, (before, after)
