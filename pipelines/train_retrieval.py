"""Job: train one retriever on the KuaiLive top-K protocol, evaluate it, export it, track it in MLflow.

Training examples are the leave-one-out ``train`` clicks; each anchor is contrasted with ``n_negatives`` items live at
its own t. Validation NDCG@10 (sampled protocol) drives early stopping, checked every ``eval_every`` steps and at
every epoch end. A GRank with score fusion then fits its fusion weights on the validation split
(:func:`learn_fusion`). The evaluation
ranks each target among its protocol candidates (10,000 live-at-t negatives, or all of them when fewer) for
Recall/NDCG@{5,10,20}, and among every item live at t for Recall/NDCG@{50,500}; a GRank with a ranker also reports
the generator's Recall@k1 (the ceiling of the ranker).
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
from tqdm.auto import tqdm

from models.retrieval.grank import GRank
from models.retrieval.inputs import CatalogSizes, QueryBatch, catalog_tensors
from models.retrieval.registry import NON_PARAMETRIC, RetrieverConfig, build_retriever
from pipelines.train_ranker import _autocast, resolve_device, set_alias
from recsys.config import TrackingConfig
from recsys.data.retrieval import BEHAVIOURS, RetrievalDataset, eval_candidates
from recsys.metrics import target_ranks, topk_metrics
from recsys.tracking import tracking_run

log = logging.getLogger(__name__)

SAMPLED_KS: tuple[int, ...] = (5, 10, 20)
FULL_KS: tuple[int, ...] = (50, 500)


@dataclass
class RetrievalTrainConfig:
    model: str = "grank"
    granularity: str = "streamer"
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    clip_norm: float = 10.0
    n_negatives: int = 255  # live-at-t negatives per training anchor
    eval_every: int = 0  # steps between validation checks; 0 = once per epoch
    patience: int = 2  # validation checks without a better NDCG@10 before stopping
    max_steps: int = 0  # 0 = no step budget
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 128
    progress: bool = True
    register_name: str | None = "kuailive-retriever"
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.n_negatives < 1:
            raise ValueError(f"epochs, batch_size, lr and n_negatives must be positive: {self}")
        if self.granularity not in ("streamer", "room"):
            raise ValueError(f"granularity must be 'streamer' or 'room', got {self.granularity!r}")


@dataclass
class RetrievalTrainResult:
    model: torch.nn.Module | None  # None for popularity
    metrics: dict[str, float]
    history: list[dict[str, float]]
    export_dir: Path | None = None
    run_id: str | None = None
    model_version: str | None = None


def retriever_config(ds: RetrievalDataset, cfg: RetrievalTrainConfig) -> RetrieverConfig:
    """The model config of ``cfg.model`` with the dataset's history lengths and the user's overrides."""
    fixed = sorted({"long_len", "short_len"} & set(cfg.overrides))
    if fixed:
        raise ValueError(f"{', '.join(fixed)} come(s) from the dataset's history lengths ({ds.long_len}, "
                         f"{ds.short_len}); they cannot be set as model options")
    return RetrieverConfig.for_model(cfg.model, long_len=ds.long_len, short_len=ds.short_len, **cfg.overrides)


def catalog_sizes(ds: RetrievalDataset) -> CatalogSizes:
    return CatalogSizes(n_items=ds.catalog.n_items, n_streamers=ds.catalog.n_streamers, n_users=ds.n_users,
                        n_profile=ds.profile_vocab_size, n_profile_fields=int(ds.user_profile.shape[1]),
                        n_behaviours=len(BEHAVIOURS), title_dim=int(ds.catalog.titles.shape[1]),
                        granularity=ds.granularity)


# ------------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def score_candidates(model: torch.nn.Module | None, ds: RetrievalDataset, users: np.ndarray, times: np.ndarray,
                     cands: np.ndarray, valid: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Final scores ``[n, C]`` (float64, -inf where invalid) of candidate rows; ``model=None`` is popularity."""
    if model is None:
        return np.where(valid, ds.popularity_scores(cands, times), -np.inf)
    model.eval()
    device = next(model.parameters()).device
    needs_pop = getattr(model, "ranker", None) is not None  # only GRank's ranker reads candidate popularity
    out = np.empty(cands.shape, np.float64)
    for i in range(0, users.size, batch_size):
        sl = slice(i, i + batch_size)
        q = QueryBatch.from_arrays(ds.query(users[sl], times[sl]), device)
        c = torch.as_tensor(cands[sl], device=device)
        v = torch.as_tensor(valid[sl], device=device)
        pop = (torch.as_tensor(candidate_popularity(ds, cands[sl], times[sl]), device=device) if needs_pop
               else None)
        with _autocast(device):
            out[sl] = model.scores(q, c, v, pop).double().cpu().numpy()
    return out


