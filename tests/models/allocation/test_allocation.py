"""Unit tests of the allocation models (SL-MGAC pieces, baselines, export) on toy tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.allocation.baselines import BaselineConfig, BehaviorCloning, DiscreteCQL, DoubleDQN, ThresholdGreedy
from models.allocation.export import TorchPolicy, load_policy, save_policy
from models.allocation.registry import ALLOCATORS, build_allocator
from models.allocation.slmgac import SLMGAC, GroupHeads, Head, SLMGACConfig, two_hot

pytestmark = pytest.mark.usefixtures("torch_one_thread")

F_ = 12  # 9 base features + 3 group columns, the env layout
HAS = 8


def _states(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, F_, generator=g)
    x[:, HAS] = 1.0
    x[:, 9:] = 0.0
    x[torch.arange(n), 9 + torch.randint(0, 3, (n,), generator=g)] = 1.0
    return x


def _batch(n: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = _states(n, seed)
    a = torch.randint(0, 2, (n,), generator=g)
    click = (torch.rand(n, generator=g) < 0.6).float() * a
    return {"s": s, "a": a, "r": click * torch.rand(n, generator=g) * 20, "cost": a * torch.rand(n, generator=g),
            "s_next": _states(n, seed + 1), "done": (torch.rand(n, generator=g) < 0.1).float(),
            "group": s[:, 9:].argmax(1), "click": click}


def _model(**kw) -> SLMGAC:
    torch.manual_seed(0)
    return SLMGAC(SLMGACConfig(n_features=F_, n_groups=3, has_candidate_index=HAS, hidden=16, head_hidden=16,
                               n_bins=11, **kw))


# --------------------------------------------------------------------------------------------------- structure
def test_layernorm_in_every_head() -> None:
    m = _model()
    heads = [mod for mod in m.modules() if isinstance(mod, Head)]
    # actor, critic, exposure (3 groups each, plus 3 target copies of the critics), 3 SL heads, the student
    assert len(heads) == 3 * 3 + 2 * 3 + 3 + 1
    for h in heads:
        assert any(isinstance(x, nn.LayerNorm) for x in h.modules())
    assert any(isinstance(x, nn.LayerNorm) for x in m.encoder.modules())
    for cls in (BehaviorCloning, DoubleDQN):
        net = cls(BaselineConfig(n_features=F_))
        assert sum(isinstance(x, nn.LayerNorm) for x in net.modules()) >= 2


def test_group_heads_route_each_row_to_its_own_head() -> None:
    torch.manual_seed(0)
    gh = GroupHeads(8, 16, 3, n_heads=3)
    h, g = torch.randn(30, 8), torch.arange(30) % 3
    out = gh(h, g)
    for k in range(3):  # routing equals running each group's head separately
        torch.testing.assert_close(out[g == k], gh.heads[k](h[g == k]))
    with torch.no_grad():
        for p in gh.heads[1].parameters():
            p.zero_()
    out2 = gh(h, g)
    torch.testing.assert_close(out2[g != 1], out[g != 1])
    assert not torch.allclose(out2[g == 1], out[g == 1])


def test_shared_group_heads_start_shared_and_learn_a_residual_per_group() -> None:
    torch.manual_seed(0)
    gh = GroupHeads(8, 16, 3, n_heads=3, shared=True)
    h, g = torch.randn(30, 8), torch.arange(30) % 3
    out = gh(h, g)
    torch.testing.assert_close(out, gh.shared(h))  # every group starts at the shared head
    # a loss on group-0 rows only reaches the shared head and group 0's residual, never another group's head
    gh(h[g == 0], g[g == 0]).square().sum().backward()
    assert gh.shared.net[0].weight.grad.abs().sum() > 0
    assert gh.heads[0].net[-1].weight.grad.abs().sum() > 0
    for k in (1, 2):
        assert all(p.grad is None or not p.grad.any() for p in gh.heads[k].parameters())
    with torch.no_grad():
        gh.heads[2].net[-1].bias.fill_(1.0)
    out2 = gh(h, g)
    torch.testing.assert_close(out2[g != 2], out[g != 2])
    torch.testing.assert_close(out2[g == 2], out[g == 2] + 1.0)
    assert GroupHeads(8, 16, 3, n_heads=1, shared=True).shared is None  # one head: nothing to share


def test_actor_output_depends_only_on_its_groups_head() -> None:
    m = _model()
    x = _states(40)
    p = m.prob_insert(x)
    g = m.group_of(x)
    with torch.no_grad():
        for p_ in m.actor.heads[0].parameters():
            p_.zero_()
    p2 = m.prob_insert(x)
    torch.testing.assert_close(p2[g != 0], p[g != 0])
    assert torch.allclose(p2[g == 0], torch.full_like(p2[g == 0], 0.5))  # zeroed head -> logit 0


def test_no_candidate_means_no_insertion() -> None:
    m = _model()
    x = _states(10)
    x[:5, HAS] = 0.0
    assert (m.prob_insert(x)[:5] == 0).all() and (m.student_prob_insert(x)[:5] == 0).all()


# --------------------------------------------------------------------------------------------------- critic
def test_two_hot_mass_mean_and_clipping() -> None:
    support = torch.linspace(-2.0, 10.0, 13)
    y = torch.tensor([-5.0, -2.0, 0.3, 4.75, 9.99, 10.0, 42.0])
    p = two_hot(y, support)
    assert (p >= 0).all() and (p > 0).sum(1).le(2).all()
    torch.testing.assert_close(p.sum(1), torch.ones(7))
    torch.testing.assert_close((p * support).sum(1), y.clamp(-2.0, 10.0))
    assert p[0, 0] == 1 and p[-1, -1] == 1


def test_two_hot_with_a_support_per_row() -> None:
    support = torch.stack([torch.linspace(0.0, 10.0, 11), torch.linspace(-4.0, 40.0, 11)])
    y = torch.tensor([3.3, 3.3, 12.0, 50.0])
    rows = support[torch.tensor([0, 1, 0, 1])]
    p = two_hot(y, rows)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    torch.testing.assert_close((p * rows).sum(1), torch.tensor([3.3, 3.3, 10.0, 40.0]))
    torch.testing.assert_close(p[0], two_hot(y[:1], support[0])[0])


def test_each_group_gets_the_critic_support_of_its_own_returns() -> None:
    """Group heads: each group's atoms span its own logged returns (one terminal step each, so return = reward),
    and Q is read on the row's own atoms; without group heads one support spans all returns."""
    b = _batch(300, seed=4)
    b["done"] = torch.ones(300)
    b["cost"] = torch.zeros(300)
    b["r"] = 5.0 * (b["group"].float() + 1.0) * torch.rand(300, generator=torch.Generator().manual_seed(1))
    m = _model(cost_weight=0.0)
    m.prepare(b)
    assert m.support.shape == (3, 11)
    for k in range(3):
        ret = b["r"][b["group"] == k]
        assert m.support[k, 0] == 0.0
        assert m.support[k, -1] == pytest.approx(float(torch.quantile(ret, 0.995)), rel=1e-5)
    assert m.support[0, -1] < m.support[1, -1] < m.support[2, -1]
    h = m.encode(b["s"])
    dist = m.critic_dist(h, b["group"]).exp()
    q = m.q_values(h, b["group"])
    torch.testing.assert_close(q, (dist * m.support[b["group"]][:, None, :]).sum(-1))
    shared = _model(cost_weight=0.0, multi_group=False)
    shared.prepare(b)
    assert shared.support.shape == (1, 11)
    assert shared.support[0, -1] == pytest.approx(float(torch.quantile(b["r"], 0.995)), rel=1e-5)


