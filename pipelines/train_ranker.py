"""Job: train one multi-task ranker on the KuaiLive CTR protocol, evaluate it, export it, track it in MLflow.

``train_ranker(cfg, dataset)`` is device-agnostic (CUDA with bf16 autocast when present), seeded, early-stops on
validation AUC (checked every ``eval_every`` steps and at each epoch end), shows a progress bar, and returns test
metrics: AUC / UAUC / LogLoss of the click task, per-task metrics on clicked rows, the oracle AUC on the same rows
(synthetic data), training samples/s and the latency of scoring 500 candidates for one request.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchrec.optim import RowWiseAdagrad
from tqdm.auto import tqdm

from models.ranking.export import save_ranker
from models.ranking.heads import predictions
from models.ranking.inputs import to_input
from models.ranking.ranker import Ranker, RankerConfig
from recsys.config import TrackingConfig
from recsys.data.builders import oracle_metrics
from recsys.data.ranking import FeatureArrays, RankingDataset
from recsys.metrics import auc, logloss, uauc
from recsys.tracking import tracking_run

log = logging.getLogger(__name__)


#: Optimizers for the embedding tables, by name (the dense part always uses Adam; row-wise Adagrad is TorchRec's).
OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "rowwise_adagrad": RowWiseAdagrad, "sgd": torch.optim.SGD,
}
EMBEDDING_OPTIMIZERS: tuple[str, ...] = tuple(OPTIMIZER_CLASSES)


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class for one of :data:`EMBEDDING_OPTIMIZERS`."""
    if name not in OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(EMBEDDING_OPTIMIZERS)}")
    return OPTIMIZER_CLASSES[name]


class JointOptimizer:
    """Several optimizers stepped together (embedding tables and dense parameters), one ``zero_grad``/``step``."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


@dataclass
class RankerTrainConfig:
    model: str = "tokenmixer"
    epochs: int = 2
    batch_size: int = 2048
    lr: float = 3e-3
    embedding_lr: float = 1e-2
    embedding_optimizer: str = "adam"  # adam | adagrad | rowwise_adagrad | sgd (the id and field tables)
    weight_decay: float = 0.0
    eval_every: int = 0  # steps between validation checks; 0 = once per epoch
    patience: int = 2  # validation checks without improvement before stopping
    max_steps: int = 0  # 0 = no step budget
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    eval_batch_size: int = 8192
    latency_candidates: int = 500
    latency_reps: int = 100
    progress: bool = True
    register_name: str | None = "kuailive-ranker"  # MLflow registered model name (None = do not register)
    overrides: dict[str, Any] = field(default_factory=dict)  # RankerConfig overrides (e.g. backbone sizes)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.embedding_lr <= 0:
            raise ValueError(f"epochs, batch_size, lr and embedding_lr must be positive: {self}")
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(f"unknown embedding optimizer {self.embedding_optimizer!r}; "
                             f"choose one of {', '.join(EMBEDDING_OPTIMIZERS)}")


@dataclass
class RankerTrainResult:
    model: Ranker
    metrics: dict[str, float]
    history: list[dict[str, float]]
    export_dir: Path | None = None
    run_id: str | None = None
    model_version: str | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available")
    return torch.device(name)


def _labels(ds: RankingDataset, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v, np.float32)).to(device) for k, v in ds.labels(rows).items()}


@torch.no_grad()
def predict_rows(model: Ranker, ds: RankingDataset, rows: np.ndarray, batch_size: int,
                 device: torch.device) -> dict[str, np.ndarray]:
    """Predictions (see :func:`models.ranking.heads.predictions`) for dataset rows, in row order."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, rows.size, batch_size):
        x = to_input(ds.arrays(rows[i:i + batch_size])).to(device)
        with _autocast(device):
            pred = predictions(model(x).heads)
        for k, v in pred.items():
            parts.setdefault(k, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate_rows(model: Ranker, ds: RankingDataset, rows: np.ndarray, batch_size: int = 8192,
                  device: torch.device | None = None) -> dict[str, float]:
    """Click AUC / UAUC / LogLoss, per-task metrics on clicked rows, and the oracle on the same rows."""
    device = device or next(model.parameters()).device
    pred = predict_rows(model, ds, rows, batch_size, device)
    lab = ds.labels(rows)
    y = lab["click"].astype(np.int64)
    users = ds.samples["user_id"].to_numpy()[rows]
    out = {"auc": auc(y, pred["click"]), "uauc": uauc(users, y, pred["click"]), "logloss": logloss(y, pred["click"]),
           "n": float(rows.size)}
    clicked = y == 1
    if clicked.any():
        err = np.log1p(pred["watch_s"][clicked]) - lab["watch"][clicked]
        out["watch.rmse_log"] = float(np.sqrt(np.mean(err ** 2)))
        for task in ("comment", "like", "gift"):
            t = lab[task][clicked].astype(np.int64)
            if 0 < t.sum() < t.size:
                out[f"{task}.auc"] = auc(t, pred[task][clicked])
        gv = lab["gift_value"][clicked]
        out["gift_value.rmse_log"] = float(np.sqrt(np.mean((np.log1p(pred["gift_value"][clicked]) - np.log1p(gv)) ** 2)))
    out.update({f"oracle.{k}": v for k, v in oracle_metrics(ds.samples, rows).items()})
    return out


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def request_arrays(ds: RankingDataset, row: int, n_candidates: int, rng: np.random.Generator) -> FeatureArrays:
    """One serving-shaped request: the user of ``row`` at its time, ``n_candidates`` candidate rows, the history
    stored once (row 0) and shared through ``user_of``."""
    cand = rng.choice(ds.samples.height, size=n_candidates, replace=ds.samples.height < n_candidates)
    a = ds.arrays(np.r_[row, cand[1:]])
    for k in a.hist:
        a.hist_len[k][1:] = 0
    for name in ("user_idx", "user_profile"):
        getattr(a, name)[1:] = getattr(a, name)[0]
    return a


@torch.no_grad()
def inference_latency(model: Ranker, ds: RankingDataset, n_candidates: int = 500, reps: int = 100,
                      seed: int = 0) -> dict[str, float]:
    """p50 / p99 milliseconds to score one request of ``n_candidates`` (input conversion included)."""
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    test = ds.rows("test")
    requests = [request_arrays(ds, int(rng.choice(test)), n_candidates, rng) for _ in range(min(reps, 20))]
    user_of = np.zeros(n_candidates, np.int64)
    times = []
    for i in range(reps + 5):
        a = requests[i % len(requests)]
        t0 = time.perf_counter()
        x = to_input(a, user_of).to(device)
        with _autocast(device):
            pred = predictions(model(x).heads)["click"]
        pred.cpu()
        if i >= 5:
            times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def _optimizer(model: Ranker, cfg: RankerTrainConfig) -> JointOptimizer:
    """``embedding_optimizer`` at ``embedding_lr`` on the tables, Adam at ``lr`` on everything else."""
    tables = model.encoder.embedding_parameters()
    emb = {id(p) for p in tables}
    dense = [p for p in model.parameters() if id(p) not in emb]
    return JointOptimizer(optimizer_class(cfg.embedding_optimizer)(tables, lr=cfg.embedding_lr),
                          torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay))