def candidate_popularity(ds: RetrievalDataset, cands: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``log1p`` of each candidate streamer's clicks in the 24 h before t, ``[B, C]`` float32 (the ranker's
    per-candidate feature; the online store keeps the same per-streamer day counts)."""
    return np.log1p(ds.streamer_clicks(cands, times)[0]).astype(np.float32)


def _ranks(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return target_ranks(scores[:, 0], np.where(valid[:, 1:], scores[:, 1:], 0.0), valid[:, 1:])


@torch.no_grad()
def generator_hits(model: GRank, ds: RetrievalDataset, users: np.ndarray, times: np.ndarray,
                   cands: np.ndarray, valid: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Per target, whether it is inside the generator's top-k1 (the ranker's ceiling); bool ``[n]``."""
    model.eval()
    device = next(model.parameters()).device
    hits = []
    for i in range(0, users.size, batch_size):
        sl = slice(i, i + batch_size)
        q = QueryBatch.from_arrays(ds.query(users[sl], times[sl]), device)
        s = model.generator_scores(model.user_vector(q), torch.as_tensor(cands[sl], device=device),
                                   torch.as_tensor(valid[sl], device=device)).cpu().numpy()
        hits.append(_ranks(s, valid[sl]) <= model.cfg.k1)
    return np.concatenate(hits) if hits else np.zeros(0, bool)


@dataclass
class TopScores:
    """One batch of requests through GRank's two stages: ``gen [B, C]`` the generator's scores of every candidate
    (float64, -inf where invalid), ``top [B, D]`` the columns of its top D, ``ranker`` / ``pop`` ``[B, D]`` the
    ranker's scores and the popularity of those columns."""

    rows: slice
    gen: torch.Tensor
    top: torch.Tensor
    ranker: torch.Tensor
    pop: torch.Tensor


@torch.no_grad()
def top_scores(model: GRank, ds: RetrievalDataset, users: np.ndarray, times: np.ndarray, cands: np.ndarray,
               valid: np.ndarray, depth: int, batch_size: int = 128):
    """Yield :class:`TopScores` per batch of requests: the generator over every candidate, the ranker over its top
    ``depth`` (float64 scores, on the CPU)."""
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, users.size, batch_size):
        sl = slice(i, i + batch_size)
        q = QueryBatch.from_arrays(ds.query(users[sl], times[sl]), device)
        c, v = torch.as_tensor(cands[sl], device=device), torch.as_tensor(valid[sl], device=device)
        u = model.user_vector(q)
        gen = model.generator_scores(u, c, v)
        top = gen.topk(min(depth, c.shape[1]), dim=1).indices
        sub = c.gather(1, top)
        pop = torch.as_tensor(candidate_popularity(ds, sub.cpu().numpy(), times[sl]), device=device)
        rs = model.rank(q, u, sub, cand_pop=pop).double()
        yield TopScores(sl, gen.cpu(), top.cpu(), rs.cpu(), pop.cpu())


def learns_fusion(model: torch.nn.Module | None) -> bool:
    """Whether training ends by fitting the model's fusion weights: a GRank with a ranker, score fusion on and
    ``learn_fusion`` set."""
    return (isinstance(model, GRank) and model.ranker is not None and model.cfg.fusion is not None
            and model.cfg.learn_fusion)


