"""GRank: the decomposed mask against an explicit full-attention reference, train/serve consistency, the ranker,
the final score ordering, the variants and the baselines' contracts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models.retrieval.grank import (
    GRank,
    GRankConfig,
    fit_fusion_weights,
    fuse_scores,
    fusion_features,
    info_nce,
    standardise_rows,
)
from models.retrieval.inputs import CatalogSizes, QueryBatch
from models.retrieval.layers import DecomposedLayer
from models.retrieval.registry import ALL_RETRIEVERS, NON_PARAMETRIC, RETRIEVERS, RetrieverConfig, build_retriever
from models.retrieval.two_tower import TwoTower, TwoTowerConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SIZES = CatalogSizes(n_items=50, n_streamers=20, n_users=9, n_profile=30, n_profile_fields=4, n_behaviours=4,
                     title_dim=8, granularity="room")


def _buffers(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = SIZES.n_items
    return {"streamer_row": torch.randint(1, SIZES.n_streamers, (n,), generator=g),
            "category": torch.randint(0, 7, (n,), generator=g), "live_type": torch.randint(0, 5, (n,), generator=g),
            "title_row": torch.randint(0, 6, (n,), generator=g), "titles": torch.randn(6, SIZES.title_dim, generator=g)}


def _query(b: int = 3, long_len: int = 12, lengths: tuple[int, ...] | None = None, seed: int = 0) -> QueryBatch:
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, SIZES.n_items, (b, long_len), generator=g)
    lengths = lengths or tuple(range(long_len, long_len - b, -1))
    for i, n in enumerate(lengths):
        hist[i, : long_len - n] = 0  # right-aligned: padding on the left
    gap = torch.where(hist > 0, torch.randint(1, 16, (b, long_len), generator=g), 0)
    return QueryBatch(user=torch.randint(0, SIZES.n_users, (b,), generator=g),
                      profile=torch.randint(0, SIZES.n_profile, (b, 4), generator=g),
                      hour=torch.randint(0, 24, (b,), generator=g), weekday=torch.randint(0, 7, (b,), generator=g),
                      hist=hist, hist_gap=gap, behaviour=torch.randint(0, SIZES.n_items, (b, 4, 5), generator=g))


def _model(**kw) -> GRank:
    torch.manual_seed(0)
    cfg = GRankConfig(dim=16, layers=2, heads=2, dropout=0.0, short_len=8, long_len=12, k1=4, n_sub=6, **kw)
    return GRank(SIZES, cfg, _buffers()).eval()


# ------------------------------------------------------------------------------------------- decomposed mask
def _reference(layer: DecomposedLayer, x: torch.Tensor, valid: torch.Tensor, c: torch.Tensor):
    """One attention call over [h.., U, c..] with the block mask of the brief's table, written out directly."""
    b, s, d = x.shape
    n = c.shape[1]
    full = torch.cat([x, c], dim=1)
    t = s + n
    mask = torch.zeros(b, t, t, dtype=torch.bool)
    for i in range(s):  # sequence rows: causal over valid sequence keys, never candidates
        for j in range(i + 1):
            mask[:, i, j] = valid[:, j]
        mask[:, i, i] = True
    for ci in range(n):  # candidate rows: every valid sequence key (history and U) and itself only
        mask[:, s + ci, :s] = valid
        mask[:, s + ci, s + ci] = True
    h = layer.heads
    qkv = layer.qkv(layer.norm1(full)).view(b, t, 3, h, d // h)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
    att = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1) @ v
    out = full + layer.out(att.transpose(1, 2).reshape(b, t, d))
    out = out + layer.ffn(layer.norm2(out))
    return out[:, :s], out[:, s:]


