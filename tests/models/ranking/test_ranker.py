"""Tests for the multi-task ranker: the TorchRec input (models/ranking/inputs.py), the shared encoder and its
target attention, the heads and losses, every registered model, the shared-history serving path and the export
format. CPU, the tiny synthetic dataset, small batches."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.ranking.encoder import GROUP_NAMES, EncoderConfig, TargetAttention
from models.ranking.export import FILES, load_ranker, save_ranker
from models.ranking.heads import LossWeights, expected_gift_value, multitask_loss, predictions, ziln_loss
from models.ranking.inputs import FIELD_FEATURES, SEQ_FEATURES, to_input
from models.ranking.ranker import RANKERS, Ranker, RankerConfig, build_ranker
from recsys.data.ranking import SEQ_KEYS, FeatureArrays, RankingDataset

ALL_MODELS = sorted(RANKERS)
MOE_MODELS = [m for m in ALL_MODELS if RANKERS[m][0] == "mixer" and getattr(RANKERS[m][1], "moe", False)]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def ds(tiny_ranking: RankingDataset) -> RankingDataset:
    return tiny_ranking


@pytest.fixture(scope="module")
def rich_row(ds: RankingDataset) -> int:
    """A row whose user has non-empty histories of every kind (the longest behaviour histories first)."""
    n_before = {k: ds.ends[k] - ds.histories[k].user_start[ds.user_rows] for k in SEQ_KEYS}
    score = np.min(np.stack([np.minimum(n_before[k], 5) for k in SEQ_KEYS]), axis=0) * 100 + np.minimum(
        n_before["hist_click"], 50)
    row = int(np.argmax(score))
    assert all(n_before[k][row] > 0 for k in SEQ_KEYS)
    return row


def _batch(ds: RankingDataset, n: int = 64, seed: int = 0) -> np.ndarray:
    """Rows with both labels and some clicked rows with behaviour labels."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(ds.samples.height, n - 8, replace=False)
    pos = np.flatnonzero((ds.samples["comment"].to_numpy() > 0) | (ds.samples["gift"].to_numpy() > 0))
    return np.r_[rows, rng.choice(pos, 8, replace=False)]


def _labels(ds: RankingDataset, rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in ds.labels(rows).items()}


# =============================================================================
# 1. to_input
# =============================================================================


def test_to_input_kjt_layout(ds: RankingDataset) -> None:
    rows = _batch(ds, 32)
    a = ds.arrays(rows)
    # garbage beyond each length must not leak into the jagged values
    for k in SEQ_KEYS:
        pad = np.arange(a.hist[k].shape[1])[None, :] >= a.hist_len[k][:, None]
        a.hist[k][pad] = 999_999
    x = to_input(a)
    b = len(a)
    assert x.batch_size == b
    assert x.ids.keys() == ["user_id"]
    assert x.seqs.keys() == list(SEQ_FEATURES) == ["cand_streamer", *SEQ_KEYS, "hist_click_gap"]
    assert x.fields.keys() == list(FIELD_FEATURES)
    ids = x.ids.to_dict()["user_id"]
    np.testing.assert_array_equal(ids.lengths().numpy(), np.ones(b))
    np.testing.assert_array_equal(ids.values().numpy(), a.user_idx)
    seqs = x.seqs.to_dict()
    np.testing.assert_array_equal(seqs["cand_streamer"].values().numpy(), a.streamer_idx)
    for k in SEQ_KEYS:
        jt = seqs[k]
        np.testing.assert_array_equal(jt.lengths().numpy(), a.hist_len[k], err_msg=k)
        expected = np.concatenate([a.hist[k][i, :a.hist_len[k][i]] for i in range(b)])
        np.testing.assert_array_equal(jt.values().numpy(), expected, err_msg=k)
        assert (jt.values().numpy() != 999_999).all()
    gap = seqs["hist_click_gap"]
    np.testing.assert_array_equal(gap.lengths().numpy(), a.hist_len["hist_click"])
    np.testing.assert_array_equal(gap.values().numpy(),
                                  np.concatenate([a.hist_gap[i, :a.hist_len["hist_click"][i]] for i in range(b)]))
    fields = x.fields.to_dict()
    for k, arr in zip(FIELD_FEATURES, (a.user_profile, a.streamer_profile, a.context)):
        np.testing.assert_array_equal(fields[k].lengths().numpy(), np.full(b, arr.shape[1]))
        np.testing.assert_array_equal(fields[k].values().numpy(), arr.reshape(-1))
    assert x.dense.dtype == torch.float32 and tuple(x.dense.shape) == a.dense.shape
    assert tuple(x.title.shape) == a.title.shape
    np.testing.assert_array_equal(x.user_of.numpy(), np.arange(b))
    assert x.seqs.values().dtype == torch.int64


