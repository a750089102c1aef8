"""Short training runs of pipelines.train_retrieval on the tiny synthetic dataset (CPU, seconds), the export and
the MLflow registry round trip."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from models.retrieval.export import load_retriever
from models.retrieval.inputs import QueryBatch
from pipelines.retrieval_registry import frame_to_query, query_to_frame, user_vectors_frame
from pipelines.train_retrieval import (
    RetrievalTrainConfig,
    evaluate_retriever,
    fit_retriever,
    generator_hits,
    retrieve_live,
    score_candidates,
    top_scores,
    train_retrieval,
)
from recsys.config import TrackingConfig
from recsys.data.retrieval import eval_candidates
from recsys.metrics import target_ranks, topk_metrics

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = {"dim": 16, "layers": 1, "heads": 2, "k1": 20, "n_sub": 8}


def _cfg(**kw) -> RetrievalTrainConfig:
    base = dict(model="grank", epochs=1, max_steps=30, batch_size=64, n_negatives=31, eval_every=15, progress=False,
                device="cpu", lr=3e-3, overrides=SMALL)
    return RetrievalTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ds(tiny_retrieval):
    return tiny_retrieval("streamer")


@pytest.fixture(scope="module")
def trained(ds):
    return fit_retriever(ds, _cfg())


def test_fit_retriever_learns_and_restores_the_best_check(ds, trained) -> None:
    hist = trained.history
    assert [h["step"] for h in hist] == [15, 30]
    for h in hist:
        assert 0.0 <= h["valid_ndcg@10"] <= h["valid_recall@10"] <= 1.0
        assert all(math.isfinite(h[f"train_{k}"]) for k in ("ntp", "sa", "ca", "loss"))
    assert trained.metrics["best_valid_ndcg@10"] == max(h["valid_ndcg@10"] for h in hist)
    restored = copy.deepcopy(trained.model)
    restored.set_fusion_weights(torch.tensor([0.5, 0.5, 0.0]))  # the checks' weights; training then learned others
    valid = evaluate_retriever(restored, ds, "valid", full_pool=False)
    assert valid["ndcg@10"] == pytest.approx(trained.metrics["best_valid_ndcg@10"], abs=1e-12)
    test = evaluate_retriever(trained.model, ds, "test")
    assert test["recall@500"] >= test["recall@50"] >= 0.0
    assert 0.0 <= test["generator_recall@20"] <= 1.0
    assert test["n"] == ds.eval_sets["test"].targets.height


def test_training_fits_the_fusion_weights_on_the_validation_targets_inside_the_generator_top(ds, trained) -> None:
    """The trainer's last step: the fusion weights that maximise the likelihood of the validation targets among the
    generator's top k1, fitted on exactly the targets inside that top, better on that likelihood than the config's
    weights."""
    from models.retrieval.grank import fusion_features

    m, model = trained.metrics, trained.model
    w = model.fusion_weights.tolist()
    assert [m["fusion_w_ranker"], m["fusion_w_generator"], m["fusion_w_pop"]] == pytest.approx(w)
    assert w != pytest.approx([0.5, 0.5, 0.0], abs=1e-3)
    found = eval_candidates(ds, "valid", full_pool=True)
    assert m["fusion_requests"] == ds.eval_sets["valid"].targets.height
    assert m["fusion_targets"] == generator_hits(model, ds, *found).sum() > 0

    def nll(weights: torch.Tensor) -> float:
        total, count = 0.0, 0
        for b in top_scores(model, ds, *found, depth=model.cfg.k1):
            vt = torch.as_tensor(found[3][b.rows]).gather(1, b.top)
            inside = ((b.top == 0) & vt).any(1)
            x = fusion_features(b.ranker, b.gen.gather(1, b.top), vt, b.pop)[inside]
            logits = (x @ weights.double()).masked_fill(~vt[inside], float("-inf"))
            t = (b.top[inside] == 0).long().argmax(1)
            total += float((torch.logsumexp(logits, 1) - logits.gather(1, t[:, None]).squeeze(1)).sum())
            count += int(inside.sum())
        return total / count

    assert nll(model.fusion_weights) < nll(torch.tensor([0.5, 0.5, 0.0]))
    fixed = fit_retriever(ds, _cfg(max_steps=15, overrides={**SMALL, "learn_fusion": False}))
    assert fixed.model.fusion_weights.tolist() == pytest.approx([0.5, 0.5, 0.0]) and "fusion_targets" not in \
        fixed.metrics


def test_evaluation_in_chunks_equals_one_pass(ds, trained) -> None:
    """Chunking bounds the memory of the evaluation and changes no metric (GRank with its ranker, both pools)."""
    n = ds.eval_sets["test"].targets.height
    assert n > 8
    whole = evaluate_retriever(trained.model, ds, "test", batch_size=4, chunk=n)
    chunked = evaluate_retriever(trained.model, ds, "test", batch_size=4, chunk=8)
    assert chunked.keys() == whole.keys() and "generator_recall@20" in whole and "recall@500" in whole
    for k, v in whole.items():
        assert chunked[k] == pytest.approx(v, abs=1e-12), k
    with pytest.raises(ValueError, match="chunk"):
        evaluate_retriever(trained.model, ds, "test", chunk=0)


def test_training_lifts_ndcg_far_above_the_untrained_model(ds, trained) -> None:
    untrained = fit_retriever(ds, _cfg(max_steps=1, lr=1e-12))
    before = evaluate_retriever(untrained.model, ds, "test", full_pool=False)["ndcg@10"]
    after = evaluate_retriever(trained.model, ds, "test", full_pool=False)["ndcg@10"]
    assert after > 2 * before and after > 0.2, (before, after)


def test_popularity_scores_rank_by_recent_streamer_clicks(ds) -> None:
    res = fit_retriever(ds, _cfg(model="popularity"))
    assert res.model is None and res.history == []
    users, times, cands, valid = eval_candidates(ds, "test")
    s = score_candidates(None, ds, users, times, cands, valid)
    assert np.isneginf(s[~valid]).all()
    assert np.array_equal(s[valid], ds.popularity_scores(cands, times)[valid])
    m = evaluate_retriever(None, ds, "test")
    assert m["ndcg@10"] == pytest.approx(topk_metrics(target_ranks(s[:, 0], np.where(valid[:, 1:], s[:, 1:], 0),
                                                                   valid[:, 1:]), (10,))["ndcg@10"])


def test_fit_retriever_is_seeded(ds, trained) -> None:
    again = fit_retriever(ds, _cfg(max_steps=15))
    assert again.history[0]["train_loss"] == trained.history[0]["train_loss"]
    other = fit_retriever(ds, _cfg(max_steps=15, seed=1))
    assert other.history[0]["train_loss"] != trained.history[0]["train_loss"]


def test_early_stopping(ds) -> None:
    res = fit_retriever(ds, _cfg(max_steps=40, eval_every=2, patience=1, lr=1e-12, model="two_tower",
                                 overrides={"dim": 8, "hidden": 16}))
    assert len(res.history) == 2 and res.metrics["steps"] == 4


def test_train_config_validation() -> None:
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"n_negatives": 0}, {"granularity": "video"}):
        with pytest.raises(ValueError):
            RetrievalTrainConfig(**bad)


def test_export_round_trip_and_the_registered_pyfunc(ds, tmp_path) -> None:
    import mlflow

    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="test-retrieval",
                              artifact_location=str(tmp_path / "artifacts"))
    res = train_retrieval(ds, _cfg(max_steps=4, eval_every=0), tracking, export_dir=tmp_path / "export")
    assert res.run_id and res.model_version == "1"
    loaded = load_retriever(res.export_dir)
    users, times, cands, valid = eval_candidates(ds, "test")
    sl = slice(0, 16)
    a = score_candidates(res.model, ds, users[sl], times[sl], cands[sl], valid[sl])
    b = score_candidates(loaded.model, ds, users[sl], times[sl], cands[sl], valid[sl])
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.array_equal(loaded.catalog.index.ids, ds.catalog.index.ids)
    assert loaded.profile_vocab.values == ds.profile_vocab.values
    assert np.array_equal(loaded.user_profile, ds.user_profile)
    # the pyfunc embeds users from the query frame exactly as the model does
    q = ds.query(users[sl], times[sl])
    frame = query_to_frame(q)
    back = frame_to_query(frame, ds.long_len, ds.behaviour_len)
    for name in ("user", "profile", "hist", "hist_gap", "behaviour"):
        assert np.array_equal(getattr(back, name), getattr(q, name)), name
    mlflow.set_tracking_uri(tracking.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/kuailive-retriever/{res.model_version}")
    got = np.stack(pyfunc.predict(frame)["user_vector"].to_numpy())
    want = np.stack(user_vectors_frame(res.model, frame, ds.long_len, ds.behaviour_len)["user_vector"].to_numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="missing column"):
        frame_to_query(frame.drop(columns=["hist"]), ds.long_len, ds.behaviour_len)
    assert torch.is_tensor(next(loaded.model.parameters()))


@pytest.mark.parametrize("granularity", ["streamer", "room"])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_live_retrieval_replays_the_room_lifecycle_and_returns_only_live_items(tiny_retrieval, granularity, backend):
    """The index kept current by room starts/ends equals the live set at t, and search equals brute force."""
    ds = tiny_retrieval(granularity)
    model = fit_retriever(ds, _cfg(max_steps=2, granularity=granularity)).model
    t = int(np.median(ds.eval_sets["test"].targets["timestamp"].to_numpy()))
    users = ds.train_user[:4]
    res = retrieve_live(model, ds, users, t, k=10, backend=backend, replay_from=t - 6 * 3_600_000)
    live = ds.live_items(t)
    assert res.live_at_t == live.size and res.updates > 0
    assert np.isin(res.items, live).all()  # a room that ended is never returned
    with torch.no_grad():
        u = model.user_vector(QueryBatch.from_arrays(ds.query(users, np.full(4, t)))).numpy()
        e = model.item_vectors(torch.as_tensor(live)).numpy()
    brute = u @ e.T
    for i in range(4):
        np.testing.assert_allclose(np.sort(res.scores[i])[::-1], np.sort(brute[i])[::-1][:10], rtol=1e-5, atol=1e-6)
