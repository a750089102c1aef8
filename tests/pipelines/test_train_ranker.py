"""Short training runs of pipelines.train_ranker.fit_ranker on the tiny synthetic dataset (CPU, a few seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.ranking.inputs import to_input
from pipelines.train_ranker import RankerTrainConfig, evaluate_rows, fit_ranker, request_arrays
from recsys.data.ranking import SEQ_KEYS, RankingDataset


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def ds(tiny_ranking: RankingDataset) -> RankingDataset:
    return tiny_ranking


def _cfg(**kw) -> RankerTrainConfig:
    base = dict(model="dnn", epochs=1, max_steps=30, batch_size=256, progress=False, eval_every=15, device="cpu",
                eval_batch_size=4096)
    return RankerTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(ds: RankingDataset):
    return fit_ranker(ds, _cfg())


def test_fit_ranker_learns(ds: RankingDataset, trained) -> None:
    hist = trained.history
    assert [h["step"] for h in hist] == [15, 30]
    for h in hist:
        assert 0.0 <= h["valid_auc"] <= 1.0
        assert math.isfinite(h["valid_logloss"]) and math.isfinite(h["train_loss"]) and h["samples_per_s"] > 0
    # learning: the last check is clearly above chance and above the first (15 steps on tiny is still near chance)
    assert hist[-1]["valid_auc"] > max(0.6, hist[0]["valid_auc"])
    assert trained.metrics["steps"] == 30
    assert trained.metrics["best_valid_auc"] == max(h["valid_auc"] for h in hist)
    test = evaluate_rows(trained.model, ds, ds.rows("test"), 4096, torch.device("cpu"))
    assert test["auc"] > 0.55, test
    assert math.isfinite(test["logloss"]) and 0 < test["logloss"] < 1.0
    assert test["n"] == ds.rows("test").size
    assert 0.5 < test["oracle.auc"] <= 1.0  # synthetic data: the generator's probability on the same rows
    # the returned model is the best one (restored): its validation AUC is the best recorded
    valid = evaluate_rows(trained.model, ds, ds.rows("valid"), 4096, torch.device("cpu"))
    assert valid["auc"] == pytest.approx(trained.metrics["best_valid_auc"], abs=1e-9)


def test_trained_model_serves_shared_history_requests(ds: RankingDataset, trained) -> None:
    """The serving-shaped request (history once, user_of = 0) scores like the per-row form of the same request."""
    rng = np.random.default_rng(0)
    row = int(ds.rows("test")[100])
    a = request_arrays(ds, row, 50, rng)
    assert all((a.hist_len[k][1:] == 0).all() for k in SEQ_KEYS)
    assert (a.user_idx == a.user_idx[0]).all()
    full = request_arrays(ds, row, 50, np.random.default_rng(0))
    for k in full.hist:
        full.hist[k][:] = full.hist[k][0]
        full.hist_len[k][:] = full.hist_len[k][0]
    full.hist_gap[:] = full.hist_gap[0]
    model = trained.model.eval()
    p = model.predict(to_input(a, np.zeros(50, np.int64)))["click"]
    q = model.predict(to_input(full))["click"]
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_fit_ranker_is_seeded(ds: RankingDataset, trained) -> None:
    again = fit_ranker(ds, _cfg(max_steps=15))
    assert again.history[0]["valid_auc"] == trained.history[0]["valid_auc"]
    assert again.history[0]["train_loss"] == trained.history[0]["train_loss"]
    other = fit_ranker(ds, _cfg(max_steps=15, seed=1))
    assert other.history[0]["valid_auc"] != trained.history[0]["valid_auc"]


def test_early_stopping(ds: RankingDataset) -> None:
    """With a learning rate too small to move the validation AUC, patience 1 stops at the second check."""
    res = fit_ranker(ds, _cfg(max_steps=20, eval_every=2, patience=1, lr=1e-12, embedding_lr=1e-12,
                              batch_size=64))
    assert len(res.history) == 2 < 10
    assert res.metrics["steps"] == 4
    assert res.history[1]["valid_auc"] == pytest.approx(res.history[0]["valid_auc"], abs=1e-5)


def test_train_config_validation() -> None:
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"embedding_lr": 0.0}):
        with pytest.raises(ValueError):
            RankerTrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown embedding optimizer 'lamb'"):
        RankerTrainConfig(embedding_optimizer="lamb")


@pytest.mark.parametrize("name", ["adam", "rowwise_adagrad"])
def test_embedding_optimizer_updates_the_tables_only(ds: RankingDataset, name: str) -> None:
    """The tables get the configured optimizer (row-wise Adagrad keeps one accumulator per row), the rest Adam."""
    from torchrec.optim import RowWiseAdagrad

    from models.ranking.ranker import build_ranker
    from pipelines.train_ranker import _optimizer

    torch.manual_seed(0)
    model = build_ranker("dnn", ds.spec)
    opt = _optimizer(model, _cfg(embedding_optimizer=name, embedding_lr=0.05))
    tables, dense = opt.optimizers
    assert isinstance(tables, RowWiseAdagrad if name == "rowwise_adagrad" else torch.optim.Adam)
    assert isinstance(dense, torch.optim.Adam)
    table_ids = {id(p) for p in model.encoder.embedding_parameters()}
    assert {id(p) for g in tables.param_groups for p in g["params"]} == table_ids
    assert not table_ids & {id(p) for g in dense.param_groups for p in g["params"]}
    before = {id(p): p.detach().clone() for p in model.encoder.embedding_parameters()}
    rows = ds.rows("train")[:256]
    x = to_input(ds.arrays(rows))
    labels = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in ds.labels(rows).items()}
    opt.zero_grad()
    model.loss(model(x), labels).total.backward()
    opt.step()
    moved = [not torch.equal(before[id(p)], p) for p in model.encoder.embedding_parameters()]
    assert any(moved)
    if name == "rowwise_adagrad":
        p = max(model.encoder.embedding_parameters(), key=lambda t: t.shape[0])
        assert tables.state[p]["sum"].shape == (p.shape[0], 1)