@pytest.mark.parametrize("bad", [np.zeros(3, np.int64), np.array([0, 1, 2, 3, -1] + [0] * 3),
                                 np.array([0] * 7 + [8]), np.zeros((8, 1), np.int64)])
def test_to_input_rejects_bad_user_of(ds: RankingDataset, bad: np.ndarray) -> None:
    a = ds.arrays(np.arange(8))
    with pytest.raises(ValueError, match="user_of"):
        to_input(a, bad)


# =============================================================================
# 2. TargetAttention
# =============================================================================


def _att_inputs(b: int = 6, length: int = 5, d: int = 8):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, d, generator=g)
    k = torch.randn(b, length, d, generator=g)
    v = torch.randn(b, length, d, generator=g)
    lens = torch.tensor([0, 1, 3, 5, 0, 2])[:b]
    mask = torch.arange(length)[None, :] < lens[:, None]
    return q, k, v, mask


@pytest.mark.parametrize("mlp", [True, False])
def test_target_attention_empty_rows_are_zero(mlp: bool) -> None:
    att = TargetAttention(8, hidden=16, mlp=mlp)
    q, k, v, mask = _att_inputs()
    k[~mask] = 1e30  # huge (but finite) garbage in padded positions
    out = att(q, k, v, mask)
    assert torch.isfinite(out).all()
    empty = ~mask.any(dim=1)
    assert empty.sum() == 2
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    assert (out[~empty].abs().sum(dim=1) > 0).all()
    # a whole batch of empty histories, with gradients: finite everywhere
    q.requires_grad_(True)
    out = att(q, k, v, torch.zeros_like(mask))
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("mlp", [True, False])
def test_target_attention_ignores_masked_positions(mlp: bool) -> None:
    att = TargetAttention(8, hidden=16, mlp=mlp)
    q, k, v, mask = _att_inputs()
    out = att(q, k, v, mask)
    k2, v2 = k.clone(), v.clone()
    k2[~mask] = torch.randn(int((~mask).sum()), 8) * 100
    v2[~mask] = torch.randn(int((~mask).sum()), 8) * 100
    assert torch.equal(att(q, k2, v2, mask), out)
    # and a valid position does matter
    k3 = k.clone()
    k3[3, 0] += 1.0
    assert not torch.allclose(att(q, k3, v, mask)[3], out[3])


def test_target_attention_dot_product_by_hand() -> None:
    att = TargetAttention(8, mlp=False)
    assert len(list(att.parameters())) == 0
    q, k, v, mask = _att_inputs()
    out = att(q, k, v, mask)
    for i in range(q.shape[0]):
        n = int(mask[i].sum())
        if n == 0:
            continue
        s = (k[i, :n] @ q[i]) / math.sqrt(8)
        w = torch.softmax(s, dim=0)
        torch.testing.assert_close(out[i], (w[:, None] * v[i, :n]).sum(0), rtol=1e-5, atol=1e-6)
    # a single valid event: its value exactly
    torch.testing.assert_close(out[1], v[1, 0])


# =============================================================================
# 3. Shared-history serving path
# =============================================================================


