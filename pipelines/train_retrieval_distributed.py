"""Distributed training of the GRank retriever (and its variants) with ``torchrun``: DDP replicates the whole model.

Launch exactly as :mod:`pipelines.train_distributed` (same torchrun forms for CPU, one GPU node and several nodes)
with ``-m pipelines.train_retrieval_distributed``, e.g.::

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m pipelines.train_retrieval_distributed \\
        --data data/synthetic/small --model grank --steps 500 --batch-size 512 --out runs/retrieval-dist

``recsys train retrieval-dist --nproc 2 --data DIR --steps N`` runs this form (``OMP_NUM_THREADS=1`` unless set).
``--batch-size`` is the *global* number of training anchors per step. Launched without torchrun, the module runs as a
world of one (the reference the multi-process runs are compared with).

Why DDP and not TorchRec sharding
---------------------------------
:mod:`pipelines.train_distributed` shards the *ranker's* TorchRec tables (EmbeddingBagCollection /
EmbeddingCollection) with ``DistributedModelParallel``. GRank has no TorchRec tables: its item, user and profile
tables are small plain ``nn.Embedding`` / ``nn.EmbeddingBag`` modules (:class:`models.retrieval.layers.ItemEncoder`,
:class:`~models.retrieval.layers.QueryEncoder`), so the whole model, item table included, is *replicated* by
``torch.nn.parallel.DistributedDataParallel`` and its gradients are all-reduced (averaged). Every rank holds the full
model, so rank 0 exports ``ddp.module`` directly and the export is the ordinary single-process format
(:func:`models.retrieval.export.load_retriever` serves it).

What each rank does
-------------------
* ``init_process_group("nccl" if CUDA else "gloo")`` (:func:`pipelines.train_distributed.init_distributed`); device
  ``cuda:LOCAL_RANK`` or CPU.
* Builds the model from the same seed (DDP also broadcasts rank 0's parameters at construction) and wraps a thin
  module whose ``forward`` is ``GRank.losses`` (so every step goes through ``DDP.forward``) in DDP with
  ``broadcast_buffers=False`` (GRank's buffers are the constant catalogue side arrays, identical on every rank).
* Deterministic data sharding: the global batch order is a seeded permutation of the training anchors shared by all
  ranks (:func:`pipelines.train_distributed.global_batches`: a new permutation per epoch, incomplete tail dropped);
  rank ``r`` trains on ``batch[r::world]``.
* Negatives: every rank draws the live-at-t negatives of the *whole* global batch with a generator seeded by
  ``(seed, step)`` (:func:`step_candidates`) and keeps its rows, so the union of one step's rank batches (anchors,
  negatives, popularity features) is exactly the single-process batch. (Drawing only the rank's rows from a per-rank
  stream would give statistically equivalent but different negatives, and no step-by-step parity.)
* Loss with the global normaliser: every loss of ``GRank.losses`` (NTP, auxiliary and ranker InfoNCE) is a mean over
  anchors with no coupling across anchors (each anchor's subset of hard / random negatives is chosen from its own
  row, there are no in-batch negatives and no batch statistics), so this rank's contribution is its local mean
  times ``n_local / n_global`` and the contributions add up to the single-process loss (checked in the tests).
  Each rank back-propagates ``world * contribution``; DDP averages, so every replica gets the single-process
  gradient up to float summation order. Gradient-norm clipping then sees the same (global) gradient on every rank,
  and AdamW keeps the replicas identical (the run records the largest parameter difference across ranks).
* Dropout draws from each rank's own torch generator (seeded by ``seed + rank`` after the model is built), so with
  ``dropout > 0`` runs of different world sizes are statistically, not bitwise, equivalent; the parity test uses
  ``{"dropout": 0.0}``.
* Rank 0 alone logs to MLflow (:func:`recsys.tracking.tracking_run`; ``--no-mlflow`` turns it off), optionally
  evaluates on the test split (``--evaluate``), exports with :func:`pipelines.train_retrieval.export_retriever` into
  ``--out`` and writes ``train_retrieval_distributed.json``: per-step losses (and their parts), samples/s, the rows
  each rank trained on at step 1, and the user vectors of the trained model for a fixed query batch (the first
  ``--check-users`` validation targets), to check the export against.

Parity with one process (CPU, gloo, tiny set; ``tests/pipelines/test_train_retrieval_distributed.py``)
-------------------------------------------------------------------------------------------------------
* GRank with every loss term, dim 32, one layer, dropout 0, global batch 32 x 32 negatives, 15 steps,
  ``hard_share`` 0: 2 processes follow 1 process to 1.1e-7 (relative loss per step), the global gradient norms to
  1.5e-7; the replicas stay bitwise identical. Test tolerance 1e-5.
* With the default ``hard_share`` 0.5 the runs drift apart (9.3e-4 after 15 steps) although there is no coupling:
  negatives are drawn with replacement, the copies of one item score within an ulp of each other, and float noise
  decides which copy the hard-negative ``topk`` takes, which changes the random rest of the subset. A single process
  fed each batch with its rows reversed drifts as much (3.9e-3), so that is the noise floor of that configuration,
  not a sharding error. The loss-and-gradient sum over rank slices matches the whole batch at any ``hard_share``.

Differences from :func:`pipelines.train_retrieval.fit_retriever`: a fixed step budget (``--steps``) with no
validation-driven early stopping, and per-step negative generators (the single-process trainer shares one generator
between the permutation and the negatives). The parity reference is therefore this module with one process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.retrieval.inputs import QueryBatch
from models.retrieval.registry import RETRIEVERS, RetrieverConfig
from pipelines import train_distributed as dist_ranker
from pipelines.train_distributed import (
    DistEnv,
    DistTrainResult,
    all_reduce_losses,
    global_batches,
    init_distributed,
    log_train_step,
    rank_rows,
    timed_throughput,
)
from recsys.data.retrieval import RetrievalDataset

log = logging.getLogger("pipelines.train_retrieval_distributed")

#: the retrievers this trainer runs: the GRank family (``GRank.losses`` has no coupling across anchors)
GRANK_MODELS: tuple[str, ...] = tuple(sorted(m for m, (arch, _) in RETRIEVERS.items() if arch == "grank"))
RESULT_FILE = "train_retrieval_distributed.json"


@dataclass
class DistRetrievalConfig:
    data: str
    out: str
    model: str = "grank"
    granularity: str = "streamer"
    steps: int = 100
    batch_size: int = 256  # global anchors per step (all ranks together)
    n_negatives: int = 255  # live-at-t negatives per anchor
    lr: float = 1e-3
    weight_decay: float = 0.01
    clip_norm: float = 10.0
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    mlflow: bool = True
    config: str | None = None  # platform config YAML (tracking URI / experiment)
    check_users: int = 64  # validation queries whose user vectors are recorded (export check)
    evaluate: bool = False  # rank 0 evaluates the trained model on the test split
    register_name: str | None = None  # MLflow registered model name (rank 0); None = do not register
    overrides: dict[str, Any] = field(default_factory=dict)  # GRankConfig options

    def __post_init__(self) -> None:
        if self.model not in GRANK_MODELS:
            raise ValueError(f"unknown or unsupported retriever {self.model!r} for distributed training; choose one "
                             f"of {list(GRANK_MODELS)}")
        if self.granularity not in ("streamer", "room"):
            raise ValueError(f"--granularity must be 'streamer' or 'room', got {self.granularity!r}")
        if self.steps < 1 or self.batch_size < 1 or self.n_negatives < 1:
            raise ValueError(f"--steps, --batch-size and --negatives must be >= 1, got {self.steps}, "
                             f"{self.batch_size} and {self.n_negatives}")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_norm <= 0:
            raise ValueError("--lr and --clip-norm must be > 0 and --weight-decay >= 0")
        if self.check_users < 0:
            raise ValueError("--check-users must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        fixed = sorted({"long_len", "short_len"} & set(self.overrides))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} come(s) from the dataset's history lengths; they cannot be set "
                             "as model options")
        RetrieverConfig.for_model(self.model, **self.overrides)  # unknown options fail here


# =============================================================================
# Pure pieces (no process group): the global step batch and its rank slice
# =============================================================================


@dataclass
class StepBatch:
    """The anchors of one step with their candidates: column 0 the target, then live-at-t negatives."""

    users: np.ndarray  # [B] user rows
    times: np.ndarray  # [B] ms
    cand: np.ndarray  # [B, 1 + n] item rows
    valid: np.ndarray  # [B, 1 + n] bool

    def __len__(self) -> int:
        return int(self.users.size)

    def take(self, idx: np.ndarray) -> "StepBatch":
        return StepBatch(self.users[idx], self.times[idx], self.cand[idx], self.valid[idx])


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The negative-sampling generator of ``step``: the same on every rank and for every world size."""
    return np.random.default_rng([seed, step])


