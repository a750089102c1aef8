"""Distributed training of the multi-task ranker: TorchRec ``DistributedModelParallel`` shards the embedding tables,
DDP (applied by DMP to every non-embedding parameter) replicates the dense part.

Launch (one process per GPU, or N CPU processes with gloo)::

    # CPU, 2 processes on one machine (gloo); keep one OpenMP thread per process
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m pipelines.train_distributed \\
        --data data/synthetic/small --model tokenmixer --steps 500 --batch-size 2048 --out runs/ranker-dist

    # one node with 8 GPUs (NCCL, picked automatically when CUDA is available)
    torchrun --standalone --nproc_per_node 8 -m pipelines.train_distributed \\
        --data data/kuailive --model tokenmixer --steps 5000 --batch-size 16384 --out runs/ranker-dist

    # two nodes: the same command on each, with the node's rank and one reachable rendezvous host
    torchrun --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:29400 --nproc_per_node 8 \\
        -m pipelines.train_distributed --data ... --out ...

``recsys train ranker-dist --nproc 2 --data DIR --steps N`` runs the first form (``OMP_NUM_THREADS=1`` unless set).
``--batch-size`` is the *global* batch; ``recsys bench train`` times 1 and 2 processes. Launched without torchrun,
the module runs as a world of one.

What each rank does
-------------------
* ``init_process_group("nccl" if CUDA else "gloo")``; device ``cuda:LOCAL_RANK`` or CPU.
* Builds the same model from the same seed, plans the sharding with ``EmbeddingShardingPlanner(Topology(world,
  compute_device))`` (every table constrained to ``--sharding``), wraps it in ``DistributedModelParallel`` and then
  copies the seeded full weights into the shards, so every world size starts from identical weights.
* Deterministic data sharding: the global batch order is a seeded permutation of the training rows shared by all
  ranks (a new one per epoch, incomplete last batch dropped); rank ``r`` takes ``batch[r::world]``, so the union of one
  step's rank batches is exactly the single-process batch.
* Loss with *global* normalisers (:func:`sharded_multitask_loss`): the click terms are divided by the global batch
  size and the clicked-row tasks by the global number of clicked rows, so the per-rank contributions sum to exactly
  the single-process loss (the plain per-rank mean would weight clicked rows differently on each rank).
* Gradients: each rank back-propagates ``world * contribution`` (for equal shares that is about its local mean, the
  usual DDP convention). DDP averages the dense gradients, and TorchRec's all-to-all backward divides the gradients
  of the sharded tables by the world size too (``torchrec.distributed.comm_ops`` gradient division, on by default;
  set explicitly here), so every parameter gets the single-process gradient (up to float summation order). Checked
  with a scale-sensitive sparse optimizer (SGD): with the division off, 2 processes drift from 1 (1.6e-3 in 10
  steps); with it they agree to 2e-7.
* DDP is created with ``static_graph=False``: in static-graph mode DDP delays the first step's all-reduce to a hook
  on the output tensors, which it cannot find inside the ranker's dataclass output, so the first step's dense
  gradients stayed rank-local (found by the loss-parity test).
* Optimizers: dense parameters use ``torch.optim.Adam(lr, weight_decay)`` as in
  :func:`pipelines.train_ranker.fit_ranker`; embedding tables get their optimizer the TorchRec way, with
  ``apply_optimizer_in_backward`` before sharding, so sharded tables run it *fused* in FBGEMM's backward
  (``--sparse-optimizer``, learning rate ``--embedding-lr``).
* Rank 0 alone logs to MLflow (:func:`recsys.tracking.tracking_run`; ``--no-mlflow`` turns it off), gathers the full
  (unsharded) state dict, loads it into a plain single-process :class:`~models.ranking.ranker.Ranker` and exports it
  with :func:`models.ranking.export.save_ranker` (serving tables included) into ``--out``, so that
  ``load_ranker(out)`` serves it; plus ``train_distributed.json`` (per-step losses, samples/s, the plan, and the
  predictions of the sharded model on a fixed batch, to check the export against).

CPU notes (fbgemm-gpu-cpu 1.8.0, torchrec 1.8.0, measured)
--------------------------------------------------------
* Sharding: ``table_wise`` (the default) and ``column_wise`` work on CPU with gloo (fused FBGEMM kernel); with the
  encoder's narrow tables (32 / 8 columns) column-wise keeps each table in one shard, so it places tables like
  table-wise. ``row_wise`` is CUDA only (the EmbeddingBagCollection sharder offers it only for ``cuda``).
  ``data_parallel`` is not offered: the EmbeddingCollection sharder (the encoder's sequence and field tables) has no
  data-parallel option, and forcing it fails in the first forward (``split_with_sizes``) on CPU.
* FBGEMM's fused CPU kernel implements only SGD, Adagrad and row-wise Adagrad: **there is no fused Adam on CPU**. So
  ``--sparse-optimizer auto`` is Adam (the single-process trainer's choice) on CUDA and row-wise Adagrad on CPU;
  ``adam`` on CPU is an error.
* A fused FBGEMM optimizer updates only the rows seen in the batch (sparse Adam / Adagrad), unlike the dense
  ``torch.optim.Adam`` of ``fit_ranker`` that also moves untouched rows through momentum. The loss-parity reference is
  therefore this module with one process (same kernel, same optimizer, same data): ``tests/pipelines/
  test_train_distributed.py`` checks that 2 processes follow it step by step (relative difference < 1e-5 per step;
  measured about 2e-7 over 20 steps on the tiny set: float summation order in the all-reduce / all-to-all).
* Over longer runs the TokenMixer's top-k expert routing amplifies that float noise (a token whose gate scores
  nearly tie can pick another expert): on the small set with global batch 2048 the losses agree to ~1e-7 for 20
  steps, then drift to 1e-4 by step 30, and a single process fed the same batches with the rows reversed drifts
  identically (9.9e-5); without MoE (``tokenmixer_no_moe``) 2 processes stay within 1.4e-7 over the 30 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from models.ranking.heads import LossWeights, predictions, ziln_loss
from models.ranking.inputs import to_input
from models.ranking.ranker import RANKERS, Ranker, RankerConfig
from pipelines.train_ranker import EMBEDDING_OPTIMIZERS, optimizer_class

log = logging.getLogger("pipelines.train_distributed")

#: sharding types that both TorchRec sharders of the encoder (EmbeddingBagCollection and EmbeddingCollection) offer
SHARDING_TYPES: tuple[str, ...] = ("table_wise", "column_wise", "row_wise")
CUDA_ONLY_SHARDING: frozenset[str] = frozenset({"row_wise"})  # the EmbeddingBagCollection sharder: CUDA only
SPARSE_OPTIMIZERS: tuple[str, ...] = ("auto", *EMBEDDING_OPTIMIZERS)
#: the optimizers of FBGEMM's fused CPU kernel (split_table_batched_embeddings_ops_training, ``use_cpu``)
CPU_FUSED_OPTIMIZERS: frozenset[str] = frozenset({"adagrad", "rowwise_adagrad", "sgd"})
RESULT_FILE = "train_distributed.json"


@dataclass
class DistTrainConfig:
    data: str
    out: str
    model: str = "tokenmixer"
    steps: int = 100
    batch_size: int = 2048  # global batch (all ranks together)
    lr: float = 3e-3
    embedding_lr: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0
    sharding: str = "table_wise"
    sparse_optimizer: str = "auto"
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    mlflow: bool = True
    config: str | None = None  # platform config YAML (tracking URI / experiment)
    predict_rows: int = 256  # validation rows scored by the sharded model at the end (export check)
    register_name: str | None = None  # MLflow registered model name (rank 0); None = do not register
    overrides: dict[str, Any] = field(default_factory=dict)  # RankerConfig overrides

    def __post_init__(self) -> None:
        if self.model not in RANKERS:
            raise ValueError(f"unknown ranker {self.model!r}; choose one of {sorted(RANKERS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"--steps and --batch-size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.lr <= 0 or self.embedding_lr <= 0 or self.weight_decay < 0:
            raise ValueError("--lr and --embedding-lr must be > 0 and --weight-decay >= 0")
        if self.sharding not in SHARDING_TYPES:
            raise ValueError(f"unknown --sharding {self.sharding!r}; choose one of {', '.join(SHARDING_TYPES)}")
        if self.sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ValueError(f"unknown --sparse-optimizer {self.sparse_optimizer!r}; "
                             f"choose one of {', '.join(SPARSE_OPTIMIZERS)}")
        if self.predict_rows < 0:
            raise ValueError("--predict-rows must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")


# =============================================================================
# Pure pieces (no process group): data sharding, loss, optimizer choice
# =============================================================================


def global_batches(train_rows: np.ndarray, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """The global batches of ``steps`` steps: one seeded permutation of the training rows per epoch, cut into full
    batches (the incomplete tail of each epoch is dropped). Identical on every rank."""
    if train_rows.size < batch_size:
        raise ValueError(f"--batch-size {batch_size} is larger than the {train_rows.size} training rows")
    rng = np.random.default_rng(seed)
    per_epoch = train_rows.size // batch_size
    out: list[np.ndarray] = []
    while len(out) < steps:
        order = rng.permutation(train_rows)
        out.extend(order[i * batch_size:(i + 1) * batch_size] for i in range(min(per_epoch, steps - len(out))))
    return out


def rank_rows(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The rows of a global batch that ``rank`` trains on: ``batch[rank::world_size]`` (a disjoint cover)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return batch[rank::world_size]


def all_reduce_losses(total: Tensor, parts: dict[str, Tensor]) -> tuple[float, dict[str, float]]:
    """The global loss and its parts of one step: every rank's contributions summed in one all-reduce."""
    keys = sorted(parts)
    vec = torch.stack([total.detach().float()] + [parts[k].detach().float() for k in keys])
    dist.all_reduce(vec)
    vals = vec.cpu().tolist()
    return vals[0], dict(zip(keys, vals[1:]))


