"""Offline training of a live-stream allocator (SL-MGAC or a baseline) on a logged decision log of the feed
environment (:class:`recsys.feed.env.LoggedData`).

``fit_allocator(logged, cfg) -> (policy, model, metrics)``: ``policy`` is the served callable
``features (n, F) -> prob_insert (n,)`` (for SL-MGAC and the plain actor-critic the distilled student), ``model`` the
trained module (or the tuned :class:`~models.allocation.baselines.ThresholdGreedy`), ``metrics`` a flat dict of
floats. Everything is seeded by ``cfg.seed``; training is CPU minibatch Adam with gradient clipping at 10.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.allocation.export import TorchPolicy
from models.allocation.registry import ALLOCATORS, build_allocator
from models.allocation.slmgac import SLMGAC
from recsys.config import TrackingConfig
from recsys.feed.env import Estimator, LoggedData, feature_index, n_groups_of
from recsys.ope import implied_rate
from recsys.tracking import tracking_run

#: learning-rate schedules of :class:`AllocatorTrainConfig` (``recsys.cli`` keeps a copy, tested equal)
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class AllocatorTrainConfig:
    """One offline training run.

    Attributes:
        policy: a name of :data:`models.allocation.registry.ALLOCATORS`.
        steps: optimiser steps (minibatches drawn with replacement).
        batch_size, lr, grad_clip: the optimiser.
        gamma: discount; ``None`` takes the log's.
        alloc_target: allocation-ratio budget rho (SL-MGAC's Lagrangian, the DQN/CQL margin, the threshold's
            constraint); ``None``: unconstrained.
        cost_weight: kappa of the anti-greedy reward ``r - kappa * cost`` (minutes of short video given up).
        polish_steps: SL-MGAC / plain AC: after the main loop lambda is solved exactly on the logged states
            (:meth:`SLMGAC.solve_lagrange`) and the actor alone is trained this many steps at that lambda.
        distill_steps: extra student-only steps after training (SL-MGAC / plain AC).
        lr_schedule: ``"constant"``, or ``"cosine"``: in each phase (main loop, polish, distillation) the learning
            rate decays from ``lr`` to 0 along a half cosine. On the ``small`` bench it lowers every actor-critic's
            true value (BENCHMARKS, allocation), so constant is the default.
        seed: seeds torch and the minibatch sampler.
        threads: torch intra-op threads during the fit (restored afterwards).
        options: model-config overrides (fields of the model's config).
    """

    policy: str = "slmgac"
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    grad_clip: float = 10.0
    lr_schedule: str = "constant"
    gamma: float | None = None
    alloc_target: float | None = 0.3
    cost_weight: float = 1.0
    polish_steps: int = 200
    distill_steps: int = 300
    seed: int = 0
    threads: int = 1
    calibrate: bool = True  # SL-MGAC / plain_ac: set the student's offset to meet the target under pi's visitation
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in ALLOCATORS:
            raise ValueError(f"unknown allocator {self.policy!r}; choose one of {sorted(ALLOCATORS)}")
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need steps >= 0, batch_size >= 1 and lr > 0: {self}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")


def transitions(logged: LoggedData) -> dict[str, np.ndarray]:
    """Logged transitions as flat arrays: ``s (n, F)``, ``a``, ``r``, ``cost``, ``s_next (n, F)`` (the row's own
    state on ``done`` rows, masked by ``done``), ``done`` (float), ``group``, plus ``click``, ``propensity``,
    ``session_id`` and ``step`` for the supervised heads and OPE."""
    nxt = logged.next_row()
    s = np.asarray(logged.features, dtype=np.float64)
    idx = np.where(nxt >= 0, nxt, np.arange(len(logged)))
    return {
        "s": s,
        "a": np.asarray(logged.action, dtype=np.int64),
        "r": np.asarray(logged.reward, dtype=np.float64),
        "cost": np.asarray(logged.cost, dtype=np.float64),
        "s_next": s[idx],
        "done": np.asarray(logged.done, dtype=np.float64),
        "group": np.asarray(logged.group, dtype=np.int64),
        "click": np.asarray(logged.click, dtype=np.float64),
        "propensity": np.asarray(logged.propensity, dtype=np.float64),
        "session_id": np.asarray(logged.session_id, dtype=np.int64),
        "step": np.asarray(logged.step, dtype=np.int64),
    }


_TENSOR_KEYS = ("s", "a", "r", "cost", "s_next", "done", "group", "click")


def _implied_ratio(p: np.ndarray, tr: dict[str, np.ndarray]) -> float:
    """The allocation ratio of a policy with insert probabilities ``p`` at the logged states, under its own state
    visitation (sequential importance weights, :func:`recsys.ope.implied_rate`)."""
    target = np.where(tr["a"] == 1, p, 1.0 - p)
    return implied_rate(p, tr["propensity"], target, session_ids=tr["session_id"],
                        steps=tr["step"]).allocation_ratio


def calibrate_student(student: torch.nn.Module, tr: dict[str, np.ndarray], target: float,
                      iterations: int = 40) -> dict[str, float]:
    """Bisect the student's logit offset so that its allocation ratio *under its own state visitation* (estimated
    from the log with sequential importance weights) equals ``target``.

    The Lagrangian is solved on the logged states, but the constraint binds on the states the served policy visits
    (a policy that inserts less keeps users longer, in other states), and the distilled student is not exactly the
    teacher; without this step the served ratio lands 0.02-0.05 below the target (see BENCHMARKS, allocation)."""
    s = torch.as_tensor(tr["s"], dtype=torch.float32)

    def ratio(offset: float) -> float:
        student.offset.fill_(offset)
        with torch.no_grad():
            return _implied_ratio(student(s).double().numpy(), tr)

    before = ratio(0.0)
    lo, hi = -8.0, 8.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if ratio(mid) > target:
            hi = mid
        else:
            lo = mid
    offset = 0.5 * (lo + hi)
    after = ratio(offset)
    return {"calibration_offset": offset, "implied_ratio_before": before, "implied_ratio_after": after}


def _to_tensors(tr: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out = {}
    for k in _TENSOR_KEYS:
        v = torch.as_tensor(tr[k])
        out[k] = v if k in ("a", "group") else v.float()
    return out


def _optimise(params: list[nn.Parameter], loss_of: Callable[[torch.Tensor], dict[str, torch.Tensor]], steps: int,
              cfg: AllocatorTrainConfig, rng: np.random.Generator, n: int, grad_clip: float | None,
              after: Callable[[dict[str, torch.Tensor]], None] | None = None) -> dict[str, list[float]]:
    """``steps`` Adam steps on minibatches of ``cfg.batch_size`` row indices drawn with replacement from ``n``:
    ``loss_of(idx)`` returns a dict whose ``"loss"`` is minimised (``after`` sees it after each step). The gradient
    norm is clipped at ``grad_clip`` (None: not clipped) and the rate follows ``cfg.lr_schedule``. Returns every
    output's per-step history."""
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
             if cfg.lr_schedule == "cosine" else None)
    history: dict[str, list[float]] = {}
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(0, n, size=min(cfg.batch_size, n)))
        out = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        if after is not None:
            after(out)
        for k, v in out.items():
            history.setdefault(k, []).append(float(v.detach()))
    return history


