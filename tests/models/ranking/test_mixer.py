"""Tests for models/ranking/mixer.py: token mixing, per-token FFNs, S-P MoE, RankMixer / TokenMixer-Large blocks and
the MixerBackbone. All CPU, tiny shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.ranking.backbone import BackboneOutput
from models.ranking.mixer import (
    ChunkTokenizer,
    CrossGlobalToken,
    GroupTokenizer,
    MixerBackbone,
    MixerConfig,
    PerTokenFFN,
    PerTokenSwiGLU,
    RankMixerBlock,
    SparsePerTokenMoE,
    TokenMixerLargeBlock,
    mix,
    revert,
)

GROUP_DIMS = [5, 3, 7, 2, 9, 4, 6]  # 7 groups -> T = 8 for tokenmixer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _groups(batch: int, dims: list[int] = GROUP_DIMS) -> list[Tensor]:
    return [torch.randn(batch, d) for d in dims]


def _changed_tokens(f: nn.Module, x: Tensor, t: int) -> Tensor:
    """Bool [T]: which output tokens change (any sample, any feature) when input token t is perturbed."""
    with torch.no_grad():
        x2 = x.clone()
        x2[:, t] += torch.randn_like(x2[:, t])
        return (f(x2) - f(x)).abs().amax(dim=(0, 2)) > 0


# =============================================================================
# mix / revert
# =============================================================================


@pytest.mark.parametrize("b,t,d", [(2, 8, 64), (3, 5, 12), (1, 16, 48), (4, 3, 10)])
def test_revert_inverts_mix_for_every_divisor(b: int, t: int, d: int) -> None:
    x = torch.randn(b, t, d)
    for h in [h for h in range(1, d + 1) if d % h == 0]:
        m = mix(x, h)
        assert m.shape == (b, h, t * d // h)
        assert torch.equal(revert(m, t), x)


@pytest.mark.parametrize("t,d,h", [(8, 64, 8), (5, 12, 3), (4, 12, 6), (3, 10, 2)])
def test_mixed_token_h_slice_t_is_head_h_of_token_t(t: int, d: int, h: int) -> None:
    x = torch.randn(2, t, d)
    m = mix(x, h)
    w = d // h
    for hh in range(h):
        for tt in range(t):
            assert torch.equal(m[:, hh, tt * w:(tt + 1) * w], x[:, tt, hh * w:(hh + 1) * w])
    # every mixed token depends on every original token
    for tt in range(t):
        x2 = x.clone()
        x2[:, tt] += 1.0
        assert ((mix(x2, h) - m).abs().amax(dim=(0, 2)) > 0).all()


def test_mix_with_h_equal_t_is_an_involution() -> None:
    for t, d in [(8, 64), (4, 12), (16, 48)]:
        x = torch.randn(3, t, d)
        assert mix(x, t).shape == x.shape
        assert torch.equal(mix(mix(x, t), t), x)
        assert not torch.equal(mix(x, t), x)


def test_mix_rejects_bad_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        mix(torch.randn(2, 4, 10), 3)
    with pytest.raises(ValueError, match="divisible"):
        revert(torch.randn(2, 3, 10), 4)


# =============================================================================
# Per-token FFNs
# =============================================================================


def _swiglu_loop(m: PerTokenSwiGLU, x: Tensor) -> Tensor:
    """Reference: explicit loop over tokens (tests only)."""
    out = []
    for t in range(x.shape[1]):
        wi = 0 if m.shared else t
        h = F.silu(x[:, t] @ m.w_gate[wi]) * (x[:, t] @ m.w_up[wi])
        out.append(h @ m.w_down[wi])
    return torch.stack(out, dim=1)


def _ffn_loop(m: PerTokenFFN, x: Tensor) -> Tensor:
    out = []
    for t in range(x.shape[1]):
        wi = 0 if m.shared else t
        h = F.gelu(x[:, t] @ m.w1[wi] + m.b1[wi])
        out.append(h @ m.w2[wi] + m.b2[wi])
    return torch.stack(out, dim=1)


def _scale_up_down(m: nn.Module) -> nn.Module:
    """Undo the small W_down init so outputs are O(1) (makes equality checks meaningful)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("w_down"):
                p.mul_(100.0)
    return m