def _request(ds: RankingDataset, row: int, n: int, seed: int) -> tuple[FeatureArrays, FeatureArrays]:
    """(shared, full): row 0 is the user's sample; rows 1.. other candidates. ``shared`` stores the history once
    (row 0; the others have lengths 0, garbage values) as pipelines.train_ranker.request_arrays does; ``full``
    copies the user's history into every row."""
    rng = np.random.default_rng(seed)
    cand = rng.choice(ds.samples.height, n - 1, replace=False)
    shared = ds.arrays(np.r_[row, cand])
    assert any((shared.hist_len[k][1:] > 0).any() for k in SEQ_KEYS)  # the candidates' own histories differ
    for k in shared.hist:
        shared.hist_len[k][1:] = 0
    shared.user_idx[1:] = shared.user_idx[0]
    shared.user_profile[1:] = shared.user_profile[0]
    full = copy.deepcopy(shared)
    for k in full.hist:
        full.hist[k][:] = full.hist[k][0]
        full.hist_len[k][:] = full.hist_len[k][0]
    full.hist_gap[:] = full.hist_gap[0]
    return shared, full


@pytest.mark.parametrize("model", ALL_MODELS)
def test_shared_history_equals_per_row_history(ds: RankingDataset, rich_row: int, model: str) -> None:
    ranker = build_ranker(model, ds.spec).eval()
    for seed, row in enumerate((rich_row, int(ds.rows("test")[5]))):
        shared, full = _request(ds, row, 24, seed)
        p_shared = ranker.predict(to_input(shared, np.zeros(len(shared), np.int64)))
        p_full = ranker.predict(to_input(full))
        assert set(p_shared) == {"click", "watch_s", "comment", "like", "gift", "gift_value"}
        for k in p_shared:
            torch.testing.assert_close(p_shared[k], p_full[k], rtol=1e-5, atol=1e-5, msg=f"{model} {k}")
    # teeth: without user_of the candidates lose the history, and the predictions change
    shared, full = _request(ds, rich_row, 24, 0)
    p_own = ranker.predict(to_input(shared))
    p_full = ranker.predict(to_input(full))
    assert torch.equal(p_own["click"][0], p_full["click"][0])
    assert (p_own["click"][1:] - p_full["click"][1:]).abs().max() > 0


def test_history_order_and_content_matter(ds: RankingDataset, rich_row: int) -> None:
    """The encoder reads the history values (not only lengths): replacing the history changes the output."""
    ranker = build_ranker("dnn", ds.spec).eval()
    a = ds.arrays(np.array([rich_row]))
    base = ranker.predict(to_input(a))["click"]
    b = copy.deepcopy(a)
    n = b.hist_len["hist_click"][0]
    b.hist["hist_click"][0, :n] = (b.hist["hist_click"][0, :n] % (ds.spec.n_streamers - 1)) + 1
    assert not np.array_equal(a.hist["hist_click"], b.hist["hist_click"])
    assert not torch.equal(ranker.predict(to_input(b))["click"], base)


# =============================================================================
# 4. Every registered model
# =============================================================================


def test_registry_configs() -> None:
    assert {"tokenmixer", "rankmixer", "dcnv2", "deepfm", "wide_deep", "dnn"} <= set(RANKERS)
    with pytest.raises(ValueError, match="unknown ranker"):
        RankerConfig.for_model("nope")
    cfg = RankerConfig.for_model("dnn", backbone={"hidden_dims": [32, 16]}, head_hidden=8)
    assert cfg.backbone_config().hidden_dims == (32, 16) and cfg.head_hidden == 8
    assert RankerConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("model", ALL_MODELS)
