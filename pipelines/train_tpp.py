"""Job: neural TPPs over the event stream under the continual protocol of the TPP brief (§7).

Schemes (one model per scheme, the same base and budget):

| scheme | definition |
|---|---|
| ``prompttpp`` | AttNHP + the continuous-time retrieval prompt pool, warm-started from the last window's full state |
| ``online`` | AttNHP without prompts, warm-started (fine-tuned) window after window |
| ``retrain`` | AttNHP without prompts, trained from scratch on each window |
| ``pretrain`` | AttNHP without prompts, trained on the first window only, then frozen |

For task t = 1..T the model trains on window t's train users (epoch chosen on its dev users), then is evaluated on
the test users of every window j: ``a[t, j]``. Metrics per cell: ``ll_per_event`` (pure log-likelihood per event,
prompt loss excluded), ``rmse_dt`` and ``type_error`` of the next event by thinning. Summaries: ``ll_next`` (mean of
``a[t, t+1]``, the deployment number), ``ll_current`` (mean of ``a[t, t]``), ``avg_final`` (``A_T``), ``bwt`` and
``forgetting`` (on ll_per_event, higher is better, Lopez-Paz & Ranzato / Chaudhry et al.); thinning metrics are
computed on the current and the next window only (they cost ~10x the log-likelihood). Nothing from earlier windows
is replayed.
"""

from __future__ import annotations

import copy
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from models.tpp import AttNHP, PromptConfig, TPPBatch, TPPConfig, load_state, save_state
from recsys.config import TrackingConfig
from recsys.data.tpp import SequenceArrays, TPPTasks
from recsys.data.tpp_truth import TPPTruth, true_total_intensity, window_bounds_ms
from recsys.tracking import tracking_run

log = logging.getLogger(__name__)

SCHEMES: tuple[str, ...] = ("prompttpp", "online", "retrain", "pretrain")


@dataclass
class TPPTrainConfig:
    scheme: str = "prompttpp"
    epochs: int = 3  # per window; the best dev epoch is kept
    first_epochs: int = 0  # passes over the first window (every scheme; 0 = ``epochs``)
    batch_size: int = 64
    lr: float = 1e-3
    n_samples: int = 50  # thinning samples for next-event prediction
    eval_max_sequences: int = 0  # 0 = every test sequence
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # TPPConfig overrides
    prompt: dict[str, Any] = field(default_factory=dict)  # PromptConfig overrides (prompttpp only)
    base_lr_scale: float = 1.0  # from the second window on, the backbone's lr is lr * this (prompt pools keep lr)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose one of {SCHEMES}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.first_epochs < 0:
            raise ValueError(f"epochs, batch_size and lr must be positive (first_epochs >= 0): {self}")
        if not 0 < self.base_lr_scale <= 1:
            raise ValueError(f"base_lr_scale must be in (0, 1], got {self.base_lr_scale}")

    def epochs_for(self, task: int) -> int:
        """Passes over task ``task``: ``first_epochs`` on the first window when set, ``epochs`` otherwise."""
        return self.first_epochs if task == 0 and self.first_epochs else self.epochs


def to_batch(seqs: SequenceArrays, device: torch.device | str = "cpu") -> TPPBatch:
    return TPPBatch(times=torch.as_tensor(seqs.times, device=device), types=torch.as_tensor(seqs.types, device=device),
                    valid=torch.as_tensor(seqs.valid, device=device))


def build_model(cfg: TPPTrainConfig, tasks: TPPTasks) -> AttNHP:
    prompt = PromptConfig(**cfg.prompt) if cfg.scheme == "prompttpp" else None
    mcfg = TPPConfig(**{"n_types": tasks.n_types, "dtime_max": tasks.dtime_max, **cfg.model, "prompt": prompt})
    return AttNHP(mcfg)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with two parameter groups, always in this order: the backbone, then the prompt pools (keys and prompts;
    empty without prompts), so that a saved optimiser state loads into any fresh one of the same model."""
    pools = [p for n, p in model.named_parameters() if ".pool_" in n]
    pool_ids = {id(p) for p in pools}
    base = [p for p in model.parameters() if id(p) not in pool_ids]
    return torch.optim.Adam([{"params": base, "lr": lr}, {"params": pools, "lr": lr}], lr=lr)


def set_window_lr(opt: torch.optim.Optimizer, cfg: TPPTrainConfig, task: int) -> None:
    """The backbone's lr for task ``task``: ``lr`` on the first window, ``lr * base_lr_scale`` after it."""
    opt.param_groups[0]["lr"] = cfg.lr * (cfg.base_lr_scale if task > 0 else 1.0)
    opt.param_groups[1]["lr"] = cfg.lr