@pytest.mark.parametrize("shared", [False, True])
def test_einsum_matches_per_token_loop(shared: bool) -> None:
    x = torch.randn(4, 6, 16)
    sw = _scale_up_down(PerTokenSwiGLU(6, 16, 32, shared=shared))
    torch.testing.assert_close(sw(x), _swiglu_loop(sw, x))
    ffn = PerTokenFFN(6, 16, 32, shared=shared)
    with torch.no_grad():
        ffn.b1.normal_()
        ffn.b2.normal_()
    torch.testing.assert_close(ffn(x), _ffn_loop(ffn, x))


def test_weight_shapes_and_no_bias() -> None:
    sw = PerTokenSwiGLU(6, 16, 32)
    assert {n: tuple(p.shape) for n, p in sw.named_parameters()} == {
        "w_gate": (6, 16, 32), "w_up": (6, 16, 32), "w_down": (6, 32, 16)}
    shared = PerTokenSwiGLU(6, 16, 32, shared=True)
    assert sum(p.numel() for p in shared.parameters()) * 6 == sum(p.numel() for p in sw.parameters())
    ffn = PerTokenFFN(6, 16, 32)
    assert {n: tuple(p.shape) for n, p in ffn.named_parameters()} == {
        "w1": (6, 16, 32), "b1": (6, 32), "w2": (6, 32, 16), "b2": (6, 16)}


@pytest.mark.parametrize("make", [lambda: _scale_up_down(PerTokenSwiGLU(5, 8, 16)), lambda: PerTokenFFN(5, 8, 16)])
def test_per_token_outputs_depend_only_on_own_token(make) -> None:
    m = make()
    x = torch.randn(3, 5, 8)
    for t in range(5):
        changed = _changed_tokens(m, x, t)
        assert changed.tolist() == [i == t for i in range(5)]


@pytest.mark.parametrize("make", [lambda: _scale_up_down(PerTokenSwiGLU(5, 8, 16)), lambda: PerTokenFFN(5, 8, 16)])
def test_gradient_of_token_output_wrt_other_tokens_weights_is_zero(make) -> None:
    m = make()
    x = torch.randn(3, 5, 8)
    t = 2
    m(x)[:, t].pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        others = torch.cat([p.grad[:t], p.grad[t + 1:]])
        assert torch.count_nonzero(others) == 0, name
        assert torch.count_nonzero(p.grad[t]) > 0, name


@pytest.mark.parametrize("cls", [PerTokenSwiGLU, PerTokenFFN])
def test_shared_applies_the_same_function_to_every_token(cls) -> None:
    x = torch.randn(3, 5, 8)
    x[:, 3] = x[:, 1]
    shared = _scale_up_down(cls(5, 8, 16, shared=True))
    y = shared(x)
    torch.testing.assert_close(y[:, 3], y[:, 1], rtol=0, atol=0)
    per_token = _scale_up_down(cls(5, 8, 16))
    y = per_token(x)
    assert not torch.allclose(y[:, 3], y[:, 1])