def log_train_step(tracker: Any, rank: int, step: int, n_steps: int, loss: float, parts: dict[str, float]) -> None:
    """Rank 0 only: the step's global loss and parts to ``tracker`` (``None``: no tracking) and a log line on the
    first, every 10th and the last step."""
    if rank != 0:
        return
    if tracker is not None:
        tracker.log_metrics({"train_loss": loss, **{f"loss.{k}": v for k, v in parts.items()}}, step=step)
    if step == 1 or step % 10 == 0 or step == n_steps:
        log.info("step %d/%d loss %.6f", step, n_steps, loss)


def timed_throughput(n_steps: int, batch_size: int, t_timed: float | None) -> tuple[int, float, float]:
    """``(timed steps, seconds, samples/s)`` of a run whose timer started at the beginning of step 2 (step 1 pays
    for lazy initialisation and is not timed)."""
    timed = n_steps - 1
    elapsed = time.perf_counter() - t_timed if t_timed is not None else float("nan")
    return timed, elapsed, timed * batch_size / elapsed if timed > 0 else float("nan")


def sharded_multitask_loss(out: dict[str, Tensor], labels: dict[str, Tensor], w: LossWeights,
                           aux_click_logits: list[Tensor] | None, n_rows: int,
                           n_clicked: int) -> tuple[Tensor, dict[str, Tensor]]:
    """This rank's contribution to :func:`models.ranking.heads.multitask_loss` of the whole global batch.

    Same terms and weights, but sums over this rank's rows divided by the *global* normalisers (``n_rows`` rows,
    ``n_clicked`` clicked rows), so the contributions of all ranks add up to the single-process loss. With one
    process it equals ``multitask_loss``. Returns ``(total, parts)`` (parts as tensors, unweighted, like
    ``LossParts.parts``).
    """
    click = labels["click"]
    mask = (click > 0.5).to(click.dtype)
    n_clicked = max(int(n_clicked), 1)

    def over_rows(per_row: Tensor) -> Tensor:
        return per_row.sum() / n_rows

    def on_clicked(per_row: Tensor) -> Tensor:
        return (per_row * mask).sum() / n_clicked

    def bce(logit: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logit, target, reduction="none")

    parts = {
        "click": over_rows(bce(out["click"].squeeze(-1), click)),
        "watch": on_clicked((out["watch"].squeeze(-1) - labels["watch"]) ** 2),
        "comment": on_clicked(bce(out["comment"].squeeze(-1), labels["comment"])),
        "like": on_clicked(bce(out["like"].squeeze(-1), labels["like"])),
        "gift": on_clicked(ziln_loss(out["gift"], labels["gift_value"])),
    }
    if aux_click_logits:
        parts["aux"] = torch.stack([over_rows(bce(a, click)) for a in aux_click_logits]).sum()
    total = sum(getattr(w, k) * v for k, v in parts.items())
    return total, parts