@torch.no_grad()
def evaluate(model: torch.nn.Module, seqs: SequenceArrays, cfg: TPPTrainConfig, batch_size: int = 64,
             predict: bool = True) -> dict[str, float]:
    """``ll_per_event`` (trapezoid integral, 50 points per interval) and, with ``predict``, ``rmse_dt`` and
    ``type_error`` of the next event by thinning, on a set of sequences (the first ``eval_max_sequences``)."""
    model.eval()
    rows = np.arange(len(seqs))
    if cfg.eval_max_sequences and rows.size > cfg.eval_max_sequences:
        rows = rows[: cfg.eval_max_sequences]
    ll, n, se, n_dt, wrong = 0.0, 0.0, 0.0, 0.0, 0.0
    gen = torch.Generator().manual_seed(cfg.seed)
    for i in range(0, rows.size, batch_size):
        b = to_batch(seqs.take(rows[i:i + batch_size]))
        out = model.log_likelihood(b, rule="trapezoid", n_points=50)
        ll += float((out.event_ll - out.non_event).sum())
        n += float(out.n_events.sum())
        if not predict:
            continue
        pred = model.predict_next(b, n_samples=cfg.n_samples, generator=gen)
        # position i predicts event i + 1 (both valid)
        target = b.valid[:, 1:] & b.valid[:, :-1]
        true_dt = (b.times[:, 1:] - b.times[:, :-1])[target]
        se += float(((pred.dt[:, :-1][target] - true_dt) ** 2).sum())
        n_dt += float(target.sum())
        wrong += float((pred.types[:, :-1][target] != b.types[:, 1:][target]).sum())
    out_m = {"ll_per_event": ll / max(n, 1.0), "n_events": n}
    if predict:
        out_m.update({"rmse_dt": float(np.sqrt(se / max(n_dt, 1.0))), "type_error": wrong / max(n_dt, 1.0)})
    return out_m


def _dev_ll(model: torch.nn.Module, seqs: SequenceArrays, batch_size: int) -> float:
    """Deterministic (trapezoid) log-likelihood per event, for choosing the epoch."""
    model.eval()
    ll, n = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            out = model.log_likelihood(to_batch(seqs.take(np.arange(i, min(i + batch_size, len(seqs))))),
                                       rule="trapezoid", n_points=50)
            ll += float((out.event_ll - out.non_event).sum())
            n += float(out.n_events.sum())
    return ll / max(n, 1.0)


def train_window(model: torch.nn.Module, opt: torch.optim.Optimizer, train: SequenceArrays, dev: SequenceArrays,
                 cfg: TPPTrainConfig, rng: np.random.Generator, epochs: int | None = None) -> dict[str, float]:
    """``epochs`` (default ``cfg.epochs``) passes over one window's training sequences; the best dev epoch is
    restored."""
    best, best_state, steps, t0 = -np.inf, None, 0, time.perf_counter()
    for _ in range(cfg.epochs if epochs is None else epochs):
        model.train()
        order = rng.permutation(len(train))
        for i in range(0, order.size, cfg.batch_size):
            loss, _ = model.loss(to_batch(train.take(order[i:i + cfg.batch_size])))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            steps += 1
        dev_ll = _dev_ll(model, dev, cfg.batch_size)
        if dev_ll > best:
            best, best_state = dev_ll, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"dev_ll": float(best), "steps": float(steps), "train_s": time.perf_counter() - t0}