def test_down_projection_init_is_one_percent_of_xavier() -> None:
    d, f = 64, 128
    m = PerTokenSwiGLU(8, d, f)
    xavier_std = math.sqrt(2.0 / (d + f))
    assert m.w_gate.std().item() == pytest.approx(xavier_std, rel=0.05)
    assert m.w_up.std().item() == pytest.approx(xavier_std, rel=0.05)
    assert m.w_down.std().item() == pytest.approx(0.01 * xavier_std, rel=0.05)
    moe = SparsePerTokenMoE(8, d, f, n_experts=4)
    assert moe.w_down.std().item() == pytest.approx(0.01 * math.sqrt(2.0 / (d + f // 4)), rel=0.05)


# =============================================================================
# Sparse per-token MoE
# =============================================================================


def _expert(m: SparsePerTokenMoE, wi: int, e: int, xt: Tensor) -> Tensor:
    """Expert e of token-weights wi applied to one [D] vector."""
    return (F.silu(xt @ m.w_gate[wi, e]) * (xt @ m.w_up[wi, e])) @ m.w_down[wi, e]


def _moe_reference(m: SparsePerTokenMoE, x: Tensor) -> Tensor:
    """Loop reference: per (sample, token) compute only the shared expert and the selected experts."""
    b, t_, _ = x.shape
    out = torch.zeros_like(x)
    for b_i in range(b):
        for t in range(t_):
            wi = 0 if m.shared else t
            xt = x[b_i, t]
            logits = xt @ m.w_router[wi]
            top = logits.topk(m.top_k - 1)
            gates = (torch.softmax(top.values, -1) if m.gate_softmax == "topk"
                     else torch.softmax(logits, -1)[top.indices])
            routed = sum(g * _expert(m, wi, int(e) + 1, xt) for g, e in zip(gates, top.indices, strict=True))
            out[b_i, t] = _expert(m, wi, 0, xt) + m.gate_scale * routed
    return out


@pytest.mark.parametrize("top_k,gate_softmax,shared", [(2, "topk", False), (3, "topk", False),
                                                       (3, "all", False), (2, "all", True)])
def test_moe_matches_sparse_reference(top_k: int, gate_softmax: str, shared: bool) -> None:
    m = _scale_up_down(SparsePerTokenMoE(4, 8, 32, n_experts=4, top_k=top_k, gate_softmax=gate_softmax,
                                         shared=shared))
    x = torch.randn(5, 4, 8)
    torch.testing.assert_close(m(x), _moe_reference(m, x))


@pytest.mark.parametrize("n_experts,top_k", [(4, 2), (4, 3), (4, 4), (6, 3)])
def test_moe_routes_exactly_top_k_minus_one_experts_and_util_sums_to_one(n_experts: int, top_k: int) -> None:
    m = SparsePerTokenMoE(5, 8, 8 * n_experts, n_experts=n_experts, top_k=top_k)
    x = torch.randn(64, 5, 8)
    gates = m.route(x)
    assert gates.shape == (64, 5, n_experts - 1)
    assert ((gates != 0).sum(-1) == top_k - 1).all()
    m(x)
    util = m.last_util
    assert util is not None and util.shape == (5, n_experts - 1) and not util.requires_grad
    torch.testing.assert_close(util.sum(-1), torch.ones(5))
    expected = (gates != 0).float().mean(0) / (top_k - 1)
    torch.testing.assert_close(util, expected)


def test_moe_unselected_experts_do_not_affect_output() -> None:
    m = _scale_up_down(SparsePerTokenMoE(3, 8, 32, n_experts=4, top_k=2))
    x = torch.randn(16, 3, 8)
    y = m(x)
    gates = m.route(x)
    # for sample 0 / token 1, scramble every routed expert that was not selected
    unselected = (gates[0, 1] == 0).nonzero().flatten() + 1
    with torch.no_grad():
        for e in unselected.tolist():
            m.w_down[1, e].normal_()
    torch.testing.assert_close(m(x)[0, 1], y[0, 1])


def test_moe_shared_expert_always_on_and_gate_scale_multiplies_routed() -> None:
    m1 = _scale_up_down(SparsePerTokenMoE(3, 8, 32, n_experts=4, top_k=2, gate_scale=1.0))
    m2 = SparsePerTokenMoE(3, 8, 32, n_experts=4, top_k=2, gate_scale=2.0)
    m2.load_state_dict(m1.state_dict())
    x = torch.randn(16, 3, 8)
    # shared expert (expert 0) as an explicit per-token SwiGLU
    sw = PerTokenSwiGLU(3, 8, 8)
    with torch.no_grad():
        sw.w_gate.copy_(m1.w_gate[:, 0])
        sw.w_up.copy_(m1.w_up[:, 0])
        sw.w_down.copy_(m1.w_down[:, 0])
    shared_out = sw(x)
    assert (shared_out.abs().amax(-1) > 0).all()  # on for every (sample, token)
    routed1 = m1(x) - shared_out
    routed2 = m2(x) - shared_out
    assert routed1.abs().amax() > 1e-3
    torch.testing.assert_close(routed2, 2.0 * routed1)
    # zeroing the routed experts leaves exactly the shared expert
    with torch.no_grad():
        m1.w_down[:, 1:].zero_()
    torch.testing.assert_close(m1(x), shared_out)


def test_moe_same_routing_in_train_and_eval() -> None:
    m = SparsePerTokenMoE(3, 8, 32, n_experts=4, top_k=3)
    x = torch.randn(16, 3, 8)
    m.train()
    g_train, y_train = m.route(x), m(x)
    m.eval()
    g_eval, y_eval = m.route(x), m(x)
    assert torch.equal(g_train, g_eval)
    assert torch.equal(y_train, y_eval)


def test_moe_router_gradient() -> None:
    x = torch.randn(16, 3, 8)
    # top_k=2 with softmax over the selected logit only: gate == 1, router gets no gradient (documented)
    m = SparsePerTokenMoE(3, 8, 32, top_k=2, gate_softmax="topk")
    m(x).pow(2).sum().backward()
    assert m.w_router.grad is not None and torch.count_nonzero(m.w_router.grad) == 0
    for top_k, gs in [(2, "all"), (3, "topk")]:
        m = SparsePerTokenMoE(3, 8, 32, top_k=top_k, gate_softmax=gs)
        m(x).pow(2).sum().backward()
        assert m.w_router.grad is not None and m.w_router.grad.abs().sum() > 0


def test_moe_validation() -> None:
    with pytest.raises(ValueError, match="top_k"):
        SparsePerTokenMoE(3, 8, 32, n_experts=4, top_k=5)
    with pytest.raises(ValueError, match="top_k"):
        SparsePerTokenMoE(3, 8, 32, n_experts=4, top_k=1)
    with pytest.raises(ValueError, match="divisible by n_experts"):
        SparsePerTokenMoE(3, 8, 30, n_experts=4)
    with pytest.raises(ValueError, match="n_experts"):
        SparsePerTokenMoE(3, 8, 32, n_experts=1, top_k=1)


# =============================================================================
# Blocks
# =============================================================================


@pytest.mark.parametrize("moe", [False, True])
def test_tml_block_is_near_identity_at_init(moe: bool) -> None:
    x = torch.randn(32, 8, 64)
    small = TokenMixerLargeBlock(8, 64, 4, 2, moe=moe)
    rel_small = ((small(x) - x).norm() / x.norm()).item()
    big = TokenMixerLargeBlock(8, 64, 4, 2, moe=moe, down_init_scale=1.0)
    rel_big = ((big(x) - x).norm() / x.norm()).item()
    assert rel_small < 0.05
    assert rel_big > 10 * rel_small


@pytest.mark.parametrize("moe", [False, True])
def test_tml_block_residual_goes_to_original_x(moe: bool) -> None:
    blk = _scale_up_down(TokenMixerLargeBlock(6, 12, 4, 2, moe=moe))
    x = torch.randn(4, 6, 12)
    with torch.no_grad():
        blk.ffn_rev.w_down.zero_()  # FFN_rev == 0, FFN_mix stays non-zero
    assert torch.equal(blk(x), x)
    with torch.no_grad():
        blk.ffn_mix.w_down.zero_()
    assert torch.equal(blk(x), x)


def test_tml_block_matches_equations() -> None:
    blk = _scale_up_down(TokenMixerLargeBlock(6, 12, 4, 2))
    x = torch.randn(4, 6, 12)
    hm = mix(x, 4)
    hm2 = blk.ffn_mix(blk.norm_mix(hm)) + hm
    expected = blk.ffn_rev(blk.norm_rev(revert(hm2, 6))) + x
    torch.testing.assert_close(blk(x), expected)
    assert blk.ffn_mix.w_gate.shape == (4, 6 * 12 // 4, 2 * 6 * 12 // 4)  # H head-tokens of width T*D/H
    assert blk.ffn_rev.w_gate.shape == (6, 12, 24)


@pytest.mark.parametrize("moe", [False, True])
def test_tml_block_mixing_flag_controls_cross_token_flow(moe: bool) -> None:
    x = torch.randn(4, 6, 12)
    no_mix = _scale_up_down(TokenMixerLargeBlock(6, 12, 4, 2, moe=moe, mixing=False))
    assert no_mix.ffn_mix.w_gate.shape[:1] == (6,)  # FFN_mix acts on the T original tokens
    with_mix = _scale_up_down(TokenMixerLargeBlock(6, 12, 4, 2, moe=moe, mixing=True))
    for t in range(6):
        assert _changed_tokens(no_mix, x, t).tolist() == [i == t for i in range(6)]
        assert _changed_tokens(with_mix, x, t).all()


def test_tml_block_rejects_bad_heads() -> None:
    with pytest.raises(ValueError, match="divisible by heads"):
        TokenMixerLargeBlock(6, 12, 5, 2)


def test_rankmixer_block_post_ln_and_mixing() -> None:
    x = torch.randn(4, 8, 16)
    blk = RankMixerBlock(8, 16, 2)
    y = blk(x)
    assert y.shape == x.shape
    # Post-LN: every output token is layer-normalised (affine is identity at init)
    torch.testing.assert_close(y.mean(-1), torch.zeros(4, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(4, 8), atol=1e-3, rtol=0)
    s = blk.norm_mix(mix(x, 8) + x)
    torch.testing.assert_close(y, blk.norm_ffn(blk.ffn(s) + s))
    no_mix = RankMixerBlock(8, 16, 2, mixing=False)
    for t in range(8):
        assert _changed_tokens(blk, x, t).all()
        assert _changed_tokens(no_mix, x, t).tolist() == [i == t for i in range(8)]
    assert RankMixerBlock(8, 16, 2, per_token=False).ffn.w1.shape == (1, 16, 32)
    with pytest.raises(ValueError, match="divisible by n_tokens"):
        RankMixerBlock(6, 16, 2)


# =============================================================================
# Tokenizers
# =============================================================================


def test_group_tokenizer_global_token_first_and_per_group_tokens() -> None:
    tok = GroupTokenizer(GROUP_DIMS, 16)
    groups = _groups(3)
    base = tok(groups)
    assert base.shape == (3, len(GROUP_DIMS) + 1, 16)
    for g in range(len(GROUP_DIMS)):
        groups2 = [x.clone() for x in groups]
        groups2[g] += 1.0
        changed = (tok(groups2) - base).abs().amax(dim=(0, 2)) > 0
        assert changed.tolist() == [i in (0, g + 1) for i in range(len(GROUP_DIMS) + 1)]


def test_cross_global_token_is_a_dcn_cross_layer_then_a_projection() -> None:
    torch.manual_seed(0)
    d0 = sum(GROUP_DIMS)
    token = CrossGlobalToken(d0, 16)
    x0 = torch.randn(4, d0)
    w, b = token.cross.proj.weight, token.cross.proj.bias
    expected = (x0 * (x0 @ w.T + b) + x0) @ token.proj.weight.T + token.proj.bias
    torch.testing.assert_close(token(x0), expected)
    # second order in the raw features: f(2x) - 2 f(x) + f(0) = 2 * P(x * Wx), which an MLP token has no term for
    quad = token(2 * x0) - 2 * token(x0) + token(torch.zeros_like(x0))
    torch.testing.assert_close(quad, 2 * (x0 * (x0 @ w.T)) @ token.proj.weight.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("global_token", ["mlp", "cross"])
def test_group_tokenizer_global_token_kind(global_token: str) -> None:
    tok = GroupTokenizer(GROUP_DIMS, 16, global_token)  # type: ignore[arg-type]
    assert isinstance(tok.global_mlp, CrossGlobalToken) == (global_token == "cross")
    assert tok(_groups(3)).shape == (3, len(GROUP_DIMS) + 1, 16)
    model = MixerBackbone(GROUP_DIMS, MixerConfig(n_tokens=8, dim=16, heads=4, global_token=global_token))
    assert isinstance(model.tokenizer.global_mlp, CrossGlobalToken) == (global_token == "cross")


def test_chunk_tokenizer_pads_and_chunks_the_concatenation() -> None:
    dims = [3, 5, 7]  # 15 features, T = 4 -> padded to 16, chunks of 4
    tok = ChunkTokenizer(dims, 4, 16)
    assert tok.chunk == 4 and tok.pad == 1
    groups = _groups(2, dims)
    base = tok(groups)
    assert base.shape == (2, 4, 16)
    flat = torch.cat(groups, dim=1)
    for j in range(15):
        flat2 = flat.clone()
        flat2[:, j] += 1.0
        changed = (tok(list(flat2.split(dims, dim=1))) - base).abs().amax(dim=(0, 2)) > 0
        assert changed.tolist() == [i == j // 4 for i in range(4)]
    # per-token Linear(chunk, D) as one einsum
    padded = F.pad(flat, (0, 1)).reshape(2, 4, 4)
    expected = torch.stack([padded[:, t] @ tok.weight[t] + tok.bias[t] for t in range(4)], dim=1)
    torch.testing.assert_close(base, expected)


# =============================================================================
# Backbone
# =============================================================================


def _last_block_tokens(model: MixerBackbone, groups: list[Tensor]) -> tuple[BackboneOutput, Tensor]:
    captured: list[Tensor] = []
    handle = model.blocks[-1].register_forward_hook(lambda _m, _i, out: captured.append(out))
    out = model(groups)
    handle.remove()
    return out, captured[0]


@pytest.mark.parametrize("cfg", [
    MixerConfig(),
    MixerConfig(moe=True),
    MixerConfig(heads=4, mixing=False, per_token=False),
    MixerConfig(kind="rankmixer", n_tokens=4, dim=32),
    MixerConfig(kind="rankmixer", mixing=False, per_token=False),
])
def test_backbone_shapes_and_mean_pool(cfg: MixerConfig) -> None:
    model = MixerBackbone(GROUP_DIMS, cfg)
    assert model.out_dim == cfg.dim
    out, tokens = _last_block_tokens(model, _groups(5))
    assert isinstance(out, BackboneOutput)
    assert out.hidden.shape == (5, cfg.dim)
    assert tokens.shape == (5, cfg.n_tokens, cfg.dim)
    torch.testing.assert_close(out.hidden, tokens.mean(dim=1))
    assert not torch.allclose(out.hidden, tokens[:, 0])  # not the global token
    assert out.aux == []
    if cfg.moe:
        util = out.stats["expert_util"]
        assert util.shape == (cfg.n_tokens, cfg.n_experts - 1) and not util.requires_grad
        torch.testing.assert_close(util.sum(-1), torch.ones(cfg.n_tokens))
        assert out.stats["expert_util_mix"].shape == (cfg.heads, cfg.n_experts - 1)
    else:
        assert out.stats == {}


@pytest.mark.parametrize("layers,every,expected", [(4, 2, [2]), (5, 2, [2, 4]), (3, 1, [1, 2]), (6, 3, [3]),
                                                    (2, 2, [])])
def test_inter_residual_layers_never_include_last(layers: int, every: int, expected: list[int]) -> None:
    cfg = MixerConfig(layers=layers, inter_residual_every=every, aux_loss=True)
    assert cfg.skip_layers() == expected
    out = MixerBackbone(GROUP_DIMS, cfg)(_groups(3))
    assert len(out.aux) == len(expected)
    assert all(a.shape == (3, cfg.dim) for a in out.aux)


@pytest.mark.parametrize("kind", ["tokenmixer", "rankmixer"])
def test_inter_residual_and_aux_values(kind: str) -> None:
    cfg = MixerConfig(kind=kind, layers=4, inter_residual_every=2, aux_loss=True)
    model = _scale_up_down(MixerBackbone(GROUP_DIMS, cfg))
    outs: dict[str, Tensor] = {}
    model.tokenizer.register_forward_hook(lambda _m, _i, o: outs.__setitem__("x0", o))
    for i, blk in enumerate(model.blocks, start=1):
        blk.register_forward_hook(lambda _m, _i, o, i=i: outs.__setitem__(f"b{i}", o))
    blk3_inputs: list[Tensor] = []
    model.blocks[2].register_forward_pre_hook(lambda _m, args: blk3_inputs.append(args[0]))
    out = model(_groups(3))
    x2 = outs["b2"] + outs["x0"]  # layer 2 receives the skip from layer 0 (the tokens)
    torch.testing.assert_close(blk3_inputs[0], x2)
    torch.testing.assert_close(out.aux[0], x2.mean(dim=1))
    torch.testing.assert_close(out.hidden, outs["b4"].mean(dim=1))  # nothing added into the last layer
    assert len(MixerBackbone(GROUP_DIMS, MixerConfig(layers=4, inter_residual_every=2))(_groups(3)).aux) == 0


@pytest.mark.parametrize("cfg", [MixerConfig(dim=16, heads=4, layers=2),
                                 MixerConfig(dim=16, heads=4, layers=2, moe=True, gate_softmax="all"),
                                 MixerConfig(kind="rankmixer", dim=16, layers=2)])
def test_a_few_adam_steps_reduce_the_loss(cfg: MixerConfig) -> None:
    groups = _groups(64)
    y = (groups[0][:, 0] * groups[1][:, 0] + groups[2][:, :3].sum(1) - groups[4][:, 1] ** 2).unsqueeze(1)
    model = MixerBackbone(GROUP_DIMS, cfg)
    head = nn.Linear(cfg.dim, 1)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(head(model(groups).hidden), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_backbone_rejects_bad_groups() -> None:
    model = MixerBackbone(GROUP_DIMS, MixerConfig())
    groups = _groups(2)
    groups[3] = torch.randn(2, GROUP_DIMS[3] + 1)
    with pytest.raises(ValueError, match="feature group 3"):
        model(groups)
    with pytest.raises(ValueError, match="expected 7 feature groups"):
        model(_groups(2)[:-1])


def test_config_and_backbone_validation() -> None:
    with pytest.raises(ValueError, match="divisible by heads"):
        MixerConfig(dim=60, heads=8)
    with pytest.raises(ValueError, match="top_k"):
        MixerConfig(moe=True, n_experts=4, top_k=5)
    with pytest.raises(ValueError, match="divisible by n_tokens"):
        MixerConfig(kind="rankmixer", n_tokens=6, dim=64)
    with pytest.raises(ValueError, match="only implemented for kind='tokenmixer'"):
        MixerConfig(kind="rankmixer", moe=True)
    with pytest.raises(ValueError, match="aux_loss"):
        MixerConfig(aux_loss=True)
    with pytest.raises(ValueError, match="kind"):
        MixerConfig(kind="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="global_token must be 'mlp' or 'cross'"):
        MixerConfig(global_token="attention")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="T = 6 \\+ 1 = 7"):
        MixerBackbone(GROUP_DIMS[:6], MixerConfig(n_tokens=8))
    with pytest.raises(ValueError, match="feature group 2"):
        MixerBackbone([4, 4, 0], MixerConfig(kind="rankmixer"))