def resolve_sparse_optimizer(name: str, device_type: str) -> str:
    """``auto`` -> ``adam`` on CUDA, ``rowwise_adagrad`` on CPU (FBGEMM's fused CPU kernel has no Adam)."""
    if name == "auto":
        return "rowwise_adagrad" if device_type == "cpu" else "adam"
    if device_type == "cpu" and name not in CPU_FUSED_OPTIMIZERS:
        raise ValueError(f"--sparse-optimizer {name} is not available on CPU: FBGEMM's fused CPU kernel "
                         f"implements only {', '.join(sorted(CPU_FUSED_OPTIMIZERS))}")
    return name


# =============================================================================
# Process group, sharding, state dicts
# =============================================================================


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def init_distributed(device: str = "auto") -> DistEnv:
    """``init_process_group`` from the torchrun environment (a world of one when launched without torchrun): NCCL on
    ``cuda:LOCAL_RANK`` when CUDA is used (``auto`` with a GPU, or ``cuda``), else gloo on CPU."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): use "
                             "--nproc_per_node <= the number of GPUs")
        dev, backend = torch.device(f"cuda:{local_rank}"), "nccl"
        torch.cuda.set_device(dev)
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev,
                   backend=backend)


def table_names(model: Ranker) -> list[str]:
    from torchrec import EmbeddingBagCollection, EmbeddingCollection

    names = []
    for m in model.modules():
        if isinstance(m, EmbeddingBagCollection):
            names += [t.name for t in m.embedding_bag_configs()]
        elif isinstance(m, EmbeddingCollection):
            names += [t.name for t in m.embedding_configs()]
    return names


def shard_model(model: Ranker, env: DistEnv, sharding: str, local_batch: int) -> tuple[nn.Module, dict[str, str]]:
    """``DistributedModelParallel`` over ``model`` with every table constrained to ``sharding``; returns the DMP
    and ``{module.table: "sharding_type/compute_kernel ranks"}``."""
    from torchrec.distributed.comm_ops import set_gradient_division
    from torchrec.distributed.model_parallel import (
        DefaultDataParallelWrapper,
        DistributedModelParallel,
    )
    from torchrec.distributed.planner import (
        EmbeddingShardingPlanner,
        ParameterConstraints,
        Topology,
    )
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.distributed.types import ShardingEnv

    if sharding in CUDA_ONLY_SHARDING and env.device.type != "cuda":
        raise ValueError(f"--sharding {sharding} needs CUDA (torchrec offers it only for compute_device='cuda')")
    constraints = {name: ParameterConstraints(sharding_types=[sharding]) for name in table_names(model)}
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    topology = Topology(world_size=env.world_size, local_world_size=local_world, compute_device=env.device.type)
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=local_batch, constraints=constraints,
                                       debug=False)
    sharders = get_default_sharders()
    pg = dist.GroupMember.WORLD
    plan = planner.collective_plan(model, sharders, pg)
    set_gradient_division(True)  # sharded-table gradients averaged over ranks, like DDP's (the default; made explicit)
    # static_graph=False: DDP's static-graph mode delays the first all-reduce to a hook on the *output tensors*, which
    # it cannot find inside the ranker's dataclass output (the first step's dense gradients would stay rank-local)
    dmp = DistributedModelParallel(module=model, env=ShardingEnv.from_process_group(pg), device=env.device,
                                   plan=plan, sharders=sharders,
                                   data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False))
    summary = {}
    for module_path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():
            summary[f"{module_path}.{table}"] = f"{ps.sharding_type}/{ps.compute_kernel} ranks={ps.ranks}"
    return dmp, summary


def load_full_state(dmp: nn.Module, full: dict[str, Tensor]) -> None:
    """Copy a full (unsharded) state dict into the DMP's local shards (ShardedTensor / DTensor / plain tensors)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for name, t in dmp.state_dict().items():
            if name not in full:
                raise KeyError(f"{name} of the sharded model is not in the full state dict")
            g = full[name]
            if isinstance(t, ShardedTensor):
                for shard in t.local_shards():
                    idx = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets, shard.tensor.shape))
                    shard.tensor.copy_(g[idx])
            elif isinstance(t, DTensor):
                raise NotImplementedError(f"{name}: DTensor state (column-wise DTensor output) is not supported; "
                                          "use the default ShardedTensor state")
            else:
                t.copy_(g)


