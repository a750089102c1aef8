"""SL-MGAC (arXiv 2412.10381, KDD 2025): supervised-learning-enhanced multi-group actor-critic for the live-stream
allocation decision (insert the top live room into a feed slot, or not), trained offline on logged transitions.

Reconstruction of the allocation brief (sections 2-5) over the feature vector of :class:`recsys.feed.env.FeedEnv`:

**State encoder.** ``E(s)``: per-feature standardisation (buffers set from the data), then
``Linear -> LayerNorm -> ReLU`` twice, ``h_s in R^hidden``. *Deviation from the brief*: the environment exposes
aggregate features (predicted click / watch of the candidate, fatigue, request index, hour, activity group), not raw
id and behaviour sequences, so there is no target attention: the MLP is the whole extractor.

**MG-SD (multi-group state decomposition).** The activity group ``g(u)`` is the one-hot block of the last
``n_groups`` feature columns. Actor and critics have one head per group (hard routing: all G heads are computed and
the row's own head is gathered, :class:`GroupHeads`); ``multi_group=False`` gives a single shared head (ablation);
``group_critic=False`` keeps the group heads in the actor only (one critic head for every group: see BENCHMARKS,
allocation, for what each costs on the small twin).

**Heads.** Every head is ``Linear -> LayerNorm -> ReLU -> Linear`` (:class:`Head`).

* actor ``pi(1 | s) = sigmoid(ActorHead[g](h_s))`` (two actions: one logit is the 2-way softmax), forced to 0 where
  ``has_candidate = 0`` (the environment's rule);
* distributional reward critic ``Z(s, a)``: categorical over ``n_bins`` fixed atoms on ``[v_min, v_max]``
  (buffers), logits ``[2, B]``; ``Q(s, a) = sum_b p_b z_b``. With group heads each group has its own atoms, set by
  :meth:`SLMGAC.prepare` from that group's logged returns (the brief: V_max "per group if scales differ"; here the
  groups' mean watch times differ by 2x), so a low-value group is not squeezed into a few atoms of a range set by
  the most active users;
* exposure critic ``Q_c(s, a)``: expected discounted number of insertions from (s, a) (scalar, MSE), the cost
  critic of the allocation-ratio constraint;
* supervised reward heads (shared over groups, on ``h_s``): ``p(click | s, insert)`` (BCE on inserted rows),
  ``E[W | click]`` (MSE on the watch minutes of clicked rows, scaled by ``watch_scale``) and ``E[V | s]``, the short
  video given up by an insertion (MSE on inserted rows, scaled by ``cost_scale``). *Deviation*: the watch head
  regresses W itself, not ``log1p W``: ``expm1 E[log1p W]`` is far below ``E[W]`` for the heavy-tailed watch time,
  and the critic needs the mean. The action enters structurally:
  ``r_hat(s, a) = a * (p_click_hat * W_hat - cost_weight * V_hat)`` (no insertion, no live time and no video lost).
  The ``- cost_weight * V_hat`` term is the brief's relative-to-video **anti-greedy reward** (section 2, option 2):
  an insertion pays only if it beats the short video it displaces.

**Critic target with restricted bootstrapping** (the SL-enhanced part, ``sl_reward=True``)::

    y   = r_hat(s, a) + gamma (1 - done) sum_a' pi(a' | s') Qbar(s', a')
    y_c = a           + gamma (1 - done) sum_a' pi(a' | s') Qbar_c(s', a')

The immediate term comes from the supervised heads, not from the noisy observed reward (``sl_reward=False``, the
plain actor-critic ablation, uses ``r - cost_weight * cost``). ``Qbar`` are Polyak target copies (``tau``) of the
encoder and the critics. **Distributional critic: two-hot** (the brief's "distribution discretisation"): y is clipped
to the support and split over its two neighbouring atoms (:func:`two_hot`), which keeps mass 1 and the mean; the loss
is the cross-entropy with ``Z(s, a)``. This is the simpler alternative to the C51 projection: it projects a scalar
target (the expected continuation), not a whole target distribution.

**Constraint (Lagrangian, dual ascent).** The actor maximises ``Q_lambda = Q - lambda Q_c``; the multiplier is a
buffer updated after every step by :meth:`SLMGAC.dual_step`,
``lambda <- [lambda + lr_lambda (A_hat - alloc_target)]_+``, with ``A_hat`` the actor's allocation ratio on the
batch's (logged) states. Keeping a separate exposure critic means a change of lambda never invalidates the reward
critic (RCPO-style), unlike shaping the reward with a moving lambda.

**Actor.** ``L_pi = -E[sum_a pi(a|s) A(s,a) / scale_g] - beta H(pi) + alpha_bc BCE(pi(.|s), a_logged)``: the exact
two-action expectation of the (detached) Lagrangian advantage, normalised per group by the mean absolute advantage
gap, an entropy bonus and a behaviour-cloning regulariser for offline training. The actor reads ``h_s`` detached (the
encoder is trained by the critics and the supervised heads).

**Distillation.** :class:`StudentPolicy` (a small ``Linear -> LayerNorm -> ReLU -> Linear`` MLP on the standardised
features, no group heads) minimises the cross-entropy to the teacher's ``pi(1 | s)``, i.e. KL(pi_T || pi_S) up to a
constant; it is what serving loads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SLMGACConfig:
    """Sizes, switches and loss weights of SL-MGAC.

    ``n_features`` columns in the :func:`recsys.feed.env.feature_names` layout: ``has_candidate_index`` marks the
    column forcing ``pi(1|s) = 0``; the last ``n_groups`` columns are the activity-group one-hot.
    """

    n_features: int
    n_groups: int = 3
    has_candidate_index: int = 8
    hidden: int = 64
    head_hidden: int = 64
    student_hidden: int = 32
    n_bins: int = 51
    v_min: float = 0.0
    v_max: float = 50.0
    gamma: float = 0.95
    tau: float = 0.005
    multi_group: bool = True
    group_critic: bool = True  # with multi_group: the reward and exposure critics have group heads too
    group_shared: bool = False  # group heads as shared head + per-group residual (GroupHeads(shared=True))
    sl_reward: bool = True
    cost_weight: float = 1.0  # kappa of the anti-greedy reward, per minute of short video given up
    alloc_target: float | None = 0.3  # rho; None: no constraint
    lambda_init: float = 0.0
    lr_lambda: float = 0.05
    entropy: float = 0.01  # beta
    bc_weight: float = 0.1  # alpha_bc
    sl_weight: float = 1.0
    exposure_weight: float = 1.0
    distill_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.n_features < self.n_groups + 1 or self.n_groups < 1:
            raise ValueError(f"need n_groups >= 1 group columns among n_features: {self}")
        if self.n_bins < 2 or not self.v_max > self.v_min:
            raise ValueError(f"need n_bins >= 2 and v_max > v_min: {self}")
        if self.alloc_target is not None and not 0.0 <= self.alloc_target <= 1.0:
            raise ValueError(f"alloc_target must lie in [0, 1], got {self.alloc_target}")
        if not 0.0 <= self.gamma < 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"need 0 <= gamma < 1 and 0 < tau <= 1: {self}")


# ------------------------------------------------------------------------------------------------------ pieces
def two_hot(y: Tensor, support: Tensor) -> Tensor:
    """Two-hot projection of scalar targets ``y (n,)`` onto sorted, evenly spaced atoms: ``support (B,)`` shared by
    all rows, or ``(n, B)`` with each row's own atoms.

    ``y`` is clipped to ``[z_1, z_B]``; for ``z_j <= y < z_{j+1}``: ``p_j = (z_{j+1} - y) / (z_{j+1} - z_j)``,
    ``p_{j+1} = 1 - p_j``. Returns ``(n, B)``, rows summing to 1 with mean ``sum_b p_b z_b = clip(y)``.
    """
    b = support.shape[-1]
    lo, hi = support[..., 0], support[..., -1]
    y = y.clamp(lo, hi)
    pos = (y - lo) / (hi - lo) * (b - 1)
    j = pos.floor().long().clamp(0, b - 2)
    frac = (pos - j.to(pos.dtype)).clamp(0.0, 1.0)
    out = torch.zeros(y.shape[0], b, dtype=y.dtype, device=y.device)
    out.scatter_(1, j.unsqueeze(1), (1.0 - frac).unsqueeze(1))
    out.scatter_add_(1, (j + 1).unsqueeze(1), frac.unsqueeze(1))
    return out


class Head(nn.Module):
    """``Linear -> LayerNorm -> ReLU -> Linear``: ``(n, d_in) -> (n, d_out)``."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, d_out))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class GroupHeads(nn.Module):
    """One :class:`Head` per group, hard-routed: ``forward(h (n, d_in), group (n,) long) -> (n, d_out)``.

    All heads run on all rows and each row gathers its own group's output, so a row depends only on its group's head.
    With one head (``n_heads = 1``) the group is ignored. With ``shared=True`` (and more than one head) a shared
    :class:`Head` trained on every row is added to the routed one, ``out = shared(h) + head_g(h)``; the routed heads'
    last layers start at zero, so each group begins at the shared head and learns only its own residual.
    """

    def __init__(self, d_in: int, hidden: int, d_out: int, n_heads: int, shared: bool = False) -> None:
        super().__init__()
        self.heads = nn.ModuleList(Head(d_in, hidden, d_out) for _ in range(n_heads))
        self.shared = Head(d_in, hidden, d_out) if shared and n_heads > 1 else None
        if self.shared is not None:
            for head in self.heads:
                nn.init.zeros_(head.net[-1].weight)
                nn.init.zeros_(head.net[-1].bias)

    def forward(self, h: Tensor, group: Tensor) -> Tensor:
        if len(self.heads) == 1:
            return self.heads[0](h)
        out = torch.stack([head(h) for head in self.heads], dim=1)  # (n, G, d_out)
        g = group.long().clamp(0, len(self.heads) - 1)
        routed = out[torch.arange(h.shape[0], device=h.device), g]
        return routed if self.shared is None else routed + self.shared(h)