def learn_fusion(model: GRank, ds: RetrievalDataset, split: str = "valid", max_targets: int = 4096, seed: int = 0,
                 batch_size: int = 128) -> dict[str, float]:
    """Fit GRank's fusion weights on ``split`` and set them (:func:`~models.retrieval.grank.fit_fusion_weights`):
    up to ``max_targets`` of its targets (seeded), each among every item live at its t, through the generator's
    top ``k1`` (targets outside it cannot move and are left out). Returns the weights and how many targets fitted
    them; with no target inside any top k1 the weights stay as they were."""
    from models.retrieval.grank import fit_fusion_weights, fusion_features

    n = ds.eval_sets[split].targets.height
    rows = np.arange(n)
    if 0 < max_targets < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_targets, replace=False))
    feats, valids, targets = [], [], []
    for lo in range(0, rows.size, EVAL_CHUNK):
        found = eval_candidates(ds, split, full_pool=True, rows=rows[lo: lo + EVAL_CHUNK])
        valid = found[3]
        for b in top_scores(model, ds, *found, depth=model.cfg.k1, batch_size=batch_size):
            vt = torch.as_tensor(valid[b.rows]).gather(1, b.top)
            inside = ((b.top == 0) & vt).any(1)
            feats.append(fusion_features(b.ranker, b.gen.gather(1, b.top), vt, b.pop)[inside].float())
            valids.append(vt[inside])
            targets.append((b.top[inside] == 0).long().argmax(1))
    out = {"fusion_targets": float(sum(t.numel() for t in targets)), "fusion_requests": float(rows.size)}
    if out["fusion_targets"]:
        width = max(f.shape[1] for f in feats)  # the last chunks may have fewer live items

        def pad(x: torch.Tensor, value: float | bool) -> torch.Tensor:
            return torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[1]) if x.ndim == 3 else
                                           (0, width - x.shape[1]), value=value)

        w = fit_fusion_weights(torch.cat([pad(f, 0.0) for f in feats]), torch.cat([pad(v, False) for v in valids]),
                               torch.cat(targets), init=model.fusion_weights.cpu())
        model.set_fusion_weights(w)
    w = model.fusion_weights.tolist()
    return out | {"fusion_w_ranker": w[0], "fusion_w_generator": w[1], "fusion_w_pop": w[2]}


#: Targets scored per chunk by :func:`evaluate_retriever`: bounds its memory (at full scale a split is 23,771
#: targets x about 13,000 live items; all at once did not fit in 24 GiB). A multiple of the scoring batch size
#: keeps the batches, and so the scores, the same as one pass over everything.
EVAL_CHUNK = 2048


def evaluate_retriever(model: torch.nn.Module | None, ds: RetrievalDataset, split: str = "test",
                       full_pool: bool = True, batch_size: int = 128, chunk: int = EVAL_CHUNK) -> dict[str, float]:
    """Recall/NDCG@{5,10,20} on the protocol's candidates; with ``full_pool`` also @{50,500} against every item
    live at t (and the generator's recall@k1 for GRank with a ranker). Targets are scored ``chunk`` at a time."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = ds.eval_sets[split].targets.height
    with_generator = full_pool and isinstance(model, GRank) and model.ranker is not None
    sampled, full, live, hits = [], [], [], []
    for lo in range(0, n, chunk):
        rows = np.arange(lo, min(lo + chunk, n))
        users, times, cands, valid = eval_candidates(ds, split, rows=rows)
        sampled.append(_ranks(score_candidates(model, ds, users, times, cands, valid, batch_size), valid))
        if full_pool:
            users, times, cands, valid = eval_candidates(ds, split, full_pool=True, rows=rows)
            full.append(_ranks(score_candidates(model, ds, users, times, cands, valid, batch_size), valid))
            live.append(valid.sum(1))
            if with_generator:
                hits.append(generator_hits(model, ds, users, times, cands, valid, batch_size))
        del cands, valid
    out = topk_metrics(np.concatenate(sampled) if sampled else np.zeros(0, np.int64), SAMPLED_KS)
    out["n"] = float(n)
    if full_pool:
        out.update(topk_metrics(np.concatenate(full) if full else np.zeros(0, np.int64), FULL_KS))
        out["mean_live"] = float(np.concatenate(live).mean()) if live else 0.0
        if with_generator:
            out[f"generator_recall@{model.cfg.k1}"] = float(np.concatenate(hits).mean())
    return out


# ------------------------------------------------------------------------------------------------------ training
def fit_retriever(ds: RetrievalDataset, cfg: RetrievalTrainConfig, on_eval=None) -> RetrievalTrainResult:
    """Train with early stopping on validation NDCG@10; returns the best model (restored) and its history."""
    if cfg.model in NON_PARAMETRIC:
        return RetrievalTrainResult(model=None, metrics={"steps": 0.0}, history=[])
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    rcfg = retriever_config(ds, cfg)
    model = build_retriever(catalog_sizes(ds), rcfg, catalog_tensors(ds.catalog)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = ds.train_user.size
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    best, best_state, bad, step, seen, train_time = -1.0, None, 0, 0, 0, 0.0
    history: list[dict[str, float]] = []
    running: dict[str, list[float]] = {}
    stop = False
    bar = tqdm(total=total, disable=not cfg.progress, desc=f"train {cfg.model} ({ds.granularity})", unit="step")
    for epoch in range(cfg.epochs):
        order = rng.permutation(n)
        for i in range(steps_per_epoch):
            rows = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            t0 = time.perf_counter()
            model.train()
            users, times, target = ds.train_user[rows], ds.train_time[rows], ds.train_item[rows]
            negs, ok = ds.sample_live_negatives(times, target, cfg.n_negatives, rng)
            q = QueryBatch.from_arrays(ds.query(users, times), device)
            cand_np = np.concatenate([target[:, None], negs], 1)
            cand = torch.as_tensor(cand_np, device=device)
            valid = torch.as_tensor(np.concatenate([np.ones((rows.size, 1), bool), ok], 1), device=device)
            pop = torch.as_tensor(candidate_popularity(ds, cand_np, times), device=device)
            with _autocast(device):
                losses = model.losses(q, cand, valid, pop)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            train_time += time.perf_counter() - t0
            seen += rows.size
            step += 1
            for k, v in losses.items():
                running.setdefault(k, []).append(float(v.detach()))
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(running['loss'][-20:]):.3f}", best_ndcg10=f"{max(best, 0):.4f}")
            end_of_epoch = i == steps_per_epoch - 1 or step >= total
            if (cfg.eval_every and step % cfg.eval_every == 0) or end_of_epoch:
                m = evaluate_retriever(model, ds, "valid", full_pool=False, batch_size=cfg.eval_batch_size)
                rec = {"step": step, "epoch": epoch + (i + 1) / steps_per_epoch, "samples_per_s": seen / train_time,
                       **{f"train_{k}": float(np.mean(v)) for k, v in running.items()},
                       **{f"valid_{k}": v for k, v in m.items() if k != "n"}}
                running = {}
                history.append(rec)
                if on_eval is not None:
                    on_eval(rec)
                if m["ndcg@10"] > best + 1e-5:
                    best, bad, best_state = m["ndcg@10"], 0, copy.deepcopy(model.state_dict())
                else:
                    bad += 1
                stop = bad >= cfg.patience or step >= total
            if stop or end_of_epoch:
                break
        if stop:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    metrics = {"train_samples_per_s": seen / max(train_time, 1e-9), "steps": float(step),
               "best_valid_ndcg@10": best, "params": float(sum(p.numel() for p in model.parameters()))}
    if learns_fusion(model):
        metrics.update(learn_fusion(model, ds, "valid", seed=cfg.seed, batch_size=cfg.eval_batch_size))
    return RetrievalTrainResult(model=model, metrics=metrics, history=history)


@dataclass
class LiveRetrieval:
    """The result of :func:`retrieve_live`: item rows and scores per user, and the index's size over the replay."""

    items: np.ndarray  # [n_users, k] item rows (0 where fewer were live)
    scores: np.ndarray  # [n_users, k]
    live_at_t: int
    updates: int  # upserts + removals applied while replaying the room lifecycle