def step_candidates(ds: RetrievalDataset, anchors: np.ndarray, n_negatives: int, seed: int, step: int) -> StepBatch:
    """The WHOLE global batch of ``step`` (training-anchor indices ``anchors``) with its negatives, drawn by
    :func:`step_rng`; every rank calls this and keeps :meth:`rank_slice`, so the ranks' slices partition it."""
    users, times, target = ds.train_user[anchors], ds.train_time[anchors], ds.train_item[anchors]
    negs, ok = ds.sample_live_negatives(times, target, n_negatives, step_rng(seed, step))
    return StepBatch(users=users, times=times, cand=np.concatenate([target[:, None], negs], 1),
                     valid=np.concatenate([np.ones((anchors.size, 1), bool), ok], 1))


def rank_slice(batch: StepBatch, rank: int, world_size: int) -> StepBatch:
    """``rank``'s anchors of a global step batch: positions ``rank::world_size`` (see
    :func:`pipelines.train_distributed.rank_rows`)."""
    return batch.take(rank_rows(np.arange(len(batch)), rank, world_size))


def sharded_losses(losses: dict[str, Tensor], n_local: int, n_global: int) -> dict[str, Tensor]:
    """This rank's contributions to the global-batch losses: each per-anchor mean times ``n_local / n_global``
    (the contributions of all ranks add up to the single-process means)."""
    if n_global < 1 or not 0 <= n_local <= n_global:
        raise ValueError(f"bad shares: {n_local} local of {n_global} global anchors")
    share = n_local / n_global
    return {k: v * share for k, v in losses.items()}