def test_group_critic_off_keeps_group_heads_in_the_actor_only() -> None:
    b = _batch(300, seed=4)
    m = _model(group_critic=False)
    m.prepare(b)
    assert len(m.actor.heads) == 3
    assert len(m.critic.heads) == len(m.exposure.heads) == len(m.target_critic.heads) == 1
    assert m.support.shape == (1, 11)  # one support over every group's returns
    out = m.losses(b)  # trains end to end
    assert torch.isfinite(out["loss"])
    h = m.encode(b["s"])
    q = m.q_values(h, b["group"])  # the same head and atoms for every group
    other = (b["group"] + 1) % 3
    torch.testing.assert_close(q, m.q_values(h, other))
    assert not torch.allclose(m.actor_logit(h, b["group"]), m.actor_logit(h, other))


def test_distributional_critic_learns_a_known_mean() -> None:
    """Toy: every transition terminal with r_hat fixed; the critic's mean converges to r_hat."""
    m = _model(sl_reward=False, cost_weight=0.0, alloc_target=None)
    m.support.copy_(torch.linspace(0.0, 10.0, 11))
    b = _batch(128)
    b["done"] = torch.ones(128)
    b["a"] = torch.ones(128, dtype=torch.long)
    b["r"] = torch.full((128,), 3.3)
    opt = torch.optim.Adam(m.critic.parameters(), lr=1e-2)
    for _ in range(150):
        loss = m.losses(b)["critic"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = m.q_values(m.encode(b["s"]), b["group"])[:, 1]
    assert torch.allclose(q, torch.full_like(q, 3.3), atol=0.1)
    probs = m.critic_dist(m.encode(b["s"]), b["group"]).exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(128, 2))