def fit_ranker(ds: RankingDataset, cfg: RankerTrainConfig, on_eval=None) -> RankerTrainResult:
    """Train with early stopping on validation AUC; returns the best model (restored) and its history."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    model = Ranker(ds.spec, RankerConfig.for_model(cfg.model, **cfg.overrides)).to(device)
    opt = _optimizer(model, cfg)
    train, valid = ds.rows("train"), ds.rows("valid")
    steps_per_epoch = math.ceil(train.size / cfg.batch_size)
    eval_every = cfg.eval_every or steps_per_epoch
    total = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    best_auc, best_state, bad, step, seen, train_time = -1.0, None, 0, 0, 0, 0.0
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, disable=not cfg.progress, desc=f"train {cfg.model}", unit="step")
    running: list[float] = []
    stop = False
    for epoch in range(cfg.epochs):
        order = rng.permutation(train)
        for i in range(steps_per_epoch):
            rows = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            t0 = time.perf_counter()
            model.train()
            x = to_input(ds.arrays(rows)).to(device)
            with _autocast(device):
                out = model(x)
                loss = model.loss(out, _labels(ds, rows, device))
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            opt.step()
            train_time += time.perf_counter() - t0
            seen += rows.size
            step += 1
            running.append(loss.parts["click"])
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(running[-50:]):.4f}", best_auc=f"{max(best_auc, 0):.4f}")
            last = step == total
            if step % eval_every == 0 or i == steps_per_epoch - 1 or last:
                m = evaluate_rows(model, ds, valid, cfg.eval_batch_size, device)
                rec = {"step": step, "epoch": epoch + (i + 1) / steps_per_epoch, "train_loss": float(np.mean(running)),
                       "valid_auc": m["auc"], "valid_logloss": m["logloss"], "samples_per_s": seen / train_time}
                running = []
                history.append(rec)
                if on_eval is not None:
                    on_eval(rec)
                if m["auc"] > best_auc + 1e-5:
                    best_auc, bad = m["auc"], 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        stop = True
            if stop or last:
                break
        if stop or step >= total:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    metrics = {"train_samples_per_s": seen / max(train_time, 1e-9), "steps": float(step),
               "best_valid_auc": best_auc, "dense_params": float(model.dense_parameter_count())}
    return RankerTrainResult(model=model, metrics=metrics, history=history)


def learning_curve(history: list[dict[str, float]], title: str, loss_key: str = "train_loss",
                   loss_label: str = "train click BCE", metric_key: str = "valid_auc", metric_label: str = "AUC"):
    """Training loss and a validation metric against steps (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h["step"] for h in history]
    ax[0].plot(steps, [h[loss_key] for h in history], marker="o")
    ax[0].set(xlabel="step", ylabel=loss_label, title="training loss")
    ax[1].plot(steps, [h[metric_key] for h in history], marker="o", color="tab:green")
    ax[1].set(xlabel="step", ylabel=metric_label, title=f"validation {metric_label}")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def train_ranker(ds: RankingDataset, cfg: RankerTrainConfig, tracking: TrackingConfig,
                 export_dir: str | Path | None = None) -> RankerTrainResult:
    """Fit, evaluate on test, measure latency, export, and log everything to one MLflow run."""
    device = resolve_device(cfg.device)
    with tracking_run(tracking, f"train-ranker-{cfg.model}", tags={"job": "train_ranker", "model": cfg.model}) as tr:
        tr.log_params({"train": {k: v for k, v in asdict(cfg).items() if k != "overrides"},
                       "ranker": asdict(RankerConfig.for_model(cfg.model, **cfg.overrides)),
                       "data": {"n_samples": ds.samples.height, "n_users": ds.spec.n_users,
                                "n_streamers": ds.spec.n_streamers}, "device": str(device)})
        res = fit_ranker(ds, cfg, on_eval=lambda rec: tr.log_metrics(
            {k: v for k, v in rec.items() if k != "step"}, step=int(rec["step"])))
        test = evaluate_rows(res.model, ds, ds.rows("test"), cfg.eval_batch_size, device)
        lat = inference_latency(res.model, ds, cfg.latency_candidates, cfg.latency_reps, seed=cfg.seed)
        res.metrics.update({f"test.{k}" if not k.startswith("oracle") else k: v for k, v in test.items()})
        res.metrics.update(lat)
        tr.log_metrics(res.metrics)
        if res.history:
            fig = learning_curve(res.history, f"{cfg.model} ranker")
            tr.log_figure(fig, "learning_curve.png")
            import matplotlib.pyplot as plt

            plt.close(fig)
        out = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="ranker-export-"))
        save_ranker(res.model, out, ds.user_index, ds.streamer_index,
                    meta={"model": cfg.model, "metrics": dict(res.metrics)}, tables=ds.serving)
        res.export_dir = out
        res.run_id = tr.run_id
        if tr.run is not None:
            from pipelines.registry import log_ranker_model

            res.model_version = log_ranker_model(out, res.model, ds, cfg.register_name)
        return res