class LossStep(nn.Module):
    """``forward = GRank.losses``: the module DDP wraps, so that every training step runs through ``DDP.forward``
    (which prepares the gradient all-reduce of the step)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, q: QueryBatch, cand: Tensor, valid: Tensor, cand_pop: Tensor | None = None
                ) -> dict[str, Tensor]:
        return self.model.losses(q, cand, valid, cand_pop)


def check_queries(ds: RetrievalDataset, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(user rows, times) of the first ``n`` validation targets: the fixed query batch of the export check."""
    ev = ds.eval_sets["valid"].targets.head(n)
    return ds.user_index.lookup(ev["user_id"].to_numpy()), ev["timestamp"].to_numpy().astype(np.int64)


# =============================================================================
# Training
# =============================================================================


def _replica_max_abs_diff(model: nn.Module) -> float:
    """Largest |parameter difference| between any rank and rank 0 (a collective; 0.0 when DDP keeps the replicas
    in step)."""
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())


def train_retrieval_distributed(cfg: DistRetrievalConfig, env: DistEnv | None = None) -> DistTrainResult:
    """Run the training on this rank (call on every rank of an initialised process group, e.g. under torchrun)."""
    from models.retrieval.inputs import catalog_tensors
    from models.retrieval.registry import build_retriever
    from pipelines.train_ranker import _autocast
    from pipelines.train_retrieval import (
        RetrievalTrainConfig,
        candidate_popularity,
        catalog_sizes,
        evaluate_retriever,
        export_retriever,
        learn_fusion,
        learns_fusion,
        load_retrieval_dataset,
        retriever_config,
    )
    from recsys.config import load_config

    env = env or init_distributed(cfg.device)
    rank, world, device = env.rank, env.world_size, env.device
    if cfg.batch_size < world:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) is smaller than the {world} processes")
    t_start = time.perf_counter()
    ds = load_retrieval_dataset(cfg.data, cfg.granularity)
    batches = global_batches(np.arange(ds.train_user.size), cfg.batch_size, cfg.steps, cfg.seed)

    torch.manual_seed(cfg.seed)
    rcfg = retriever_config(ds, RetrievalTrainConfig(model=cfg.model, granularity=cfg.granularity,
                                                     overrides=dict(cfg.overrides)))
    model = build_retriever(catalog_sizes(ds), rcfg, catalog_tensors(ds.catalog)).to(device)
    torch.manual_seed(cfg.seed + rank)  # dropout masks: each rank its own stream (see the module docstring)
    ddp = nn.parallel.DistributedDataParallel(
        LossStep(model), device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    opt = torch.optim.AdamW(ddp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    setup_s = time.perf_counter() - t_start
    if rank == 0:
        log.info("world %d (%s, %s): %s (%d parameters, replicated by DDP), %d training anchors, global batch %d",
                 world, env.backend, device, cfg.model, n_params, ds.train_user.size, cfg.batch_size)

    tracking = load_config(cfg.config).tracking.model_copy(update={"enabled": cfg.mlflow})
    summary: dict[str, Any] = {"world_size": world, "backend": env.backend, "device": str(device),
                               "model": cfg.model, "granularity": cfg.granularity, "params": n_params,
                               "config": asdict(cfg), "options": rcfg.options}
    ctx: Any = contextlib.nullcontext(None)
    if rank == 0:
        from recsys.tracking import tracking_run

        ctx = tracking_run(tracking, f"train-retrieval-dist-{cfg.model}-{cfg.granularity}",
                           tags={"job": "train_retrieval_distributed", "model": cfg.model,
                                 "granularity": cfg.granularity, "world_size": str(world)})
    losses: list[float] = []
    parts_log: list[dict[str, float]] = []
    grad_norms: list[float] = []  # of the all-reduced (global) gradient, before clipping
    step1_rows: list[list[int]] = []
    export_dir = None
    with ctx as tr:
        if tr is not None:
            tr.log_params({"train": {k: v for k, v in asdict(cfg).items() if k != "overrides"},
                           "retriever": rcfg.options,
                           "dist": {"world_size": world, "backend": env.backend, "strategy": "ddp"},
                           "data": {"granularity": ds.granularity, "n_train": int(ds.train_user.size),
                                    "n_users": ds.n_users, "n_items": ds.catalog.n_items}})
        t_timed = None
        for step, anchors in enumerate(batches, start=1):
            if step == 2:
                t_timed = time.perf_counter()  # step 1 (lazy initialisation, DDP bucket rebuild) is not timed
            ddp.train()
            full = step_candidates(ds, anchors, cfg.n_negatives, cfg.seed, step)
            mine = rank_slice(full, rank, world)
            if step == 1:
                gathered: list[Any] = [None] * world
                dist.all_gather_object(gathered, anchors[rank_rows(np.arange(anchors.size), rank, world)].tolist())
                step1_rows = gathered
            q = QueryBatch.from_arrays(ds.query(mine.users, mine.times), device)
            cand = torch.as_tensor(mine.cand, device=device)
            valid = torch.as_tensor(mine.valid, device=device)
            pop = torch.as_tensor(candidate_popularity(ds, mine.cand, mine.times), device=device)
            with _autocast(device):
                parts = sharded_losses(ddp(q, cand, valid, pop), len(mine), len(full))
            opt.zero_grad(set_to_none=True)
            (parts["loss"] * world).backward()  # DDP averages: world * contribution -> the single-process gradient
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.clip_norm)))
            opt.step()
            loss, loss_parts = all_reduce_losses(parts["loss"], {k: v for k, v in parts.items() if k != "loss"})
            losses.append(loss)
            parts_log.append(loss_parts)
            log_train_step(tr, rank, step, len(batches), loss, loss_parts)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timed, elapsed, sps = timed_throughput(len(batches), cfg.batch_size, t_timed)
        replica_diff = _replica_max_abs_diff(model)
        summary.update({"losses": losses, "loss_parts": parts_log, "grad_norms": grad_norms, "samples_per_s": sps,
                        "timed_steps": timed, "timed_s": elapsed, "setup_s": setup_s, "global_batch": cfg.batch_size,
                        "step1_rank_rows": step1_rows, "replica_max_abs_diff": replica_diff})
        dist.barrier()  # the last collective: from here on rank 0 works alone (export, evaluation, MLflow)
        if rank == 0:
            users, times = check_queries(ds, cfg.check_users)
            vectors: list[list[float]] = []
            if users.size:
                model.eval()
                with torch.no_grad():
                    vectors = model.user_vector(QueryBatch.from_arrays(ds.query(users, times), device)
                                                ).float().cpu().tolist()
            summary.update({"check_users": users.tolist(), "check_times": times.tolist(), "user_vectors": vectors})
            metrics = {"final_loss": losses[-1], "steps": float(len(batches)), "samples_per_s": sps,
                       "world_size": float(world), "params": float(n_params)}
            if learns_fusion(model):
                metrics.update(learn_fusion(model, ds, "valid", seed=cfg.seed))
            if cfg.evaluate:
                test = evaluate_retriever(model, ds, "test")
                metrics.update({f"test.{k}": v for k, v in test.items()})
            summary["metrics"] = metrics
            export_dir = export_retriever(model, ds, rcfg, cfg.out, metrics)
            (Path(cfg.out) / RESULT_FILE).write_text(json.dumps(summary, indent=1, default=str))
            if tr is not None:
                tr.log_metrics(metrics)
                tr.log_artifact(Path(cfg.out) / RESULT_FILE)
                if tr.run is not None and cfg.register_name:
                    from pipelines.retrieval_registry import log_retriever_model

                    summary["model_version"] = log_retriever_model(export_dir, model, ds, cfg.register_name)
            log.info("done: %d steps, %.0f anchors/s, replica max |diff| %.3g, export %s", len(batches), sps,
                     replica_diff, export_dir)
    return DistTrainResult(losses=losses, samples_per_s=sps, summary=summary, export_dir=export_dir)