class Standardize(nn.Module):
    """``(x - mean) / std`` with buffers (``set(mean, std)``; std below 1e-6 counts as 1)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    @torch.no_grad()
    def set(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(0))
        sd = x.std(0) if x.shape[0] > 1 else torch.ones_like(self.std)
        self.std.copy_(torch.where(sd > 1e-6, sd, torch.ones_like(sd)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class StudentPolicy(nn.Module):
    """The distilled serving policy: ``forward(features (n, F)) -> pi(1 | s) (n,)``, 0 without a candidate.

    A small ``Linear -> LayerNorm -> ReLU -> Linear`` MLP over the standardised features, no group heads.
    """

    def __init__(self, n_features: int, hidden: int = 32, has_candidate_index: int = 8) -> None:
        super().__init__()
        self.n_features, self.hidden, self.has_candidate_index = n_features, hidden, has_candidate_index
        self.norm = Standardize(n_features)
        self.net = Head(n_features, hidden, 1)
        # a logit offset set after distillation so that the served policy meets the allocation target under its
        # own state visitation (see pipelines.train_allocator.calibrate_student)
        self.register_buffer("offset", torch.zeros(()))

    def init_args(self) -> dict:
        return {"n_features": self.n_features, "hidden": self.hidden, "has_candidate_index": self.has_candidate_index}

    def logit(self, x: Tensor) -> Tensor:
        return self.net(self.norm(x)).squeeze(-1) + self.offset

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logit(x)) * x[:, self.has_candidate_index]


def _masked_mean(v: Tensor, mask: Tensor) -> Tensor:
    return (v * mask).sum() / mask.sum().clamp(min=1.0)


# ------------------------------------------------------------------------------------------------------ model
class SLMGAC(nn.Module):
    """SL-MGAC teacher (encoder, multi-group actor and critics, supervised reward heads) plus the student.

    Batches (:meth:`losses`) are dicts of tensors over n logged transitions: ``s (n, F)``, ``a (n,)`` (0/1),
    ``r (n,)`` live watch minutes, ``cost (n,)`` short-video minutes given up, ``s_next (n, F)`` (anything on done
    rows), ``done (n,)``, optional ``group (n,)`` (else read from the one-hot columns) and ``click (n,)`` (needed
    when ``sl_reward``).
    """

    def __init__(self, cfg: SLMGACConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_heads = cfg.n_groups if cfg.multi_group else 1
        n_critic_heads = n_heads if cfg.group_critic else 1
        self.norm = Standardize(cfg.n_features)
        self.encoder = nn.Sequential(
            nn.Linear(cfg.n_features, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.ReLU(),
            nn.Linear(cfg.hidden, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.ReLU(),
        )
        self.actor = GroupHeads(cfg.hidden, cfg.head_hidden, 1, n_heads, cfg.group_shared)
        self.critic = GroupHeads(cfg.hidden, cfg.head_hidden, 2 * cfg.n_bins, n_critic_heads, cfg.group_shared)
        self.exposure = GroupHeads(cfg.hidden, cfg.head_hidden, 2, n_critic_heads, cfg.group_shared)
        self.click_head = Head(cfg.hidden, cfg.head_hidden, 1)
        self.watch_head = Head(cfg.hidden, cfg.head_hidden, 1)
        self.video_head = Head(cfg.hidden, cfg.head_hidden, 1)
        self.student = StudentPolicy(cfg.n_features, cfg.student_hidden, cfg.has_candidate_index)
        # atoms per critic head: (n_critic_heads, B); row g is group g's support (one row without group critics)
        self.register_buffer("support", torch.linspace(cfg.v_min, cfg.v_max, cfg.n_bins).repeat(n_critic_heads, 1))
        self.register_buffer("watch_scale", torch.tensor(1.0))
        self.register_buffer("cost_scale", torch.tensor(1.0))
        self.register_buffer("lagrange", torch.tensor(float(cfg.lambda_init)))
        # Polyak targets of the encoder and the critics (no gradients)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_critic = copy.deepcopy(self.critic)
        self.target_exposure = copy.deepcopy(self.exposure)
        for p in self._target_params():
            p.requires_grad_(False)

    # -------------------------------------------------------------------------------------------- set-up
    @torch.no_grad()
    def prepare(self, batch: dict[str, Tensor]) -> None:
        """Set the data-dependent buffers from the whole training set: feature standardisation (teacher and
        student), the watch and video scales of the supervised heads and the critic support
        ``[min(0, q_0.5%), q_99.5%]`` of the discounted logged returns-to-go of ``r - cost_weight * cost``, per group
        with group heads (a group without rows takes the range of all rows)."""
        s = batch["s"].float()
        self.norm.set(s)
        self.student.norm.set(s)
        a, r, c = batch["a"].float(), batch["r"].float(), batch["cost"].float()
        clicked = (a > 0) & (batch["click"] > 0) if "click" in batch else (a > 0) & (r > 0)
        if clicked.any():
            self.watch_scale.fill_(float(r[clicked].mean().clamp(min=1e-3)))
        if (a > 0).any():
            self.cost_scale.fill_(float(c[a > 0].mean().clamp(min=1e-3)))
        ret = returns_to_go(r - self.cfg.cost_weight * c, batch["done"].float(), self.cfg.gamma)
        g = batch["group"].long() if "group" in batch else self.group_of(s)
        for k in range(self.support.shape[0]):
            rows = ret[g == k] if self.support.shape[0] > 1 else ret
            self.support[k] = _return_support(rows if rows.numel() else ret, self.cfg.n_bins)
        self._sync_targets()

    def _target_params(self):
        for m in (self.target_encoder, self.target_critic, self.target_exposure):
            yield from m.parameters()

    @torch.no_grad()
    def _sync_targets(self) -> None:
        self.target_encoder.load_state_dict(self.encoder.state_dict())
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_exposure.load_state_dict(self.exposure.state_dict())

    # -------------------------------------------------------------------------------------------- forward
    def group_of(self, x: Tensor) -> Tensor:
        """Activity group ``(n,)`` from the one-hot columns (the last ``n_groups``)."""
        return x[:, -self.cfg.n_groups:].argmax(dim=1)

    def has_candidate(self, x: Tensor) -> Tensor:
        return x[:, self.cfg.has_candidate_index].float()

    def encode(self, x: Tensor, target: bool = False) -> Tensor:
        """``h_s (n, hidden)``."""
        return (self.target_encoder if target else self.encoder)(self.norm(x))

    def actor_logit(self, h: Tensor, group: Tensor) -> Tensor:
        return self.actor(h, group).squeeze(-1)

    def prob_insert(self, x: Tensor) -> Tensor:
        """Teacher ``pi(1 | s) (n,)`` in [0, 1], 0 where there is no candidate."""
        return torch.sigmoid(self.actor_logit(self.encode(x), self.group_of(x))) * self.has_candidate(x)

    def student_prob_insert(self, x: Tensor) -> Tensor:
        """Distilled student ``pi_S(1 | s) (n,)`` (the served policy)."""
        return self.student(x)

    def critic_dist(self, h: Tensor, group: Tensor, target: bool = False) -> Tensor:
        """Log-probabilities of ``Z(s, a)`` over the atoms: ``(n, 2, B)``."""
        logits = (self.target_critic if target else self.critic)(h, group)
        return F.log_softmax(logits.view(-1, 2, self.cfg.n_bins), dim=-1)

    def support_of(self, group: Tensor) -> Tensor:
        """Each row's atoms ``(n, B)`` (its group's, or the one shared support without group heads)."""
        return self.support[group.long().clamp(0, self.support.shape[0] - 1)]

    def q_values(self, h: Tensor, group: Tensor, target: bool = False) -> Tensor:
        """``Q(s, a) = E[Z(s, a)]``: ``(n, 2)``."""
        return (self.critic_dist(h, group, target).exp() * self.support_of(group)[:, None, :]).sum(-1)

    def q_exposure(self, h: Tensor, group: Tensor, target: bool = False) -> Tensor:
        """Expected discounted insertions ``Q_c(s, a)``: ``(n, 2)``."""
        return (self.target_exposure if target else self.exposure)(h, group)

    def reward_parts(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(click logit, E[W | click] in minutes, E[V] in minutes), each ``(n,)``, of an insertion."""
        click = self.click_head(h).squeeze(-1)
        watch = self.watch_head(h).squeeze(-1).clamp(min=0.0) * self.watch_scale
        video = self.video_head(h).squeeze(-1).clamp(min=0.0) * self.cost_scale
        return click, watch, video

    def reward_hat(self, x: Tensor, a: Tensor) -> Tensor:
        """Supervised immediate reward ``r_hat(s, a) = a (p_click W_hat - cost_weight V_hat)``: ``(n,)``."""
        click, watch, video = self.reward_parts(self.encode(x))
        return a.float() * (torch.sigmoid(click) * watch - self.cfg.cost_weight * video)

    # -------------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def critic_target(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(y, y_c)``, each ``(n,)``: the reward and exposure critics' targets (see the module docstring)."""
        s, s2 = batch["s"].float(), batch["s_next"].float()
        a, done = batch["a"].float(), batch["done"].float()
        g = batch["group"].long() if "group" in batch else self.group_of(s)
        if self.cfg.sl_reward:
            r = self.reward_hat(s, a)
        else:
            r = batch["r"].float() - self.cfg.cost_weight * batch["cost"].float()
        p2 = self.prob_insert(s2)
        pi2 = torch.stack([1.0 - p2, p2], dim=1)
        h2 = self.encode(s2, target=True)
        v2 = (pi2 * self.q_values(h2, g, target=True)).sum(1)
        v2c = (pi2 * self.q_exposure(h2, g, target=True)).sum(1)
        cont = self.cfg.gamma * (1.0 - done)
        return r + cont * v2, a + cont * v2c

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """All losses on a batch of logged transitions; ``loss`` is their weighted sum. Also returns (detached)
        ``alloc_ratio`` (the actor's on the batch states, the dual-ascent signal), ``lagrange`` and ``q_mean``."""
        cfg = self.cfg
        s = batch["s"].float()
        a = batch["a"].float()
        g = batch["group"].long() if "group" in batch else self.group_of(s)
        has = self.has_candidate(s)
        h = self.encode(s)
        out: dict[str, Tensor] = {}

        # supervised reward heads (train the encoder too)
        if cfg.sl_reward:
            click_logit, watch, video = self.reward_parts(h)
            ins = (a > 0).float()
            clicked = ins * (batch["click"].float() > 0).float()
            l_click = _masked_mean(F.binary_cross_entropy_with_logits(click_logit, clicked, reduction="none"), ins)
            w_t = batch["r"].float() / self.watch_scale
            l_watch = _masked_mean((watch / self.watch_scale - w_t) ** 2, clicked)
            l_video = _masked_mean((video / self.cost_scale - batch["cost"].float() / self.cost_scale) ** 2, ins)
            out["sl"] = l_click + l_watch + l_video
        else:
            out["sl"] = h.new_zeros(())

        # distributional reward critic (two-hot cross-entropy) and exposure critic (MSE)
        y, y_c = self.critic_target(batch)
        ai = a.long()
        logp = self.critic_dist(h, g)[torch.arange(s.shape[0]), ai]  # (n, B)
        out["critic"] = -(two_hot(y, self.support_of(g)) * logp).sum(-1).mean()
        qc = self.q_exposure(h, g).gather(1, ai[:, None]).squeeze(1)
        out["exposure"] = F.mse_loss(qc, y_c)

        # actor: exact two-action expectation of the Lagrangian advantage, per-group normalised
        logit = self.actor_logit(h.detach(), g)
        p = torch.sigmoid(logit)
        with torch.no_grad():
            q_lag = self.q_values(h, g) - self.lagrange * self.q_exposure(h, g)
            gap = q_lag[:, 1] - q_lag[:, 0]
            scale = torch.ones_like(gap)
            for k in torch.unique(g):
                m = (g == k) & (has > 0)
                if m.any():
                    scale[g == k] = gap[m].abs().mean().clamp(min=1e-6)
            adv = gap / scale
        ent = -(p * F.logsigmoid(logit) + (1 - p) * F.logsigmoid(-logit))
        bc = F.binary_cross_entropy_with_logits(logit, a, reduction="none")
        out["actor"] = _masked_mean(-p * adv - cfg.entropy * ent + cfg.bc_weight * bc, has)

        # distillation of the (detached) teacher into the student
        out["distill"] = self.distill_loss(s, p.detach(), has)

        out["loss"] = (cfg.sl_weight * out["sl"] + out["critic"] + cfg.exposure_weight * out["exposure"]
                       + out["actor"] + cfg.distill_weight * out["distill"])
        with torch.no_grad():
            out["alloc_ratio"] = (p * has).mean()
            out["lagrange"] = self.lagrange.clone()
            out["q_mean"] = self.q_values(h, g).gather(1, ai[:, None]).mean()
        return out

    def distill_loss(self, s: Tensor, teacher: Tensor | None = None, has: Tensor | None = None) -> Tensor:
        """Cross-entropy of the student to the teacher's ``pi(1 | s)`` (KL(pi_T || pi_S) + const), on rows with a
        candidate."""
        if teacher is None:
            with torch.no_grad():
                teacher = torch.sigmoid(self.actor_logit(self.encode(s), self.group_of(s)))
        has = self.has_candidate(s) if has is None else has
        ce = F.binary_cross_entropy_with_logits(self.student.logit(s), teacher, reduction="none")
        return _masked_mean(ce, has)

    @torch.no_grad()
    def dual_step(self, alloc_ratio: float | Tensor) -> float:
        """Dual ascent ``lambda <- [lambda + lr_lambda (alloc_ratio - alloc_target)]_+``; returns the new lambda
        (unchanged without a target)."""
        if self.cfg.alloc_target is not None:
            step = self.cfg.lr_lambda * (float(alloc_ratio) - self.cfg.alloc_target)
            self.lagrange.copy_((self.lagrange + step).clamp(min=0.0))
        return float(self.lagrange)

    @torch.no_grad()
    def solve_lagrange(self, s: Tensor, iters: int = 40) -> float:
        """Exact dual for the current critics on the states ``s``: the smallest ``lambda >= 0`` whose greedy
        Lagrangian policy ``1[Q(s,1) - Q(s,0) > lambda (Q_c(s,1) - Q_c(s,0))]`` allocates at most ``alloc_target``
        (bisection; the ratio is non-increasing in lambda where insertions add exposure). Sets and returns it.

        Dual ascent alone lags the actor and oscillates on short offline runs; the trainer calls this once after
        the main loop and then fine-tunes the actor at the solved lambda."""
        if self.cfg.alloc_target is None:
            return float(self.lagrange)
        h, g = self.encode(s), self.group_of(s)
        q, qc = self.q_values(h, g), self.q_exposure(h, g)
        gap, gap_c = q[:, 1] - q[:, 0], (qc[:, 1] - qc[:, 0]).clamp(min=1e-3)
        has = self.has_candidate(s)

        def ratio(lam: float) -> float:
            return float(((gap > lam * gap_c).float() * has).mean())

        lo, hi = 0.0, 1.0
        if ratio(lo) > self.cfg.alloc_target:
            while ratio(hi) > self.cfg.alloc_target and hi < 1e6:
                lo, hi = hi, 2.0 * hi
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if ratio(mid) > self.cfg.alloc_target else (lo, mid)
        else:
            hi = 0.0
        self.lagrange.fill_(hi)
        return hi

    @torch.no_grad()
    def update_target(self, tau: float | None = None) -> None:
        """Polyak averaging of the target encoder and critics."""
        t = self.cfg.tau if tau is None else tau
        for tgt, src in ((self.target_encoder, self.encoder), (self.target_critic, self.critic),
                         (self.target_exposure, self.exposure)):
            for pt, ps in zip(tgt.parameters(), src.parameters()):
                pt.lerp_(ps, t)

    def after_step(self, out: dict[str, Tensor]) -> None:
        """Called by the trainer after each optimiser step: target update and dual ascent."""
        self.update_target()
        self.dual_step(out["alloc_ratio"])

    def serving(self) -> tuple[str, dict, nn.Module]:
        """What :func:`models.allocation.export.save_policy` stores: the distilled student."""
        return "StudentPolicy", self.student.init_args(), self.student


def _return_support(ret: Tensor, n_bins: int) -> Tensor:
    """``n_bins`` atoms evenly spaced on ``[min(0, q_0.5%), max(q_99.5%, lo + 1)]`` of the returns ``ret (m,)``."""
    lo = min(0.0, float(torch.quantile(ret, 0.005)))
    hi = max(float(torch.quantile(ret, 0.995)), lo + 1.0)
    return torch.linspace(lo, hi, n_bins)


def returns_to_go(r: Tensor, done: Tensor, gamma: float) -> Tensor:
    """Discounted reward-to-go ``(n,)`` of contiguous sessions (``done`` marks each session's last row)."""
    rr, dd = r.detach().cpu().double().numpy(), done.detach().cpu().numpy() > 0
    out = rr.copy()
    acc = 0.0
    for i in range(rr.shape[0] - 1, -1, -1):
        acc = rr[i] + (0.0 if dd[i] else gamma * acc)
        out[i] = acc
    return torch.as_tensor(out, dtype=r.dtype, device=r.device)


__all__ = ["GroupHeads", "Head", "SLMGAC", "SLMGACConfig", "Standardize", "StudentPolicy", "returns_to_go", "two_hot"]