@torch.no_grad()
def retrieve_live(model: torch.nn.Module, ds: RetrievalDataset, user_rows: np.ndarray, t: int, k: int = 50,
                  backend: str = "torch", replay_from: int | None = None) -> LiveRetrieval:
    """Top-k retrieval for users at time ``t`` over an exact MIPS index kept current from the room lifecycle:
    rooms that start in ``[replay_from, t]`` are upserted and rooms that end are removed, in event-time order, as the
    service does from the stream (``replay_from`` defaults to one hour before ``t``). Returns only items live at t.
    """
    from recsys.mips import make_index

    model.eval()
    device = next(model.parameters()).device
    start = t - 3_600_000 if replay_from is None else replay_from
    index = make_index(backend, int(model.item_vectors(torch.ones(1, dtype=torch.long, device=device)).shape[-1]))
    live, key = ds.live, ("streamer_id" if ds.granularity == "streamer" else "live_id")
    raw = live.streamer_id if key == "streamer_id" else live.live_id
    rows = ds.catalog.rows(raw)

    def vectors(item_rows: np.ndarray) -> np.ndarray:
        return model.item_vectors(torch.as_tensor(item_rows, device=device)).float().cpu().numpy()

    # the rooms live at replay_from, then every start and end up to t in time order (an end at x before a start at
    # x: rooms are live on [start, end)); an item stays while one of its rooms is live (a streamer's rooms may overlap)
    n_live: dict[int, int] = {}
    for item in rows[live.live_rows(start)].tolist():
        n_live[item] = n_live.get(item, 0) + 1
    first = np.array(sorted(n_live), dtype=np.int64)
    index.upsert(first, vectors(first))
    real = live.end > live.start  # zero-length rooms are never live
    events = [(int(live.start[i]), 1, int(rows[i])) for i in np.flatnonzero(real & (live.start > start)
                                                                             & (live.start <= t))]
    events += [(int(live.end[i]), 0, int(rows[i])) for i in np.flatnonzero(real & (live.end > start) & (live.end <= t))]
    updates = 0
    for _, is_start, item in sorted(events):
        if is_start:
            n_live[item] = n_live.get(item, 0) + 1
            if n_live[item] == 1:
                index.upsert(np.array([item]), vectors(np.array([item])))
                updates += 1
        elif n_live.get(item, 0) > 0:
            n_live[item] -= 1
            if n_live[item] == 0:
                index.remove(np.array([item]))
                updates += 1
    q = QueryBatch.from_arrays(ds.query(np.asarray(user_rows), np.full(len(user_rows), t)), device)
    scores, items = index.search(model.user_vector(q).float().cpu().numpy(), k)
    return LiveRetrieval(items=items, scores=scores, live_at_t=len(index), updates=updates)