# =============================================================================
# Launching (tests, ``recsys train retrieval-dist``)
# =============================================================================


MODULE = "pipelines.train_retrieval_distributed"


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m pipelines.train_retrieval_distributed ARGS``."""
    return dist_ranker.torchrun_command(nproc, args, MODULE)


def launch(nproc: int, args: list[str], out: str | Path, timeout_s: float = 600, threads: int | None = 1,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    """This trainer under torchrun (see :func:`pipelines.train_distributed.launch`); returns its result JSON."""
    return dist_ranker.launch(nproc, args, out, timeout_s, threads, env, module=MODULE, result_file=RESULT_FILE)


# =============================================================================
# CLI (torchrun entry point)
# =============================================================================


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m pipelines.train_retrieval_distributed",
        description="Distributed GRank training: DDP replicates the model (gloo on CPU, NCCL on GPU); see the module "
                    "doc.")
    p.add_argument("--data", required=True, help="KuaiLive-format dataset directory (real or synthetic)")
    p.add_argument("--out", required=True, help="output directory: the retriever export + " + RESULT_FILE)
    p.add_argument("--model", choices=GRANK_MODELS, default="grank")
    p.add_argument("--granularity", choices=["streamer", "room"], default="streamer")
    p.add_argument("--steps", type=int, default=100, help="training steps (global batches)")
    p.add_argument("--batch-size", type=int, default=256, help="GLOBAL anchors per step (split over the processes)")
    p.add_argument("--negatives", type=int, default=255, help="live-at-t negatives per training anchor")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--clip-norm", type=float, default=10.0, help="gradient-norm clipping (of the global gradient)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", help="JSON overrides of the model config, e.g. '{\"dim\": 128, \"dropout\": 0.0}'")
    p.add_argument("--check-users", type=int, default=64,
                   help="validation queries whose user vectors are recorded (export check)")
    p.add_argument("--evaluate", action="store_true", help="rank 0 evaluates the trained model on the test split")
    dist_ranker.add_launch_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> DistRetrievalConfig:
    options = dist_ranker.json_object("--options", args.options)
    try:
        cfg = DistRetrievalConfig(
            data=args.data, out=args.out, model=args.model, granularity=args.granularity, steps=args.steps,
            batch_size=args.batch_size, n_negatives=args.negatives, lr=args.lr, weight_decay=args.weight_decay,
            clip_norm=args.clip_norm, seed=args.seed, device=args.device, mlflow=not args.no_mlflow,
            config=args.config, check_users=args.check_users, evaluate=args.evaluate,
            register_name=args.register or None, overrides=options)
    except TypeError as exc:  # a model option of the wrong kind
        raise ValueError(f"--options: {exc}") from None
    if not Path(cfg.data).is_dir():
        raise ValueError(f"--data {cfg.data} is not a directory")
    if cfg.config and not Path(cfg.config).is_file():
        raise ValueError(f"--config {cfg.config} does not exist")
    return cfg


def main(argv: list[str] | None = None) -> int:
    return dist_ranker.run_entry(argv, build_parser(), config_from_args, train_retrieval_distributed, log)


if __name__ == "__main__":
    sys.exit(main())