def load_ranking_dataset(data_dir: str | Path, cache_dir: str | Path | None = None) -> RankingDataset:
    """KuaiLive-format files -> :class:`RankingDataset` (with the oracle when ``truth/`` is present)."""
    from recsys.data.loaders import load_kuailive
    from recsys.data.ranking import build_ranking_dataset

    root = Path(data_dir)
    data = load_kuailive(root, cache_dir=cache_dir)
    truth = root / "truth"
    return build_ranking_dataset(data, truth_dir=truth if truth.is_dir() else None)


def set_alias(name: str, version: str, alias: str, tracking: TrackingConfig) -> None:
    """Point ``models:/name@alias`` at a registered version (how the ranking service finds its model)."""
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def evaluate_export(model_dir: str | Path, ds: RankingDataset, split: str = "test",
                    batch_size: int = 8192) -> dict[str, float]:
    """Metrics of an exported ranker on a split of ``ds`` (ids are mapped through the export's own id index)."""
    from models.ranking.export import load_ranker

    loaded = load_ranker(model_dir)
    if loaded.model.spec.n_users != ds.spec.n_users or loaded.model.spec.n_streamers != ds.spec.n_streamers:
        raise ValueError(f"{model_dir} was trained on a dataset with {loaded.model.spec.n_users - 1} users and "
                         f"{loaded.model.spec.n_streamers - 1} streamers; this one has {ds.spec.n_users - 1} and "
                         f"{ds.spec.n_streamers - 1}")
    rows = ds.rows(split)
    if rows.size == 0:
        raise ValueError(f"the dataset has no {split!r} rows")
    return evaluate_rows(loaded.model, ds, rows, batch_size, torch.device("cpu"))