def test_every_model_trains_one_step(ds: RankingDataset, model: str) -> None:
    ranker = build_ranker(model, ds.spec)
    ranker.train()
    rows = _batch(ds, 64)
    x = to_input(ds.arrays(rows))
    out = ranker(x)
    assert out.backbone.hidden.shape == (64, ranker.backbone.out_dim)
    assert out.heads["click"].shape == (64, 1) and out.heads["gift"].shape == (64, 3)
    labels = _labels(ds, rows)
    assert labels["click"].sum() > 8 and labels["click"].sum() < 64
    loss = ranker.loss(out, labels)
    assert torch.isfinite(loss.total) and loss.total.item() > 0
    assert set(loss.parts) >= {"click", "watch", "comment", "like", "gift"}
    assert all(math.isfinite(v) for v in loss.parts.values())
    ranker.zero_grad(set_to_none=True)
    loss.total.backward()
    enc = ranker.encoder
    tables = {
        "user": enc.ids.embedding_bags["user"].weight,
        "streamer": enc.seqs.embeddings["streamer"].weight,
        "gap": enc.seqs.embeddings["gap"].weight,
        **{k: enc.fields.embeddings[k].weight for k in FIELD_FEATURES},
    }
    for name, w in tables.items():
        assert w.grad is not None and torch.isfinite(w.grad).all(), name
        assert w.grad.abs().sum() > 0, f"{model}: no gradient reaches the {name} table"
    # rows of ids that are in the batch get gradients, the others none
    user_rows = np.unique(ds.user_rows[rows])
    g = tables["user"].grad.abs().sum(dim=1)
    assert (g[user_rows] > 0).all()
    assert g[np.setdiff1d(np.arange(ds.spec.n_users), user_rows)].sum() == 0
    bb = [p for p in ranker.backbone.parameters() if p.requires_grad]
    with_grad = [p for p in bb if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) >= 0.5 * len(bb), f"{model}: {len(with_grad)}/{len(bb)} backbone tensors get gradients"
    assert all(torch.isfinite(p.grad).all() for p in bb if p.grad is not None)
    for tower in ranker.heads.towers.values():
        assert tower[0].weight.grad is not None and tower[0].weight.grad.abs().sum() > 0
    assert ranker.dense_parameter_count() > 0


@pytest.mark.parametrize("model", ALL_MODELS)
def test_moe_models_report_expert_utilisation(ds: RankingDataset, model: str) -> None:
    ranker = build_ranker(model, ds.spec).eval()
    out = ranker(to_input(ds.arrays(_batch(ds, 64))))
    if model in MOE_MODELS:
        util = out.backbone.stats["expert_util"]
        cfg = RANKERS[model][1]
        assert util.shape == (cfg.n_tokens, cfg.n_experts - 1)
        assert torch.isfinite(util).all() and (util >= 0).all()
        assert util.sum() > 0
    else:
        assert "expert_util" not in out.backbone.stats


def test_moe_registry_is_not_empty() -> None:
    assert {"tokenmixer", "tokenmixer_no_mixing", "tokenmixer_shared_ffn"} <= set(MOE_MODELS)
    assert "tokenmixer_no_moe" not in MOE_MODELS


def test_encoder_groups_match_declared_widths(ds: RankingDataset) -> None:
    ranker = build_ranker("dnn", ds.spec)
    groups = ranker.encoder(to_input(ds.arrays(_batch(ds, 16))))
    assert len(groups) == len(GROUP_NAMES) == 7
    assert [g.shape[1] for g in groups] == ranker.encoder.group_dims
    assert all(torch.isfinite(g).all() for g in groups)
    x = to_input(ds.arrays(np.arange(4)))
    x.dense = x.dense[:, :-1]
    with pytest.raises(ValueError, match="dense"):
        ranker.encoder(x)