def export_retriever(model: torch.nn.Module, ds: RetrievalDataset, rcfg: RetrieverConfig, out: str | Path,
                     metrics: dict[str, float] | None = None) -> Path:
    """Write the serving export of a trained retriever (see :mod:`models.retrieval.export`)."""
    from models.retrieval.export import save_retriever

    meta = {"model": rcfg.model, "granularity": ds.granularity, "behaviour_len": ds.behaviour_len,
            "metrics": dict(metrics or {})}
    return save_retriever(model, rcfg, catalog_sizes(ds), Path(out), ds.catalog, ds.user_index, ds.profile_vocab,
                          ds.user_profile, meta=meta)


def train_retrieval(ds: RetrievalDataset, cfg: RetrievalTrainConfig, tracking: TrackingConfig,
                    export_dir: str | Path | None = None) -> RetrievalTrainResult:
    """Fit, evaluate on test (sampled protocol and the full live pool), export, and log it all to one MLflow run
    (popularity is evaluated and logged, with nothing to export)."""
    name = f"train-retrieval-{cfg.model}-{ds.granularity}"
    with tracking_run(tracking, name, tags={"job": "train_retrieval", "model": cfg.model,
                                            "granularity": ds.granularity}) as tr:
        rcfg = None if cfg.model in NON_PARAMETRIC else retriever_config(ds, cfg)
        options = {} if rcfg is None else rcfg.options
        tr.log_params({"train": {k: v for k, v in asdict(cfg).items() if k != "overrides"}, "retriever": options,
                       "data": {"granularity": ds.granularity, "n_train": int(ds.train_user.size),
                                "n_users": ds.n_users, "n_items": ds.catalog.n_items},
                       "device": str(resolve_device(cfg.device))})
        res = fit_retriever(ds, cfg, on_eval=lambda rec: tr.log_metrics(
            {k: v for k, v in rec.items() if k != "step"}, step=int(rec["step"])))
        test = evaluate_retriever(res.model, ds, "test", batch_size=cfg.eval_batch_size)
        res.metrics.update({f"test.{k}": v for k, v in test.items()})
        tr.log_metrics(res.metrics)
        res.run_id = tr.run_id
        if res.history:
            import matplotlib.pyplot as plt

            from pipelines.train_ranker import learning_curve

            fig = learning_curve(res.history, f"{cfg.model} retriever ({ds.granularity})", loss_label="train loss",
                                 metric_key="valid_ndcg@10", metric_label="NDCG@10")
            tr.log_figure(fig, "learning_curve.png")
            plt.close(fig)
        if res.model is None:
            return res
        out = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="retriever-export-"))
        res.export_dir = export_retriever(res.model, ds, rcfg, out, res.metrics)
        if tr.run is not None:
            from pipelines.retrieval_registry import log_retriever_model

            res.model_version = log_retriever_model(out, res.model, ds, cfg.register_name)
        return res


def load_retrieval_dataset(data_dir: str | Path, granularity: str = "streamer", cache_dir: str | Path | None = None,
                           **kwargs: Any) -> RetrievalDataset:
    """KuaiLive-format files -> :class:`RetrievalDataset` of one granularity."""
    from recsys.data.loaders import load_kuailive
    from recsys.data.retrieval import build_retrieval_dataset

    return build_retrieval_dataset(load_kuailive(Path(data_dir), cache_dir=cache_dir), granularity, **kwargs)


__all__ = ["RetrievalTrainConfig", "RetrievalTrainResult", "RetrieverConfig", "TopScores", "evaluate_retriever",
           "fit_retriever", "learn_fusion", "learns_fusion", "top_scores",
           "export_retriever", "load_retrieval_dataset", "score_candidates", "set_alias", "train_retrieval"]