def gather_full_state(dmp: nn.Module, rank: int) -> dict[str, Tensor] | None:
    """The full (unsharded) CPU state dict on rank 0 (``None`` elsewhere). Collective: every rank must call it."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    out: dict[str, Tensor] = {}
    for name, t in dmp.state_dict().items():
        if isinstance(t, ShardedTensor):
            dev = t.local_shards()[0].tensor.device if t.local_shards() else torch.device("cpu")
            buf = torch.empty(t.size(), dtype=t.dtype, device=dev) if rank == 0 else None
            t.gather(dst=0, out=buf)
            full = buf
        elif isinstance(t, DTensor):
            full = t.full_tensor()
        else:
            full = t.detach()
        if rank == 0:
            out[name] = full.detach().cpu().clone()
    return out if rank == 0 else None


# =============================================================================
# Training
# =============================================================================


@dataclass
class DistTrainResult:
    losses: list[float]
    samples_per_s: float
    summary: dict[str, Any]
    export_dir: Path | None = None


def _null_tracker():
    from recsys.tracking import Tracker

    return contextlib.nullcontext(Tracker(None))


def train_distributed(cfg: DistTrainConfig, env: DistEnv | None = None) -> DistTrainResult:
    """Run the training on this rank (call on every rank of an initialised process group, e.g. under torchrun)."""
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from models.ranking.export import save_ranker
    from pipelines.train_ranker import _autocast, load_ranking_dataset
    from recsys.config import load_config

    env = env or init_distributed(cfg.device)
    rank, world, device = env.rank, env.world_size, env.device
    if cfg.batch_size < world:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) is smaller than the {world} processes")
    sparse_opt = resolve_sparse_optimizer(cfg.sparse_optimizer, device.type)
    t_start = time.perf_counter()
    ds = load_ranking_dataset(cfg.data)
    batches = global_batches(ds.rows("train"), cfg.batch_size, cfg.steps, cfg.seed)
    click_all = np.asarray(ds.labels(np.arange(ds.samples.height))["click"]) > 0.5

    torch.manual_seed(cfg.seed)
    rcfg = RankerConfig.for_model(cfg.model, **cfg.overrides)
    model = Ranker(ds.spec, rcfg)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    apply_optimizer_in_backward(optimizer_class(sparse_opt), model.encoder.embedding_parameters(),
                                {"lr": cfg.embedding_lr})
    dmp, plan = shard_model(model, env, cfg.sharding, math.ceil(cfg.batch_size / world))
    load_full_state(dmp, {k: v.to(device) for k, v in initial.items()})
    dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense_opt = torch.optim.Adam(list(dense.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    unwrapped: Ranker = dmp.module  # type: ignore[assignment]
    setup_s = time.perf_counter() - t_start
    if rank == 0:
        log.info("world %d (%s, %s), sharding %s, sparse optimizer %s, %d dense tensors under DDP; plan: %s", world,
                 env.backend, device, cfg.sharding, sparse_opt, len(dense), plan)

    tracking = load_config(cfg.config).tracking.model_copy(update={"enabled": cfg.mlflow})
    summary: dict[str, Any] = {
        "world_size": world, "backend": env.backend, "device": str(device), "sharding": cfg.sharding,
        "sparse_optimizer": sparse_opt, "plan": plan, "config": asdict(cfg),
    }
    ctx = _null_tracker()
    if rank == 0:
        from recsys.tracking import tracking_run

        ctx = tracking_run(tracking, f"train-ranker-dist-{cfg.model}",
                           tags={"job": "train_distributed", "model": cfg.model, "world_size": str(world)})
    losses: list[float] = []
    parts_log: list[dict[str, float]] = []
    with ctx as tr:
        tr.log_params({"train": {k: v for k, v in asdict(cfg).items() if k != "overrides"}, "ranker": asdict(rcfg),
                       "dist": {"world_size": world, "backend": env.backend, "sharding": cfg.sharding,
                                "sparse_optimizer": sparse_opt}})
        dmp.train()
        t_timed = None
        for step, batch in enumerate(batches, start=1):
            if step == 2:
                t_timed = time.perf_counter()  # step 1 (lazy initialisation, first all-to-all) is not timed
            rows = rank_rows(batch, rank, world)
            x = to_input(ds.arrays(rows)).to(device)
            labels = {k: torch.from_numpy(np.asarray(v, np.float32)).to(device) for k, v in ds.labels(rows).items()}
            with _autocast(device):
                out = dmp(x)
                aux = [unwrapped.heads.click_logit(a) for a in out.backbone.aux]
                total, parts = sharded_multitask_loss(out.heads, labels, rcfg.losses, aux, n_rows=batch.size,
                                                      n_clicked=int(click_all[batch].sum()))
            dense_opt.zero_grad(set_to_none=True)
            (total * world).backward()  # DDP averages: world * contribution -> the single-process gradient
            dense_opt.step()
            loss, loss_parts = all_reduce_losses(total, parts)
            losses.append(loss)
            parts_log.append(loss_parts)
            log_train_step(tr, rank, step, len(batches), loss, loss_parts)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timed, elapsed, sps = timed_throughput(len(batches), cfg.batch_size, t_timed)

        # predictions of the sharded model on a fixed batch (every rank scores the same rows; a collective)
        pred_rows = ds.rows("valid")[:cfg.predict_rows]
        preds: dict[str, list[float]] = {}
        if pred_rows.size:
            dmp.eval()
            with torch.no_grad():
                p = predictions(dmp(to_input(ds.arrays(pred_rows)).to(device)).heads)
            preds = {k: v.float().cpu().tolist() for k, v in p.items()}
        full = gather_full_state(dmp, rank)
        summary.update({"losses": losses, "loss_parts": parts_log, "samples_per_s": sps, "timed_steps": timed,
                        "timed_s": elapsed, "setup_s": setup_s, "global_batch": cfg.batch_size,
                        "predict_rows": pred_rows.tolist(), "predictions": preds})
        export_dir = None
        if rank == 0:
            assert full is not None
            serving = Ranker(ds.spec, rcfg)
            serving.load_state_dict(full, strict=True)
            export_dir = save_ranker(serving, cfg.out, ds.user_index, ds.streamer_index,
                                     meta={"model": cfg.model, "distributed": {k: summary[k] for k in (
                                         "world_size", "backend", "sharding", "sparse_optimizer")},
                                           "metrics": {"final_loss": losses[-1], "samples_per_s": sps}},
                                     tables=ds.serving)
            (Path(cfg.out) / RESULT_FILE).write_text(json.dumps(summary, indent=1, default=str))
            tr.log_metrics({"samples_per_s": sps, "final_loss": losses[-1]})
            tr.log_artifact(Path(cfg.out) / RESULT_FILE)
            if tr.run is not None and cfg.register_name:
                from pipelines.registry import log_ranker_model

                log_ranker_model(export_dir, serving, ds, cfg.register_name)
            log.info("done: %d steps, %.0f samples/s, export %s", len(batches), sps, export_dir)
    dist.barrier()
    return DistTrainResult(losses=losses, samples_per_s=sps, summary=summary, export_dir=export_dir)


# =============================================================================
# Launching (tests, ``recsys bench train``, ``recsys train ranker-dist``)
# =============================================================================


def torchrun_command(nproc: int, args: list[str], module: str = "pipelines.train_distributed") -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE ARGS`` (``--standalone``: a local
    rendezvous on a free port, so several launches can run side by side)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *args]


def launch(nproc: int, args: list[str], out: str | Path, timeout_s: float = 600, threads: int | None = 1,
           env: dict[str, str] | None = None, module: str = "pipelines.train_distributed",
           result_file: str = RESULT_FILE) -> dict[str, Any]:
    """Run a distributed trainer ``module`` under torchrun with ``nproc`` processes (``--out`` is appended) and
    return its ``result_file``; ``threads`` sets OMP_NUM_THREADS per process. Raises ``RuntimeError`` with the
    output tail when the launch fails."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    if threads is not None:
        full_env["OMP_NUM_THREADS"] = str(threads)
    root = Path(__file__).resolve().parents[1]
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), full_env.get("PYTHONPATH", "")) if p)
    cmd = torchrun_command(nproc, [*args, "--out", str(out)], module)
    proc = subprocess.run(cmd, cwd=root, env=full_env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    return json.loads((Path(out) / result_file).read_text())


def run_entry(argv: list[str] | None, parser: argparse.ArgumentParser, to_config: Callable[[argparse.Namespace], Any],
              train: Callable[[Any, DistEnv], Any], logger: logging.Logger) -> int:
    """The body of a distributed trainer's ``main``: rank-aware logging, flags -> config (usage errors exit 2),
    process group, training, and the process group torn down whatever happens."""
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
                        force=True)  # torchrec / FBGEMM log every table batch at INFO on the root logger
    logger.setLevel(logging.INFO if rank == "0" else logging.WARNING)
    args = parser.parse_args(argv)
    try:
        cfg = to_config(args)
        env = init_distributed(cfg.device)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        train(cfg, env)
    except ValueError as exc:
        print(f"error (rank {env.rank}): {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


# =============================================================================
# CLI (torchrun entry point)
# =============================================================================


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m pipelines.train_distributed",
        description="Distributed ranker training: TorchRec DMP (sharded tables) + DDP (dense); see the module doc.")
    p.add_argument("--data", required=True, help="KuaiLive-format dataset directory (real or synthetic)")
    p.add_argument("--out", required=True, help="output directory: the ranker export + " + RESULT_FILE)
    p.add_argument("--model", choices=sorted(RANKERS), default="tokenmixer")
    p.add_argument("--steps", type=int, default=100, help="training steps (global batches)")
    p.add_argument("--batch-size", type=int, default=2048, help="GLOBAL batch size (split over the processes)")
    p.add_argument("--lr", type=float, default=3e-3, help="dense learning rate (Adam)")
    p.add_argument("--embedding-lr", type=float, default=1e-2, help="embedding-table learning rate")
    p.add_argument("--weight-decay", type=float, default=0.0, help="dense weight decay")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sharding", choices=SHARDING_TYPES, default="table_wise",
                   help="sharding type of every embedding table (row_wise / table_row_wise: CUDA only)")
    p.add_argument("--sparse-optimizer", choices=SPARSE_OPTIMIZERS, default="auto",
                   help="embedding optimizer, fused in backward (auto: adam, or rowwise_adagrad for sharded tables "
                        "on CPU, where FBGEMM has no fused Adam)")
    p.add_argument("--backbone", help="JSON overrides of the backbone config, e.g. '{\"dim\": 64}'")
    p.add_argument("--predict-rows", type=int, default=256, help="validation rows scored at the end (export check)")
    add_launch_flags(p)
    return p