@dataclass
class ContinualResult:
    scheme: str
    matrix: dict[str, np.ndarray]  # metric -> [T, T] (row = after task t, column = test set of task j)
    summary: dict[str, float]
    per_window: list[dict[str, float]]
    model: torch.nn.Module | None = None


def forgetting_summary(a: np.ndarray) -> dict[str, float]:
    """Continual-learning summaries of a higher-is-better matrix ``a[t, j]`` (T x T)."""
    t = a.shape[0]
    out = {"next": float(np.mean([a[i, i + 1] for i in range(t - 1)])) if t > 1 else float("nan"),
           "current": float(np.mean(np.diag(a))), "avg_final": float(np.mean(a[t - 1]))}
    if t > 1:
        out["bwt"] = float(np.mean([a[t - 1, j] - a[j, j] for j in range(t - 1)]))
        out["forgetting"] = float(np.mean([max(a[r, j] for r in range(j, t - 1)) - a[t - 1, j]
                                           for j in range(t - 1)]))
    return out


def run_continual(tasks: TPPTasks, cfg: TPPTrainConfig, on_window=None) -> ContinualResult:
    """The protocol for one scheme over every window; ``on_window(t, record)`` after each task."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n = len(tasks)
    metrics = ("ll_per_event", "rmse_dt", "type_error")
    mat = {m: np.full((n, n), np.nan) for m in metrics}
    model = build_model(cfg, tasks)
    opt = make_optimizer(model, cfg.lr)
    per_window = []
    state = io.BytesIO()
    for t, task in enumerate(tqdm(tasks.tasks, disable=not cfg.progress, desc=f"tpp {cfg.scheme}", unit="window")):
        if cfg.scheme == "retrain" and t > 0:
            torch.manual_seed(cfg.seed + t)
            model = build_model(cfg, tasks)
            opt = make_optimizer(model, cfg.lr)
        elif t > 0 and cfg.scheme in ("online", "prompttpp"):
            state.seek(0)
            load_state(state, model, opt)  # the full state of the previous window, as a fresh process would
        set_window_lr(opt, cfg, t)
        rec: dict[str, float] = {"window": float(task.window)}
        if cfg.scheme != "pretrain" or t == 0:
            rec.update(train_window(model, opt, task.splits["train"], task.splits["dev"], cfg, rng,
                                    cfg.epochs_for(t)))
        state = io.BytesIO()
        save_state(state, model, opt, {"task": t, "scheme": cfg.scheme})
        for j, other in enumerate(tasks.tasks):
            # log-likelihood on every window (forgetting needs the whole matrix); thinning on t and t + 1 only
            m = evaluate(model, other.splits["test"], cfg, predict=j in (t, t + 1))
            for k in metrics:
                mat[k][t, j] = m.get(k, np.nan)
        rec.update({f"{k}.current": mat[k][t, t] for k in metrics})
        if t + 1 < n:
            rec.update({f"{k}.next": mat[k][t, t + 1] for k in metrics})
        per_window.append(rec)
        if on_window is not None:
            on_window(t, rec)
    summary = {f"ll_per_event.{k}": v for k, v in forgetting_summary(mat["ll_per_event"]).items()}
    for k in ("rmse_dt", "type_error"):  # predicted on the current and the next window only
        summary[f"{k}.current"] = float(np.mean(np.diag(mat[k])))
        if n > 1:
            summary[f"{k}.next"] = float(np.mean([mat[k][i, i + 1] for i in range(n - 1)]))
    return ContinualResult(scheme=cfg.scheme, matrix=mat, summary=summary, per_window=per_window, model=model)


def transfer_plot(result: ContinualResult, title: str):
    """Heatmap of ``ll_per_event`` after task t (rows) on the test users of window j (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = result.matrix["ll_per_event"]
    fig, ax = plt.subplots(figsize=(4.8, 4.0))
    im = ax.imshow(a, cmap="viridis")
    ax.set(xlabel="test window j", ylabel="after training on window t", title=title)
    fig.colorbar(im, ax=ax, label="log-likelihood per event")
    fig.tight_layout()
    return fig


def train_tpp(tasks: TPPTasks, cfg: TPPTrainConfig, tracking: TrackingConfig) -> ContinualResult:
    """The continual protocol for one scheme as one MLflow run: per-window metrics (step = task), the summary, the
    transfer heatmap."""
    with tracking_run(tracking, f"train-tpp-{cfg.scheme}", tags={"job": "train_tpp", "scheme": cfg.scheme}) as tr:
        tr.log_params({"train": {k: v for k, v in vars(cfg).items() if not isinstance(v, dict)},
                       "model": cfg.model, "prompt": cfg.prompt if cfg.scheme == "prompttpp" else {},
                       "data": {"windows": len(tasks), "minutes_per_unit": tasks.time_scale_min,
                                "dtime_max": tasks.dtime_max, **tasks.info}})
        res = run_continual(tasks, cfg, on_window=lambda t, rec: tr.log_metrics(
            {k: float(v) for k, v in rec.items() if k != "window"}, step=t))
        tr.log_metrics(res.summary)
        if len(tasks) > 1:
            import matplotlib.pyplot as plt

            fig = transfer_plot(res, f"{cfg.scheme}: log-likelihood per event")
            tr.log_figure(fig, "transfer_matrix.png")
            plt.close(fig)
        return res


@torch.no_grad()
def intensity_agreement(model: torch.nn.Module, tasks: TPPTasks, t: int, seqs: SequenceArrays, truth: TPPTruth,
                        window_days: int) -> dict[str, float]:
    """Learned against true total intensity at the midpoint of every inter-event interval of ``seqs`` (task ``t``
    rows; tied events skipped): Pearson correlation of the log intensities (``intensity_corr``) and the mean absolute
    log ratio (``intensity_mae_log``), both in the tasks' time unit."""
    model.eval()
    raw = tasks.sequences[t]
    raw_rows = raw.rows_of(seqs.user_id)
    bounds = window_bounds_ms(tasks, t, window_days)
    learned, true = [], []
    for i in range(0, len(seqs), 64):
        part = seqs.take(np.arange(i, min(i + 64, len(seqs))))
        b = to_batch(part)
        mid = torch.cat([(b.times[:, 1:] + b.times[:, :-1]) / 2, b.times[:, -1:]], 1)
        lam = model.intensities(b, mid[..., None])[..., 0, :].sum(-1).numpy()  # [B, S]
        for r, u in enumerate(part.user_id):
            ms = raw.timestamps_ms[raw_rows[i + r]]
            gap = np.flatnonzero(np.diff(ms) > 0)  # intervals between events at different milliseconds
            true.append(true_total_intensity(truth, int(u), (ms[gap] + ms[gap + 1]) // 2, bounds)
                        * tasks.time_scale_min)
            learned.append(lam[r, gap])
    x, y = np.log(np.concatenate(learned)), np.log(np.maximum(np.concatenate(true), 1e-30))
    return {"intensity_corr": float(np.corrcoef(x, y)[0, 1]), "intensity_mae_log": float(np.abs(x - y).mean())}


def load_tpp_tasks(data_dir, window_days: int = 3, max_len: int = 128, seed: int = 0,
                   cache_dir=None) -> TPPTasks:
    """KuaiLive-format files -> the continual tasks (click, like, comment and gift events)."""
    from recsys.data.builders import event_sequences
    from recsys.data.loaders import load_kuailive
    from recsys.data.tpp import build_tpp_tasks

    t = load_kuailive(data_dir, tables=["click", "like", "comment", "gift"], cache_dir=cache_dir,
                      with_embeddings=False).tables
    return build_tpp_tasks(event_sequences(t["click"], t["like"], t["comment"], t["gift"]), window_days, max_len,
                           seed)


__all__ = ["SCHEMES", "ContinualResult", "TPPTrainConfig", "build_model", "evaluate", "forgetting_summary",
           "intensity_agreement", "load_tpp_tasks", "make_optimizer", "run_continual", "set_window_lr", "to_batch",
           "train_tpp", "train_window", "transfer_plot"]