def test_decomposed_layer_equals_the_block_masked_reference():
    torch.manual_seed(0)
    layer = DecomposedLayer(16, heads=2).eval()
    x, c = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, :3] = False  # left padding of a short history
    seq, cand = layer(x, valid, c)
    ref_seq, ref_cand = _reference(layer, x, valid, c)
    torch.testing.assert_close(seq[valid], ref_seq[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cand, ref_cand, rtol=1e-5, atol=1e-5)


def test_a_candidate_never_sees_another_candidate_and_the_history_never_sees_candidates():
    torch.manual_seed(0)
    layer = DecomposedLayer(16, heads=4).eval()
    x, c = torch.randn(1, 6, 16), torch.randn(1, 4, 16)
    valid = torch.ones(1, 6, dtype=torch.bool)
    seq, cand = layer(x, valid, c)
    c2 = c.clone()
    c2[:, 2] += 5.0
    seq2, cand2 = layer(x, valid, c2)
    torch.testing.assert_close(seq, seq2)  # history and U do not read candidates
    others = [0, 1, 3]
    torch.testing.assert_close(cand[:, others], cand2[:, others])  # no candidate reads another
    assert not torch.allclose(cand[:, 2], cand2[:, 2])
    seq_only, _ = layer(x, valid, None)
    torch.testing.assert_close(seq, seq_only)


def test_sequence_rows_are_causal():
    torch.manual_seed(0)
    layer = DecomposedLayer(16, heads=2).eval()
    x = torch.randn(1, 8, 16)
    valid = torch.ones(1, 8, dtype=torch.bool)
    out, _ = layer(x, valid)
    x2 = x.clone()
    x2[:, 5] += 3.0
    out2, _ = layer(x2, valid)
    torch.testing.assert_close(out[:, :5], out2[:, :5])
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


def test_user_vector_is_identical_with_and_without_candidate_tokens():
    m = _model()
    q = _query()
    u_serving = m.user_vector(q)
    u_train, cache, valid = m._sequence(q)
    cand = torch.randint(1, SIZES.n_items, (3, 5))
    m._auxiliary(m.items(cand), cache, valid)  # the auxiliary pass leaves the cached sequence alone
    torch.testing.assert_close(u_serving, u_train)
    torch.testing.assert_close(m._sequence(q)[0], u_serving)


def test_padding_content_and_other_rows_of_the_batch_do_not_change_a_user_vector():
    m = _model()
    q = _query(lengths=(12, 5, 9))
    u = m.user_vector(q)
    q2 = _query(lengths=(12, 5, 9))
    q2.hist_gap[1, :7] = 3  # garbage in padded gap slots
    torch.testing.assert_close(m.user_vector(q2)[1], u[1])
    single = QueryBatch(**{k: getattr(q, k)[1:2] for k in q.__dataclass_fields__})
    torch.testing.assert_close(m.user_vector(single)[0], u[1], rtol=1e-5, atol=1e-6)


def test_only_items_before_the_query_enter_the_history_window():
    m = _model()
    q = _query(b=1, lengths=(12,))
    u = m.user_vector(q)
    q.hist[0, :4] = 7  # the ranker reads the long history; the generator only the last short_len = 8 columns
    torch.testing.assert_close(m.user_vector(q), u)


# ------------------------------------------------------------------------------------------- scores and losses
def test_final_scores_put_the_rescored_top_k1_above_the_rest_in_ranker_order():
    m = _model(fusion=None)
    q = _query()
    cand = torch.randint(1, SIZES.n_items, (3, 10))
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[2, 7:] = False
    s = m.scores(q, cand, valid)
    gen = torch.einsum("bd,bcd->bc", m.user_vector(q), m.items(cand)).double().masked_fill(~valid, float("-inf"))
    assert torch.isinf(s[2, 7:]).all() and (s[2, 7:] < 0).all()
    for i in range(3):
        top = set(gen[i].topk(4).indices.tolist())
        rest = [j for j in range(10) if j not in top and valid[i, j]]
        assert s[i, list(top)].min() > s[i, rest].max()
        rs = m.rank(q, m.user_vector(q), cand)[i, sorted(top)].double()
        assert torch.equal(torch.argsort(rs), torch.argsort(s[i, sorted(top)]))


def _top_order(s: torch.Tensor, gen: torch.Tensor, k: int) -> list[list[int]]:
    """Per row, the columns of the generator's top ``k`` in the order the final scores ``s`` put them."""
    out = []
    for i in range(s.shape[0]):
        top = gen[i].topk(k).indices
        out.append(top[torch.argsort(s[i, top], descending=True, stable=True)].tolist())
    return out


def test_fusion_weights_zero_and_one_give_the_generator_and_the_ranker_order():
    q = _query()
    cand = torch.randint(1, SIZES.n_items, (3, 10))
    valid = torch.ones(3, 10, dtype=torch.bool)
    cascade = _model(fusion=None)
    gen = torch.einsum("bd,bcd->bc", cascade.user_vector(q), cascade.items(cand)).double()
    for weight, reference in ((0.0, gen), (1.0, cascade.scores(q, cand, valid))):
        fused = _model(fusion=weight)
        fused.load_state_dict(cascade.state_dict())  # the state carries the cascade's weights (1, 0, 0) ...
        fused.set_fusion_weights(torch.tensor([weight, 1.0 - weight, 0.0]))  # ... replaced by this test's
        s = fused.scores(q, cand, valid)
        assert _top_order(s, gen, 4) == _top_order(reference, gen, 4)
        rest = [[j for j in range(10) if j not in set(gen[i].topk(4).indices.tolist())] for i in range(3)]
        assert all(s[i, gen[i].topk(4).indices].min() > s[i, rest[i]].max() for i in range(3))


def test_fusion_pop_orders_the_top_by_popularity_when_it_dominates():
    q = _query()
    cand = torch.randint(1, SIZES.n_items, (3, 10))
    valid = torch.ones(3, 10, dtype=torch.bool)
    pop = torch.rand(3, 10)
    m = _model(fusion=0.5, fusion_pop=1e6)
    gen = torch.einsum("bd,bcd->bc", m.user_vector(q), m.items(cand)).double()
    s = m.scores(q, cand, valid, pop)
    for i, order in enumerate(_top_order(s, gen, 4)):
        assert order == sorted(order, key=lambda c: -float(pop[i, c]))
    # without fusion the popularity weight is ignored (the cascade's ranker order)
    cascade = _model(fusion=None, fusion_pop=1e6)
    cascade.load_state_dict(m.state_dict())
    plain = _model(fusion=None)
    plain.load_state_dict(m.state_dict())
    torch.testing.assert_close(cascade.scores(q, cand, valid, pop), plain.scores(q, cand, valid, pop))
    with pytest.raises(ValueError, match="fusion_pop"):
        GRankConfig(fusion_pop=-1.0)


def test_fusion_mixes_standardised_scores_and_ignores_invalid_entries():
    r = torch.tensor([[1.0, 2.0, 3.0, 99.0], [5.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([[30.0, 10.0, 20.0, -99.0], [0.0, 2.0, 4.0, 0.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True, False], [True, True, True, False]])
    z = standardise_rows(r, valid)
    torch.testing.assert_close(z[0, :3], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) * 1.5 ** 0.5)
    assert z[0, 3] == 0 and z[1, 3] == 0
    fused = fuse_scores(r, g, valid, (0.5, 0.5, 0.0))
    # the scale of either score does not decide: an affine rescaling of one leaves the fusion unchanged
    torch.testing.assert_close(fuse_scores(100 * r + 7, g / 10 - 3, valid, (0.5, 0.5, 0.0)), fused)
    pop = torch.tensor([[3.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(fuse_scores(r, g, valid, (0.5, 0.5, 0.25), pop),
                               fused + 0.25 * standardise_rows(pop, valid))
    # row 0: z(ranker) = c * [-1, 0, 1], z(generator) = c * [1, -1, 0] with c = sqrt(1.5)
    torch.testing.assert_close(fused[0, :3], torch.tensor([0.0, -0.5, 0.5], dtype=torch.float64) * 1.5 ** 0.5)
    assert torch.argmax(fuse_scores(r, g, valid, (0.9, 0.1, 0.0))[0, :3]) == 2
    assert torch.argmax(fuse_scores(r, g, valid, (0.1, 0.9, 0.0))[0, :3]) == 0
    with pytest.raises(ValueError, match="fusion"):
        GRankConfig(fusion=1.5)


def test_fit_fusion_weights_recovers_the_weights_that_drew_the_targets():
    # targets drawn from softmax(features @ w): the maximum-likelihood fit finds w back
    g = torch.Generator().manual_seed(0)
    n, k = 4000, 30
    valid = torch.rand(n, k, generator=g) < 0.9
    valid[:, 0] = True
    x = fusion_features(torch.randn(n, k, generator=g, dtype=torch.float64),
                        torch.randn(n, k, generator=g, dtype=torch.float64), valid,
                        torch.randn(n, k, generator=g, dtype=torch.float64))
    w_true = torch.tensor([1.5, 0.8, -0.4], dtype=torch.float64)
    probs = torch.softmax((x @ w_true).masked_fill(~valid, float("-inf")), dim=1)
    target = torch.multinomial(probs, 1, generator=g).squeeze(1)
    w = fit_fusion_weights(x, valid, target, init=(0.5, 0.5, 0.0), l2=0.0)
    torch.testing.assert_close(w.double(), w_true, atol=0.12, rtol=0.0)
    # the fit is better than its starting point on the likelihood it maximises
    def nll(weights):
        logits = (x @ torch.as_tensor(weights, dtype=x.dtype)).masked_fill(~valid, float("-inf"))
        return float((torch.logsumexp(logits, 1) - logits.gather(1, target[:, None]).squeeze(1)).mean())
    assert nll(w) < nll((0.5, 0.5, 0.0)) - 0.05
    with pytest.raises(ValueError, match="target"):
        fit_fusion_weights(x, valid & (torch.arange(k) != 0), torch.zeros(n, dtype=torch.long), (0.5, 0.5, 0.0))
    with pytest.raises(ValueError, match="match"):
        fit_fusion_weights(x[:, :5], valid, target, (0.5, 0.5, 0.0))


def test_fusion_weights_order_the_top_are_saved_and_an_older_state_loads_with_the_config_weights():
    q = _query()
    cand = torch.randint(1, SIZES.n_items, (3, 10))
    valid = torch.ones(3, 10, dtype=torch.bool)
    m = _model(fusion=0.5, fusion_pop=0.25)
    torch.testing.assert_close(m.fusion_weights, torch.tensor([0.5, 0.5, 0.25]))
    gen = torch.einsum("bd,bcd->bc", m.user_vector(q), m.items(cand)).double()
    as_configured = m.scores(q, cand, valid)
    m.set_fusion_weights(torch.tensor([0.0, 1.0, 0.0]))  # the generator's order alone
    assert _top_order(m.scores(q, cand, valid), gen, 4) == [gen[i].topk(4).indices.tolist() for i in range(3)]
    state = m.state_dict()
    assert "fusion_weights" in state
    again = _model(fusion=0.5, fusion_pop=0.25)
    again.load_state_dict(state)
    torch.testing.assert_close(again.fusion_weights, torch.tensor([0.0, 1.0, 0.0]))
    older = {key: v for key, v in state.items() if key != "fusion_weights"}
    before = _model(fusion=0.5, fusion_pop=0.25)
    before.load_state_dict(older)  # a state saved before the weights were learned
    torch.testing.assert_close(before.fusion_weights, torch.tensor([0.5, 0.5, 0.25]))
    torch.testing.assert_close(before.scores(q, cand, valid), as_configured)
    with pytest.raises(ValueError, match="3 finite"):
        m.set_fusion_weights(torch.tensor([1.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="3 finite"):
        m.set_fusion_weights(torch.tensor([1.0, 0.0]))


def test_without_a_ranker_the_scores_are_the_mips_scores():
    m = _model(ranker=False)
    q = _query()
    cand = torch.randint(1, SIZES.n_items, (3, 6))
    valid = torch.ones(3, 6, dtype=torch.bool)
    gen = torch.einsum("bd,bcd->bc", m.user_vector(q), m.item_vectors(cand)).double()
    torch.testing.assert_close(m.scores(q, cand, valid), gen)


def test_info_nce_ignores_invalid_columns():
    s = torch.tensor([[2.0, 1.0, 50.0], [0.0, 1.0, 1.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    first = torch.log_softmax(torch.tensor([2.0, 1.0]), 0)[0]
    second = torch.log_softmax(torch.tensor([0.0, 1.0, 1.0]), 0)[0]
    expect = -(first + second) / 2
    torch.testing.assert_close(info_nce(s, valid, 1.0), expect)


@pytest.mark.parametrize("updates_items", [True, False])
def test_sa_updates_items_decides_whether_the_auxiliary_loss_trains_the_candidates_item_vectors(updates_items: bool):
    m = _model(sa_updates_items=updates_items, weight_ntp=0.0, weight_ca=0.0)
    q = _query(b=1, long_len=4)
    q = dataclasses.replace(q, behaviour=torch.zeros_like(q.behaviour))  # padding: the query reads the history only
    read = set(m.items.item_streamer_row[torch.cat([q.hist.flatten(), q.behaviour.flatten()])].tolist())
    only_cand = [i for i in range(1, SIZES.n_items) if int(m.items.item_streamer_row[i]) not in read]
    assert len(only_cand) >= 2, "the test needs items whose streamer no query reads"
    cand = torch.tensor([only_cand[:2]])
    m.losses(q, cand, torch.ones_like(cand, dtype=torch.bool))["loss"].backward()
    grad = m.items.streamer.weight.grad[m.items.item_streamer_row[cand[0]]]
    assert (grad.abs().sum() > 0) == updates_items
    assert m.layers[0].qkv.weight.grad.abs().sum() > 0  # either way the loss shapes the shared transformer


def test_subset_keeps_the_target_first_then_the_hardest_valid_negatives_without_repeats():
    m = _model()
    ntp = torch.tensor([[0.0, 5.0, 1.0, 9.0, 3.0, 8.0, 2.0, 7.0]])
    valid = torch.ones(1, 8, dtype=torch.bool)
    valid[0, 3] = False  # the highest score is not a valid negative
    sub = m._subset(ntp, valid)[0].tolist()  # n_sub = 6, hard = round(5 * 0.5) = 2
    assert sub[0] == 0 and len(sub) == 6 == len(set(sub))
    assert sub[1:3] == [5, 7]  # 8.0 and 7.0
    assert 3 not in sub[1:3]


@pytest.mark.parametrize("name", sorted(RETRIEVERS))
def test_every_variant_trains_and_scores(name: str):
    torch.manual_seed(0)
    rcfg = RetrieverConfig.for_model(name, dim=16, short_len=8, long_len=12)
    model = build_retriever(SIZES, rcfg, _buffers())
    q = _query()
    cand = torch.randint(1, SIZES.n_items, (3, 9))
    valid = torch.ones(3, 9, dtype=torch.bool)
    out = model.losses(q, cand, valid)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert {"ntp", "loss"} <= set(out)
    if name == "grank":
        assert {"sa", "ca"} <= set(out)
    model.eval()
    assert model.user_vector(q).shape == (3, 16)
    assert model.scores(q, cand, valid).shape == (3, 9)


def test_empty_history_gives_finite_vectors_and_ranker_scores():
    m = _model()
    q = _query(lengths=(0, 0, 3))
    u = m.user_vector(q)
    assert torch.isfinite(u).all()
    assert torch.isfinite(m.rank(q, u, torch.randint(1, SIZES.n_items, (3, 4)))).all()


def test_sasrec_reads_the_most_recent_history_position():
    m = GRank(SIZES, GRankConfig(dim=16, layers=1, heads=2, dropout=0.0, short_len=8, long_len=12, query_token=False,
                                 aux=False, ranker=False), _buffers()).eval()
    q = _query(b=1, lengths=(12,))
    u = m.user_vector(q)
    q.hist[0, -1] = (q.hist[0, -1] % (SIZES.n_items - 1)) + 1
    assert not torch.allclose(m.user_vector(q), u)


def test_registry_names_and_option_errors():
    assert set(ALL_RETRIEVERS) == set(RETRIEVERS) | set(NON_PARAMETRIC)
    with pytest.raises(ValueError, match="unknown retriever"):
        RetrieverConfig.for_model("hnsw")
    with pytest.raises(ValueError, match="unknown option"):
        RetrieverConfig.for_model("two_tower", layers=3)
    with pytest.raises(ValueError, match="short_len"):
        GRankConfig(short_len=100, long_len=50)


def test_item_encoder_shares_the_streamer_vector_and_pads_with_zeros():
    m = TwoTower(SIZES, TwoTowerConfig(dim=8, hidden=16), _buffers())
    rows = torch.tensor([[0, 3, 3], [5, 0, 3]])
    e = m.items(rows)
    assert torch.equal(e[0, 0], torch.zeros(8)) and torch.equal(e[1, 1], torch.zeros(8))
    torch.testing.assert_close(e[0, 1], e[1, 2])
    b = _buffers()
    same = torch.nonzero((b["category"] == b["category"][3]) & (b["live_type"] == b["live_type"][3])
                         & (b["title_row"] == b["title_row"][3]) & (b["streamer_row"] != b["streamer_row"][3]))
    if same.numel():  # rooms differing only by streamer differ by exactly the streamer embeddings
        j = int(same[0, 0])
        diff = m.items(torch.tensor([3]))[0] - m.items(torch.tensor([j]))[0]
        torch.testing.assert_close(diff, m.items.streamer.weight[b["streamer_row"][3]]
                                   - m.items.streamer.weight[b["streamer_row"][j]])