def test_user_drift_is_the_time_scaled_second_table(ds: RankingDataset) -> None:
    """timeSVD++ drift: user vector = e_u + tau(t) d_u, tau = -1/2 / +1/2 at the first / last training sample."""
    spec = ds.spec
    train_t = ds.timestamps[ds.rows("train")]
    assert (spec.time_origin_ms, spec.time_span_ms) == (train_t.min(), train_t.max() - train_t.min())
    enc = build_ranker("dnn", spec).encoder
    assert enc.drift
    t0, span = spec.time_origin_ms, spec.time_span_ms
    tau = enc.drift_time(torch.tensor([t0 - span, t0, t0 + span, t0 + span * 3 // 2, t0 + 5 * span]))
    torch.testing.assert_close(tau, torch.tensor([-0.5, -0.5, 0.5, 1.0, 1.0]))  # held at the ends
    a = ds.arrays(np.arange(6))
    x = to_input(a)
    tables = dict(enc.ids.named_parameters())
    e_u, d_u = (tables[f"embedding_bags.{t}.weight"] for t in ("user", "user_drift"))
    assert torch.count_nonzero(d_u) == 0  # zero-initialised: a fresh model does not depend on time
    with torch.no_grad():
        d_u.normal_()
    rows = torch.from_numpy(a.user_idx)
    want = e_u[rows] + enc.drift_time(x.time_ms)[:, None] * d_u[rows]
    torch.testing.assert_close(enc.user_vector(x), want)
    later = copy.deepcopy(a)
    later.time_ms = a.time_ms + spec.time_span_ms  # the same rows one training period later
    torch.testing.assert_close(enc.user_vector(to_input(later)) - enc.user_vector(x), d_u[rows])


def test_user_drift_off_without_a_training_period(ds: RankingDataset) -> None:
    """Specs written before the drift (no training period) and ``user_drift=False`` build the static user table only,
    and the prediction then does not depend on time."""
    old = dataclasses.replace(ds.spec, time_origin_ms=0, time_span_ms=0)
    static = RankerConfig.for_model("dnn", encoder=EncoderConfig(user_drift=False))
    for ranker in (build_ranker("dnn", old), Ranker(ds.spec, static)):
        assert not ranker.encoder.drift
        assert not any("user_drift" in k for k in ranker.state_dict())
        a = ds.arrays(np.arange(6))
        b = copy.deepcopy(a)
        b.time_ms = a.time_ms + 10 * 86_400_000
        with torch.no_grad():
            for p in ranker.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        ranker.eval()
        torch.testing.assert_close(ranker.predict(to_input(a))["click"], ranker.predict(to_input(b))["click"])


def test_batch_without_any_history(ds: RankingDataset) -> None:
    """A batch in which no row has any history of some (or every) kind still runs, with finite outputs."""
    ranker = build_ranker("tokenmixer", ds.spec).eval()
    a = ds.arrays(_batch(ds, 16))
    for k in SEQ_KEYS:
        a.hist_len[k][:] = 0
    p = ranker.predict(to_input(a))
    assert all(torch.isfinite(v).all() for v in p.values())
    b = copy.deepcopy(a)
    for k in SEQ_KEYS:
        b.hist[k][:] = 0
    b.hist_gap[:] = 0
    p2 = ranker.predict(to_input(b))
    for k in p:
        assert torch.equal(p[k], p2[k]), k


# =============================================================================
# 5. Heads
# =============================================================================


def test_ziln_loss_closed_form() -> None:
    out = torch.tensor([[0.3, 1.2, -0.4], [-1.1, 0.5, 0.7]])
    value = torch.tensor([25.0, 0.0])
    got = ziln_loss(out, value)
    logit, mu, log_sigma = 0.3, 1.2, -0.4
    sigma = math.exp(log_sigma)
    x = 25.0
    nll_pos = (-math.log(1 / (1 + math.exp(-logit)))
               + math.log(x) + math.log(sigma) + 0.5 * math.log(2 * math.pi)
               + (math.log(x) - mu) ** 2 / (2 * sigma ** 2))
    nll_zero = -math.log(1 - 1 / (1 + math.exp(1.1)))
    torch.testing.assert_close(got, torch.tensor([nll_pos, nll_zero]), rtol=1e-5, atol=1e-6)
    # the log-normal part is a density: integrates (over log x) to ~1 for the positive part
    xs = torch.linspace(-8, 10, 20001).exp()
    o = torch.tensor([[50.0, 1.2, -0.4]]).expand(xs.numel(), 3)  # P(gift) ~ 1: loss ~ -log density
    dens = torch.exp(-ziln_loss(o, xs)) * xs
    integral = torch.trapezoid(dens, torch.linspace(-8, 10, 20001))
    assert abs(integral.item() - 1.0) < 1e-3


def test_expected_gift_value() -> None:
    out = torch.tensor([[0.2, 1.5, -0.3], [-2.0, 0.1, 0.4], [0.0, -1.0, 0.0]])
    p = torch.sigmoid(out[:, 0])
    sigma = out[:, 2].exp()
    torch.testing.assert_close(expected_gift_value(out), p * torch.exp(out[:, 1] + sigma ** 2 / 2))
    pred = predictions({"click": torch.zeros(3, 1), "watch": torch.tensor([[-1.0], [0.0], [math.log1p(30.0)]]),
                        "comment": torch.zeros(3, 1), "like": torch.zeros(3, 1), "gift": out})
    torch.testing.assert_close(pred["gift_value"], expected_gift_value(out))
    torch.testing.assert_close(pred["gift"], p)
    torch.testing.assert_close(pred["watch_s"], torch.tensor([0.0, 0.0, 30.0]))
    torch.testing.assert_close(pred["click"], torch.full((3,), 0.5))


def _heads_batch(b: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = {"click": torch.randn(b, 1, generator=g), "watch": torch.randn(b, 1, generator=g),
           "comment": torch.randn(b, 1, generator=g), "like": torch.randn(b, 1, generator=g),
           "gift": torch.randn(b, 3, generator=g)}
    click = (torch.rand(b, generator=g) < 0.4).float()
    labels = {"click": click, "watch": torch.rand(b, generator=g) * 5 * click,
              "comment": (torch.rand(b, generator=g) < 0.3).float() * click,
              "like": (torch.rand(b, generator=g) < 0.3).float() * click,
              "gift_value": (torch.rand(b, generator=g) < 0.3).float() * torch.rand(b, generator=g) * 100 * click}
    labels["gift"] = (labels["gift_value"] > 0).float()
    return out, labels


def test_multitask_loss_masks_non_clicked_rows() -> None:
    out, labels = _heads_batch()
    w = LossWeights()
    base = multitask_loss(out, labels, w)
    clicked = labels["click"] > 0.5
    assert 0 < clicked.sum() < clicked.numel()
    changed = {k: v.clone() for k, v in labels.items()}
    changed["watch"][~clicked] = 7.0
    changed["comment"][~clicked] = 1.0
    changed["like"][~clicked] = 1.0
    changed["gift_value"][~clicked] = 55.0
    again = multitask_loss(out, changed, w)
    assert torch.equal(again.total, base.total)
    assert again.parts == base.parts
    # and the same change on a clicked row does change the loss
    row = int(torch.nonzero(clicked)[0])
    for k, val in (("watch", 7.0), ("comment", 1 - labels["comment"][row]), ("gift_value", 55.0)):
        c2 = {kk: v.clone() for kk, v in labels.items()}
        c2[k][row] = val
        assert multitask_loss(out, c2, w).parts[k if k != "gift_value" else "gift"] != base.parts[
            k if k != "gift_value" else "gift"]
    # closed forms: click on all rows, the rest averaged over clicked rows
    click = F.binary_cross_entropy_with_logits(out["click"].squeeze(-1), labels["click"])
    assert base.parts["click"] == pytest.approx(click.item(), rel=1e-6)
    watch = ((out["watch"].squeeze(-1) - labels["watch"])[clicked] ** 2).mean()
    assert base.parts["watch"] == pytest.approx(watch.item(), rel=1e-6)
    gift = ziln_loss(out["gift"][clicked], labels["gift_value"][clicked]).mean()
    assert base.parts["gift"] == pytest.approx(gift.item(), rel=1e-6)
    total = sum(getattr(w, k) * base.parts[k] for k in ("click", "watch", "comment", "like", "gift"))
    assert base.total.item() == pytest.approx(total, rel=1e-6)
    # changing a non-clicked row's click output changes the click loss
    out2 = {k: v.clone() for k, v in out.items()}
    out2["click"][~clicked] += 1.0
    assert multitask_loss(out2, labels, w).parts["click"] != base.parts["click"]


def test_multitask_loss_no_clicked_rows_and_aux() -> None:
    out, labels = _heads_batch()
    labels = {k: torch.zeros_like(v) for k, v in labels.items()}
    res = multitask_loss(out, labels, LossWeights())
    assert torch.isfinite(res.total)
    assert res.parts["watch"] == res.parts["comment"] == res.parts["gift"] == 0.0
    aux = [torch.zeros(40), torch.ones(40)]
    with_aux = multitask_loss(out, labels, LossWeights(aux=0.5), aux)
    expected_aux = math.log(2) + F.softplus(torch.tensor(1.0)).item()
    assert with_aux.parts["aux"] == pytest.approx(expected_aux, rel=1e-6)
    assert with_aux.total.item() == pytest.approx(res.total.item() + 0.5 * expected_aux, rel=1e-6)


# =============================================================================
# 6. Export
# =============================================================================


@pytest.mark.parametrize("model", ["dnn", "tokenmixer"])
def test_export_round_trip(ds: RankingDataset, tmp_path: Path, model: str) -> None:
    ranker = build_ranker(model, ds.spec, head_hidden=16).eval()
    with torch.no_grad():  # move away from the init so that a fresh model would differ
        for p in ranker.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    d = save_ranker(ranker, tmp_path / "export", ds.user_index, ds.streamer_index, meta={"model": model, "x": 1})
    assert sorted(p.name for p in d.iterdir()) == sorted([*FILES, "meta.json"])
    loaded = load_ranker(d)
    assert loaded.meta["model"] == model and loaded.meta["x"] == 1 and loaded.meta["format_version"] == 1
    # (JSON turns the backbone's tuples into lists, so compare the JSON and the rebuilt backbone config)
    assert loaded.model.cfg.to_json() == ranker.cfg.to_json() and loaded.model.spec == ranker.spec
    assert loaded.model.cfg.backbone_config() == ranker.cfg.backbone_config()
    assert not loaded.model.training
    np.testing.assert_array_equal(loaded.user_index.ids, ds.user_index.ids)
    np.testing.assert_array_equal(loaded.streamer_index.ids, ds.streamer_index.ids)
    x = to_input(ds.arrays(_batch(ds, 32)))
    p0, p1 = ranker.predict(x), loaded.model.predict(x)
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    state = torch.load(d / "weights.pt", weights_only=True)
    assert set(state) == set(ranker.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize("missing", FILES)
def test_load_ranker_missing_file(ds: RankingDataset, tmp_path: Path, missing: str) -> None:
    ranker = build_ranker("dnn", ds.spec, backbone={"hidden_dims": [16]}, head_hidden=8)
    d = save_ranker(ranker, tmp_path / "e", ds.user_index, ds.streamer_index)
    (d / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        load_ranker(d)


def test_load_ranker_rejects_other_format_version(ds: RankingDataset, tmp_path: Path) -> None:
    ranker = build_ranker("dnn", ds.spec, backbone={"hidden_dims": [16]}, head_hidden=8)
    d = save_ranker(ranker, tmp_path / "e", ds.user_index, ds.streamer_index)
    (d / "meta.json").write_text('{"format_version": 99}')
    with pytest.raises(ValueError, match="format"):
        load_ranker(d)


def test_export_keeps_backbone_overrides(ds: RankingDataset, tmp_path: Path) -> None:
    ranker = build_ranker("dcnv2", ds.spec, backbone={"hidden_dims": [24, 12], "cross_layers": 1}).eval()
    d = save_ranker(ranker, tmp_path / "e", ds.user_index, ds.streamer_index)
    loaded = load_ranker(d).model
    assert loaded.cfg.backbone_config() == ranker.cfg.backbone_config()
    assert dataclasses.asdict(loaded.cfg.encoder) == dataclasses.asdict(ranker.cfg.encoder)
    x = to_input(ds.arrays(np.arange(8)))
    assert torch.equal(loaded.predict(x)["click"], ranker.predict(x)["click"])


def test_ranker_is_a_module_with_all_parts(ds: RankingDataset) -> None:
    ranker = Ranker(ds.spec, RankerConfig.for_model("rankmixer"))
    names = {n.split(".")[0] for n, _ in ranker.named_parameters()}
    assert names == {"encoder", "backbone", "heads"}