def fit_allocator(logged: LoggedData, cfg: AllocatorTrainConfig) -> tuple[Any, Any, dict[str, float]]:
    """Train ``cfg.policy`` offline on ``logged``; returns ``(policy callable, model, metrics)``."""
    t0 = time.perf_counter()
    tr = transitions(logged)
    n, n_features = tr["s"].shape
    n_groups = max(n_groups_of(logged.feature_names), 1)
    has_idx = feature_index("has_candidate")
    gamma = float(logged.gamma if cfg.gamma is None else cfg.gamma)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        if cfg.policy == "threshold":
            model = build_allocator("threshold", n_features, n_groups, has_idx,
                                    feature_index=feature_index("score_hat"), **cfg.options)
            metrics = model.fit(tr, cfg.alloc_target, gamma=gamma, cost_weight=cfg.cost_weight)
            metrics["fit_seconds"] = time.perf_counter() - t0
            return model, model, metrics

        opts = {"gamma": gamma, "cost_weight": cfg.cost_weight, **cfg.options}
        if cfg.policy in ("slmgac", "plain_ac"):
            opts.setdefault("alloc_target", cfg.alloc_target)
        model = build_allocator(cfg.policy, n_features, n_groups, has_idx, **opts)
        data = _to_tensors(tr)
        model.prepare(data)
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        history = _optimise(params, lambda idx: model.losses({k: v[idx] for k, v in data.items()}), cfg.steps,
                            cfg, rng, n, cfg.grad_clip, after=model.after_step)
        metrics = {f"final_{k}": float(np.mean(v[-50:])) for k, v in history.items()}

        if isinstance(model, SLMGAC):
            metrics["lagrange_dual_ascent"] = float(model.lagrange)
            with torch.no_grad():
                model.solve_lagrange(data["s"])
            _optimise(list(model.actor.parameters()),
                      lambda idx: {"loss": model.losses({k: v[idx] for k, v in data.items()})["actor"]},
                      cfg.polish_steps, cfg, rng, n, cfg.grad_clip)
            _optimise(list(model.student.parameters()), lambda idx: {"loss": model.distill_loss(data["s"][idx])},
                      cfg.distill_steps, cfg, rng, n, None)
            model.eval()
            with torch.no_grad():
                teacher = model.prob_insert(data["s"])
                student = model.student_prob_insert(data["s"])
            metrics["teacher_alloc_ratio_logged"] = float(teacher.mean())
            metrics["student_alloc_ratio_logged"] = float(student.mean())
            metrics["student_action_agreement"] = float(((teacher > 0.5) == (student > 0.5)).float().mean())
            metrics["lagrange"] = float(model.lagrange)
            if cfg.calibrate and cfg.alloc_target is not None:
                metrics.update(calibrate_student(model.student, tr, cfg.alloc_target))
            policy = TorchPolicy(model.student, cfg.policy)
        else:
            if hasattr(model, "calibrate"):
                metrics["margin"] = model.calibrate(data["s"], cfg.alloc_target)
            model.eval()
            policy = TorchPolicy(model, cfg.policy)
        metrics["alloc_ratio_logged"] = float(policy(tr["s"]).mean())
        metrics["fit_seconds"] = time.perf_counter() - t0
        return policy, model, metrics
    finally:
        torch.set_num_threads(threads)


