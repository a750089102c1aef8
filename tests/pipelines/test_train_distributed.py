"""Distributed ranker training (pipelines.train_distributed): 2 torchrun processes on CPU (gloo, TorchRec table-wise
sharding + DDP) follow a 1-process run of the same module on the same data step by step, and the gathered checkpoint
loads into a plain single-process Ranker that scores exactly like the sharded model.

Tolerance: per-step relative loss difference < ``REL_TOL`` = 1e-5. The two runs see the same rows, the same initial
weights and the same optimizers; what differs is the float summation order (each rank reduces over its half of the
batch, then gloo's all-reduce / TorchRec's all-to-all add the halves), amplified a little over the steps.
Measured on the tiny set: max 1.9e-7 over 20 steps (default row-wise Adagrad tables) and over 10 steps (SGD tables);
one process fed the same batches with the rows reversed differs from the reference by 1.3e-7, so this is the noise
floor. The parity runs use TokenMixer-Large with its dense per-token SwiGLU (``{"moe": false}``): with the sparse MoE,
a last-bit difference in a router logit now and then flips a top-k expert choice, after which the two trajectories
part for good (one fresh-clone run measured 5.3e-4 at 20 steps while others stayed under 1e-5), so the check would
test the router's luck rather than the distribution. The MoE itself is tested in ``tests/models/ranking``.
Bugs measured against it (manual experiments, reverted): every rank on the same half of the batch -> 0.19 at step 1;
per-rank loss normalisers -> 1.0; DDP's averaging not compensated (loss not scaled by the world size) -> 1.1e-3;
sharded-table gradients summed instead of averaged (TorchRec gradient division off; visible with SGD only, row-wise
Adagrad is invariant to the gradient scale) -> 1.6e-3; DDP static-graph mode (first-step dense gradients never
all-reduced) -> 2.9e-2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.ranking.heads import multitask_loss, predictions
from models.ranking.inputs import to_input
from models.ranking.ranker import Ranker, RankerConfig
from pipelines.train_distributed import (
    RESULT_FILE,
    DistTrainConfig,
    global_batches,
    launch,
    main,
    rank_rows,
    resolve_sparse_optimizer,
    sharded_multitask_loss,
)

REL_TOL = 1e-5
STEPS = 20
BATCH = 256
LAUNCH_TIMEOUT_S = 240


def max_rel_diff(a: list[float], b: list[float]) -> float:
    """Largest relative difference of two per-step curves (both finite, same length)."""
    x, y = np.asarray(a), np.asarray(b)
    assert x.shape == y.shape and np.isfinite(x).all() and np.isfinite(y).all()
    return float(np.max(np.abs(x - y) / np.abs(x)))


# ----------------------------------------------------------------------------------------------- pure pieces (fast)


def test_rank_rows_cover_each_global_batch_exactly_once() -> None:
    batches = global_batches(np.arange(1000, 1999), 64, 40, seed=3)
    assert len(batches) == 40 and all(b.size == 64 for b in batches)
    assert all(np.array_equal(a, b) for a, b in zip(batches, global_batches(np.arange(1000, 1999), 64, 40, seed=3)))
    per_epoch = 999 // 64
    assert len(np.unique(np.concatenate(batches[:per_epoch]))) == per_epoch * 64  # no repeats within an epoch
    for world in (1, 2, 3):
        for b in batches[:3]:
            parts = [rank_rows(b, r, world) for r in range(world)]
            assert sorted(np.concatenate(parts).tolist()) == sorted(b.tolist())
            assert sum(p.size for p in parts) == b.size
    with pytest.raises(ValueError, match="rank 2"):
        rank_rows(batches[0], 2, 2)
    with pytest.raises(ValueError, match="larger than"):
        global_batches(np.arange(10), 64, 1, seed=0)


def test_sharded_loss_adds_up_to_the_single_process_loss(tiny_ranking) -> None:
    ds = tiny_ranking
    torch.manual_seed(0)
    cfg = RankerConfig.for_model("tokenmixer")
    model = Ranker(ds.spec, cfg)
    rows = ds.rows("train")[:96]
    labels_of = lambda r: {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in ds.labels(r).items()}  # noqa: E731
    n_clicked = int((np.asarray(ds.labels(rows)["click"]) > 0.5).sum())
    assert 0 < n_clicked < rows.size
    with torch.no_grad():
        out = model(to_input(ds.arrays(rows)))
        ref = model.loss(out, labels_of(rows))
        aux = [model.heads.click_logit(a) for a in out.backbone.aux]
        total, parts = sharded_multitask_loss(out.heads, labels_of(rows), cfg.losses, aux, rows.size, n_clicked)
        assert float(total) == pytest.approx(float(ref.total), rel=1e-6)
        assert {k: float(v) for k, v in parts.items()} == pytest.approx(ref.parts, rel=1e-6)
        for world in (2, 3):
            pieces = []
            for r in range(world):
                sub = rank_rows(rows, r, world)
                o = model(to_input(ds.arrays(sub)))
                pieces.append(sharded_multitask_loss(o.heads, labels_of(sub), cfg.losses,
                                                     [model.heads.click_logit(a) for a in o.backbone.aux],
                                                     rows.size, n_clicked)[0])
            assert float(sum(pieces)) == pytest.approx(float(ref.total), rel=1e-5)
    # the per-rank mean (what a naive DDP port computes) is not the same loss: the clicked rows differ by rank
    sub = rank_rows(rows, 0, 2)
    with torch.no_grad():
        o = model(to_input(ds.arrays(sub)))
        aux = [model.heads.click_logit(a) for a in o.backbone.aux]
        naive = multitask_loss(o.heads, labels_of(sub), cfg.losses, aux)
    assert float(naive.total) != pytest.approx(float(ref.total), rel=1e-3)


def test_sparse_optimizer_choice_and_config_errors(tmp_path: Path) -> None:
    assert resolve_sparse_optimizer("auto", "cpu") == "rowwise_adagrad"  # FBGEMM's fused CPU kernel: no Adam
    assert resolve_sparse_optimizer("auto", "cuda") == "adam"
    assert resolve_sparse_optimizer("sgd", "cpu") == "sgd"
    with pytest.raises(ValueError, match="not available on CPU"):
        resolve_sparse_optimizer("adam", "cpu")
    with pytest.raises(ValueError, match="unknown ranker"):
        DistTrainConfig(data=".", out=".", model="nope")
    with pytest.raises(ValueError, match="--sharding"):
        DistTrainConfig(data=".", out=".", sharding="data_parallel")
    for argv in (["--data", str(tmp_path / "missing"), "--out", str(tmp_path)],
                 ["--data", str(tmp_path), "--out", str(tmp_path), "--steps", "0"],
                 ["--data", str(tmp_path), "--out", str(tmp_path), "--backbone", "{bad"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


# ------------------------------------------------------------------------------------- torchrun launches (slow)


def _args(data: Path, steps: int, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", "tokenmixer", "--backbone", '{"moe": false}', "--steps", str(steps),
            "--batch-size", str(BATCH), "--seed", "0", "--no-mlflow", "--predict-rows", "128", *extra]


@pytest.fixture(scope="module")
def default_runs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """The default distribution (table-wise, row-wise Adagrad tables, Adam dense) with 1 and 2 processes."""
    out = tmp_path_factory.mktemp("train-dist")
    ref = launch(1, _args(tiny_dir, STEPS), out / "p1", timeout_s=LAUNCH_TIMEOUT_S)
    two = launch(2, _args(tiny_dir, STEPS), out / "p2", timeout_s=LAUNCH_TIMEOUT_S)
    return out, ref, two


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_processes_follow_the_single_process_run(default_runs) -> None:
    _, ref, two = default_runs
    assert ref["world_size"] == 1 and two["world_size"] == 2 and two["backend"] == "gloo"
    assert two["sparse_optimizer"] == "rowwise_adagrad" and two["sharding"] == "table_wise"
    owners = {v.split("ranks=")[1] for v in two["plan"].values()}
    assert all(v.startswith("table_wise/fused") for v in two["plan"].values())
    assert owners == {"[0]", "[1]"}, two["plan"]  # the tables really are split over the two processes
    assert len(ref["losses"]) == len(two["losses"]) == STEPS
    assert ref["losses"][0] > ref["losses"][-1]  # it trains
    diff = max_rel_diff(ref["losses"], two["losses"])
    assert diff < REL_TOL, (diff, ref["losses"], two["losses"])
    for a, b in zip(ref["loss_parts"], two["loss_parts"]):
        assert b == pytest.approx(a, rel=1e-4)
    assert two["samples_per_s"] > 0 and ref["samples_per_s"] > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkpoint_loads_into_a_single_process_ranker_for_serving(default_runs, tiny_ranking) -> None:
    from models.ranking.export import load_ranker

    out, _, two = default_runs
    export = out / "p2"
    loaded = load_ranker(export)
    assert type(loaded.model) is Ranker and loaded.tables is not None
    assert loaded.meta["distributed"]["world_size"] == 2
    assert json.loads((export / RESULT_FILE).read_text())["losses"] == two["losses"]
    rows = np.asarray(two["predict_rows"])
    assert rows.size == 128
    with torch.no_grad():
        pred = predictions(loaded.model(to_input(tiny_ranking.arrays(rows))).heads)
    for task, values in two["predictions"].items():
        np.testing.assert_allclose(pred[task].numpy(), np.asarray(values, np.float32), rtol=1e-5, atol=1e-6,
                                   err_msg=task)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sgd_tables_catch_unaveraged_sparse_gradients(tiny_dir: Path, tmp_path: Path) -> None:
    """Row-wise Adagrad ignores the scale of the table gradients; SGD does not, so this pair checks that the
    sharded tables get the single-process gradient (averaged over ranks, not summed)."""
    extra = ("--sparse-optimizer", "sgd", "--embedding-lr", "10")
    ref = launch(1, _args(tiny_dir, 10, *extra), tmp_path / "p1", timeout_s=LAUNCH_TIMEOUT_S)
    two = launch(2, _args(tiny_dir, 10, *extra), tmp_path / "p2", timeout_s=LAUNCH_TIMEOUT_S)
    assert two["sparse_optimizer"] == "sgd"
    diff = max_rel_diff(ref["losses"], two["losses"])
    assert diff < REL_TOL, (diff, ref["losses"], two["losses"])