def test_critic_target_uses_the_supervised_reward_not_the_observed_one() -> None:
    m = _model()
    m.prepare(_batch(256, seed=3))
    b = _batch(64)
    b["done"] = torch.ones(64)
    y1, _ = m.critic_target(b)
    noisy = dict(b, r=b["r"] + 100.0 * torch.rand(64))  # a different, noisy observed reward
    y2, _ = m.critic_target(noisy)
    with torch.no_grad():
        r_hat = m.reward_hat(b["s"], b["a"])
    torch.testing.assert_close(y1, r_hat)
    torch.testing.assert_close(y2, r_hat)
    assert (y1[b["a"] == 0] == 0).all()
    plain = _model(sl_reward=False)
    y3, _ = plain.critic_target(noisy)  # the ablation bootstraps on the observed reward
    torch.testing.assert_close(y3, noisy["r"] - noisy["cost"])


def test_lagrange_multiplier_dual_ascent() -> None:
    m = _model(alloc_target=0.3, lr_lambda=0.5, lambda_init=1.0)
    up = m.dual_step(0.6)
    assert up > 1.0
    down = m.dual_step(0.1)
    assert down < up
    for _ in range(100):
        m.dual_step(0.0)
    assert float(m.lagrange) == 0.0  # projected onto lambda >= 0
    free = _model(alloc_target=None, lambda_init=1.0)
    assert free.dual_step(0.9) == 1.0


def test_losses_are_finite_and_backpropagate() -> None:
    m = _model()
    b = _batch(64)
    m.prepare(b)
    out = m.losses(b)
    for k in ("sl", "critic", "exposure", "actor", "distill", "loss", "alloc_ratio", "lagrange"):
        assert torch.isfinite(out[k]), k
    out["loss"].backward()
    assert m.actor.heads[0].net[0].weight.grad is not None
    assert m.click_head.net[0].weight.grad is not None
    assert all(p.grad is None for p in m.target_critic.parameters())


def test_student_imitates_the_actor() -> None:
    m = _model()
    x = _states(512, seed=5)
    m.prepare({**_batch(512, seed=5), "s": x})
    with torch.no_grad():  # a sharp, non-trivial teacher
        m.actor.heads[0].net[-1].weight.mul_(20.0)
    teacher = m.prob_insert(x).detach()
    opt = torch.optim.Adam(m.student.parameters(), lr=1e-2)
    for _ in range(300):
        loss = m.distill_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    student = m.student_prob_insert(x).detach()
    assert (student - teacher).abs().mean() < 0.05


# --------------------------------------------------------------------------------------------------- baselines, export
def test_registry_names_and_builders() -> None:
    assert set(ALLOCATORS) == {"slmgac", "bc", "dqn", "cql", "plain_ac", "threshold"}
    plain = build_allocator("plain_ac", F_, 3, HAS)
    assert not plain.cfg.multi_group and not plain.cfg.sl_reward and len(plain.actor.heads) == 1
    assert isinstance(build_allocator("cql", F_, 3, HAS), DiscreteCQL)
    assert build_allocator("cql", F_, 3, HAS).cfg.cql_alpha > 0
    with pytest.raises(ValueError, match="unknown option"):
        build_allocator("slmgac", F_, 3, HAS, bogus=1)


def test_export_round_trip(tmp_path: Path) -> None:
    x = _states(50, seed=9)
    b = _batch(128)
    m = _model()
    m.prepare(b)
    with torch.no_grad():
        m.student.net.net[-1].bias.fill_(0.3)
    bc = BehaviorCloning(BaselineConfig(n_features=F_))
    bc.prepare(b)
    dqn = DoubleDQN(BaselineConfig(n_features=F_))
    dqn.prepare(b)
    dqn.calibrate(b["s"], 0.3)
    thr = ThresholdGreedy(feature_index=2, has_candidate_index=HAS, theta=0.1)
    for i, (obj, expected) in enumerate([
        (m, m.student_prob_insert(x)), (bc, bc.prob_insert(x)), (dqn, dqn.prob_insert(x)),
        (TorchPolicy(bc), bc.prob_insert(x)), (thr, torch.as_tensor(thr(x.numpy().astype(np.float64)))),
    ]):
        d = save_policy(obj, tmp_path / f"p{i}", {"name": f"p{i}"})
        pol = load_policy(d)
        got = pol(x.numpy().astype(np.float64))
        assert got.shape == (50,) and got.dtype == np.float64
        np.testing.assert_array_equal(got, expected.detach().double().numpy())
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "missing")