__all__ = ["AllocatorTrainConfig", "fit_allocator", "transitions"]


@dataclass
class AllocatorJobResult:
    policy: Any
    metrics: dict[str, float]
    export_dir: Path | None
    run_id: str | None


def train_allocator_job(data_dir: str | Path, cfg: AllocatorTrainConfig, tracking: TrackingConfig,
                        n_log_sessions: int = 5_000, n_true_sessions: int = 20_000, log_seed: int = 0,
                        truth_seed: int = 7, logs_path: str | Path | None = None,
                        export_dir: str | Path | None = None, estimator: Estimator | None = None
                        ) -> AllocatorJobResult:
    """Log a day with the environment's logging policy (or read ``logs_path``), train ``cfg.policy`` offline on it,
    measure its true value / cost / allocation ratio in the environment (common random numbers), export the served
    policy and track it all in one MLflow run. With an ``estimator`` (e.g.
    :class:`pipelines.allocator_state.RankerEstimator`) the policy's state holds that model's predictions instead of
    the truth's, as the ranking service will feed it; the export's meta says which (``state``)."""
    from models.allocation.export import save_policy
    from recsys.feed.env import FeedEnv

    env = FeedEnv(data_dir, estimator=estimator)
    with tracking_run(tracking, f"train-allocator-{cfg.policy}", tags={"job": "train_allocator",
                                                                        "policy": cfg.policy}) as tr:
        if logs_path is not None:
            logged = LoggedData.read_parquet(logs_path)
        else:
            logged = env.log(env.default_logging_policy(), n_log_sessions, seed=log_seed)
        tr.log_params({"train": {k: v for k, v in vars(cfg).items() if k != "options"}, "options": cfg.options,
                       "log": {"sessions": int(np.unique(logged.session_id).size), "decisions": len(logged),
                               "path": str(logs_path) if logs_path else "env.default_logging_policy"},
                       "env": env.describe()})
        policy, model, metrics = fit_allocator(logged, cfg)
        truth = env.rollout(policy, n_true_sessions, seed=truth_seed)
        metrics.update({"true_value": truth.value, "true_cost": truth.cost, "true_alloc_ratio": truth.alloc_ratio,
                        "true_mean_length": truth.mean_length})
        tr.log_metrics(metrics)
        out = None
        if export_dir is not None:
            out = save_policy(policy, export_dir, meta={"policy": cfg.policy, "metrics": metrics,
                                                        "feature_names": list(logged.feature_names),
                                                        "alloc_target": cfg.alloc_target,
                                                        "state": env.describe()["estimator"] or "truth"})
            tr.log_artifact(out, "policy")
        return AllocatorJobResult(policy=policy, metrics=metrics, export_dir=out, run_id=tr.run_id)