def add_launch_flags(p: argparse.ArgumentParser) -> None:
    """The flags every distributed trainer shares: device, platform config, registry name, MLflow switch."""
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: one GPU per process with NCCL when CUDA is available, else CPU with gloo")
    p.add_argument("--config", help="platform config YAML (MLflow tracking URI / experiment)")
    p.add_argument("--register", default="", help="MLflow registered model name ('' = do not register)")
    p.add_argument("--no-mlflow", action="store_true", help="no MLflow run (rank 0 is the only one that logs)")


def json_object(flag: str, text: str | None) -> dict[str, Any]:
    """A ``--flag '{...}'`` JSON object (empty when not given); ``ValueError`` naming the flag otherwise."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value


def config_from_args(args: argparse.Namespace) -> DistTrainConfig:
    overrides: dict[str, Any] = {}
    backbone = json_object("--backbone", args.backbone)
    if backbone:
        overrides["backbone"] = backbone
    cfg = DistTrainConfig(data=args.data, out=args.out, model=args.model, steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, embedding_lr=args.embedding_lr,
                          weight_decay=args.weight_decay, seed=args.seed, sharding=args.sharding,
                          sparse_optimizer=args.sparse_optimizer, device=args.device, mlflow=not args.no_mlflow,
                          config=args.config,
                          predict_rows=args.predict_rows, register_name=args.register or None, overrides=overrides)
    RankerConfig.for_model(cfg.model, **dict(overrides))  # a bad --backbone fails before any process group work
    if not Path(cfg.data).is_dir():
        raise ValueError(f"--data {cfg.data} is not a directory")
    return cfg


def main(argv: list[str] | None = None) -> int:
    return run_entry(argv, build_parser(), config_from_args, train_distributed, log)


if __name__ == "__main__":
    sys.exit(main())
