"""Baseline allocators of the allocation brief (section 7), trained offline on the same logged transitions as SL-MGAC.

* :class:`BehaviorCloning`: a classifier of the logged action (``pi(1|s)`` = the logging policy's, learned).
* :class:`DoubleDQN`: double DQN with a Polyak target network (``layer_norm`` switch: the brief's "with and without
  LayerNorm" divergence baseline). Reward ``(r - cost_weight * cost) / reward_scale`` (the same anti-greedy reward as
  SL-MGAC, but observed, not supervised), Huber TD loss. The served policy is greedy: insert iff
  ``Q(s, 1) - Q(s, 0) > margin``; ``margin`` (a buffer, 0 by default) is set by :meth:`DoubleDQN.calibrate` to the
  smallest value meeting the allocation target on the logged states (the constraint handled post hoc).
* :class:`DiscreteCQL`: **CQL** (Kumar et al. 2020), chosen over IQL: double DQN plus
  ``alpha (logsumexp_a Q(s, a) - Q(s, a_logged))``.
* The plain actor-critic ablation (no supervised reward heads, one head for all groups) is
  ``SLMGAC(SLMGACConfig(multi_group=False, sl_reward=False))`` (see :mod:`models.allocation.registry`).
* :class:`ThresholdGreedy`: insert iff ``score_hat = p_click_hat * watch_hat`` (predicted live minutes) exceeds
  ``theta``, tuned on the log (numpy, no torch model).

Every torch baseline has ``prob_insert(x (n, F)) -> (n,)`` (0 where ``has_candidate = 0``), ``losses(batch) ->
dict`` with the total under ``loss``, ``prepare(batch)`` (data-dependent buffers), ``after_step(out)`` and
``serving()`` (what the export stores).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.allocation.slmgac import Standardize, _masked_mean


@dataclass
class BaselineConfig:
    """Sizes and hyperparameters shared by the torch baselines (``cql_alpha`` only for CQL)."""

    n_features: int
    has_candidate_index: int = 8
    hidden: int = 64
    layer_norm: bool = True
    gamma: float = 0.95
    tau: float = 0.005
    cost_weight: float = 1.0
    cql_alpha: float = 0.0


def mlp(d_in: int, hidden: int, d_out: int, layer_norm: bool = True) -> nn.Sequential:
    """``Linear -> [LayerNorm] -> ReLU`` twice, then ``Linear``: ``(n, d_in) -> (n, d_out)``."""
    norm = (lambda: nn.LayerNorm(hidden)) if layer_norm else nn.Identity
    return nn.Sequential(nn.Linear(d_in, hidden), norm(), nn.ReLU(), nn.Linear(hidden, hidden), norm(), nn.ReLU(),
                         nn.Linear(hidden, d_out))


class _Base(nn.Module):
    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = Standardize(cfg.n_features)

    def has_candidate(self, x: Tensor) -> Tensor:
        return x[:, self.cfg.has_candidate_index].float()

    @torch.no_grad()
    def prepare(self, batch: dict[str, Tensor]) -> None:
        self.norm.set(batch["s"].float())

    def after_step(self, out: dict[str, Tensor]) -> None:  # noqa: B027 - optional hook
        pass

    def serving(self) -> tuple[str, dict, nn.Module]:
        return type(self).__name__, dict(vars(self.cfg)), self

    def forward(self, x: Tensor) -> Tensor:
        return self.prob_insert(x)


class BehaviorCloning(_Base):
    """Classifier of the logged action: ``pi(1|s) = sigmoid(MLP(s))``, BCE on rows with a candidate."""

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__(cfg)
        self.net = mlp(cfg.n_features, cfg.hidden, 1, cfg.layer_norm)

    def prob_insert(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(self.norm(x)).squeeze(-1)) * self.has_candidate(x)

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        s = batch["s"].float()
        ce = F.binary_cross_entropy_with_logits(self.net(self.norm(s)).squeeze(-1), batch["a"].float(),
                                                reduction="none")
        return {"loss": _masked_mean(ce, self.has_candidate(s))}


class DoubleDQN(_Base):
    """Double DQN on the offline log: ``y = r~ + gamma (1 - done) Qbar(s', argmax_a' Q(s', a'))`` (a' = 0 forced
    without a candidate), Huber loss; ``cql_alpha > 0`` adds the discrete CQL regulariser."""

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__(cfg)
        self.q = mlp(cfg.n_features, cfg.hidden, 2, cfg.layer_norm)
        self.q_target = copy.deepcopy(self.q)
        for p in self.q_target.parameters():
            p.requires_grad_(False)
        self.register_buffer("reward_scale", torch.tensor(1.0))
        self.register_buffer("margin", torch.tensor(0.0))

    @torch.no_grad()
    def prepare(self, batch: dict[str, Tensor]) -> None:
        super().prepare(batch)
        r = batch["r"].float() - self.cfg.cost_weight * batch["cost"].float()
        self.reward_scale.fill_(float(r.std().clamp(min=1e-3)) if r.numel() > 1 else 1.0)
        self.q_target.load_state_dict(self.q.state_dict())

    def q_values(self, x: Tensor, target: bool = False) -> Tensor:
        """``(n, 2)`` in units of ``reward_scale``."""
        return (self.q_target if target else self.q)(self.norm(x))

    def prob_insert(self, x: Tensor) -> Tensor:
        q = self.q_values(x)
        return ((q[:, 1] - q[:, 0]) > self.margin).float() * self.has_candidate(x)

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        s, s2 = batch["s"].float(), batch["s_next"].float()
        a = batch["a"].long()
        r = (batch["r"].float() - self.cfg.cost_weight * batch["cost"].float()) / self.reward_scale
        with torch.no_grad():
            q_next = self.q_values(s2)
            q_next[:, 1] = torch.where(self.has_candidate(s2) > 0, q_next[:, 1], torch.full_like(q_next[:, 1], -1e9))
            a2 = q_next.argmax(1, keepdim=True)
            y = r + self.cfg.gamma * (1.0 - batch["done"].float()) * self.q_values(s2, True).gather(1, a2).squeeze(1)
        q = self.q_values(s)
        q_a = q.gather(1, a[:, None]).squeeze(1)
        out = {"td": F.smooth_l1_loss(q_a, y)}
        loss = out["td"]
        if self.cfg.cql_alpha > 0:
            has = self.has_candidate(s)
            # without a candidate only a = 0 exists: the logsumexp runs over that action alone
            q_masked = torch.where(has[:, None] > 0, q, torch.stack([q[:, 0], torch.full_like(q[:, 1], -1e9)], 1))
            out["cql"] = (torch.logsumexp(q_masked, dim=1) - q_a).mean()
            loss = loss + self.cfg.cql_alpha * out["cql"]
        out["loss"] = loss
        out["q_mean"] = q_a.detach().mean()
        return out

    @torch.no_grad()
    def after_step(self, out: dict[str, Tensor]) -> None:
        for pt, ps in zip(self.q_target.parameters(), self.q.parameters()):
            pt.lerp_(ps, self.cfg.tau)

    @torch.no_grad()
    def calibrate(self, s: Tensor, alloc_target: float | None) -> float:
        """Set ``margin`` to the smallest value >= 0 whose greedy allocation ratio on the states ``s`` is at most
        ``alloc_target`` (0 without a target); returns it."""
        margin = 0.0
        if alloc_target is not None:
            q = self.q_values(s.float())
            gap = (q[:, 1] - q[:, 0])[self.has_candidate(s) > 0]
            n = s.shape[0]
            k = int(np.floor(alloc_target * n))  # at most k insertions
            if gap.numel() > k and int((gap > 0).sum()) > k:
                margin = float(torch.sort(gap, descending=True).values[k])
        self.margin.fill_(max(margin, 0.0))
        return float(self.margin)


class DiscreteCQL(DoubleDQN):
    """Discrete CQL: :class:`DoubleDQN` with ``cql_alpha`` (1.0 when the config leaves it at 0)."""

    def __init__(self, cfg: BaselineConfig) -> None:
        if cfg.cql_alpha <= 0:
            cfg = BaselineConfig(**{**vars(cfg), "cql_alpha": 1.0})
        super().__init__(cfg)


class ThresholdGreedy:
    """Greedy threshold on the predicted live watch time of an insertion: ``pi(1|s) = 1[x_feature > theta]``.

    :meth:`fit` tunes theta on the log: among the quantiles of the feature on logged states with a candidate, it keeps
    those whose allocation ratio on the logged states is at most the target, and picks the one with the highest
    weighted per-decision IS (WPDIS) value of ``r - cost_weight * cost`` (:func:`recsys.ope.pdis`).
    """

    def __init__(self, feature_index: int = 2, has_candidate_index: int = 8, theta: float = 0.0,
                 feature: str = "score_hat") -> None:
        self.feature_index, self.has_candidate_index, self.theta, self.feature = (
            feature_index, has_candidate_index, float(theta), feature)

    @property
    def name(self) -> str:
        return f"threshold_greedy({self.feature} > {self.theta:.4g})"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return (x[:, self.feature_index] > self.theta).astype(np.float64) * x[:, self.has_candidate_index]

    def fit(self, tr: dict[str, np.ndarray], alloc_target: float | None, gamma: float = 0.95,
            cost_weight: float = 1.0, n_grid: int = 41) -> dict[str, float]:
        from recsys import ope

        s = tr["s"]
        v = s[:, self.feature_index]
        has = s[:, self.has_candidate_index] > 0
        grid = np.unique(np.quantile(v[has], np.linspace(0.0, 1.0, n_grid)))
        grid = np.concatenate([[grid[0] - 1.0], grid])
        a = tr["a"].astype(np.int64)
        r = tr["r"] - cost_weight * tr["cost"]
        best = (-np.inf, float(grid[-1]), 0.0)
        for theta in grid:
            self.theta = float(theta)
            p = self(s)
            ratio = float(p.mean())
            if alloc_target is not None and ratio > alloc_target + 1e-9:
                continue
            tp = np.where(a == 1, p, 1.0 - p)
            try:
                val = ope.pdis(r, tr["propensity"], tp, tr["session_id"], tr["step"], gamma, weighted=True).value
            except ValueError:  # all weights vanish
                continue
            if val > best[0]:
                best = (val, float(theta), ratio)
        self.theta = best[1]
        return {"wpdis": float(best[0]), "theta": self.theta, "alloc_ratio_logged": best[2]}

    def serving(self) -> tuple[str, dict, None]:
        return "ThresholdGreedy", {"feature_index": self.feature_index, "has_candidate_index":
                                   self.has_candidate_index, "theta": self.theta, "feature": self.feature}, None


__all__ = ["BaselineConfig", "BehaviorCloning", "DiscreteCQL", "DoubleDQN", "ThresholdGreedy", "mlp"]
