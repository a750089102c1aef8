"""Tests for the CTR baselines (DNN, DCN-V2, DeepFM, Wide&Deep) on the shared feature groups."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from models.ranking.backbone import Backbone
from models.ranking.baselines import (
    CrossLayerV2,
    DCNv2Backbone,
    DCNv2Config,
    DeepFMBackbone,
    DeepFMConfig,
    DNNBackbone,
    DNNConfig,
    WideDeepBackbone,
    WideDeepConfig,
)

GROUP_DIMS = [4, 4, 3]
D0 = sum(GROUP_DIMS)
SMALL = (32, 16)


def make_groups(batch: int, dims: list[int] = GROUP_DIMS, seed: int = 0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, d, generator=gen) for d in dims]


def all_models() -> dict[str, Callable[[], Backbone]]:
    """Small instances of every backbone and config variant."""
    return {
        "dnn": lambda: DNNBackbone(GROUP_DIMS, DNNConfig(hidden_dims=SMALL)),
        "dcn_parallel": lambda: DCNv2Backbone(GROUP_DIMS, DCNv2Config(hidden_dims=SMALL)),
        "dcn_stacked": lambda: DCNv2Backbone(GROUP_DIMS, DCNv2Config(hidden_dims=SMALL, structure="stacked")),
        "dcn_lowrank": lambda: DCNv2Backbone(GROUP_DIMS, DCNv2Config(hidden_dims=SMALL, rank=2)),
        "deepfm": lambda: DeepFMBackbone(GROUP_DIMS, DeepFMConfig(field_dim=4, hidden_dims=SMALL)),
        "widedeep": lambda: WideDeepBackbone(GROUP_DIMS, WideDeepConfig(hidden_dims=SMALL)),
    }


MODEL_NAMES = list(all_models())


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# =============================================================================
# Shapes and out_dim
# =============================================================================


@pytest.mark.parametrize(
    ("name", "expected_out_dim"),
    [
        ("dnn", 16),
        ("dcn_parallel", D0 + 16),
        ("dcn_stacked", 16),
        ("dcn_lowrank", D0 + 16),
        ("deepfm", 16 + 2),
        ("widedeep", 16 + 1),
    ],
)
def test_output_shape_and_out_dim(name: str, expected_out_dim: int) -> None:
    model = all_models()[name]()
    assert model.out_dim == expected_out_dim
    out = model(make_groups(5))
    assert out.hidden.shape == (5, expected_out_dim)
    assert out.hidden.dtype == torch.float32
    assert out.aux == [] and out.stats == {}


def test_default_configs_out_dim() -> None:
    dims = [8, 16, 4]
    assert DNNBackbone(dims, DNNConfig()).out_dim == 128
    assert DCNv2Backbone(dims, DCNv2Config()).out_dim == 28 + 128
    assert DCNv2Backbone(dims, DCNv2Config(structure="stacked")).out_dim == 128
    assert DeepFMBackbone(dims, DeepFMConfig()).out_dim == 130
    assert WideDeepBackbone(dims, WideDeepConfig()).out_dim == 129
    assert WideDeepBackbone(dims, WideDeepConfig(wide_dim=3)).out_dim == 131
    fm = DeepFMBackbone(dims, DeepFMConfig())
    assert fm.field_embeddings(make_groups(2, dims)).shape == (2, 3, 16)


def test_low_rank_cross_layer_has_fewer_parameters() -> None:
    full = CrossLayerV2(64)
    low = CrossLayerV2(64, rank=4)
    assert sum(p.numel() for p in full.parameters()) == 64 * 64 + 64
    assert sum(p.numel() for p in low.parameters()) == 2 * 64 * 4 + 64


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_parameter_receives_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = all_models()[name]()
    model(make_groups(8)).hidden.pow(2).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} is not used in forward"
        assert torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0, f"{name}: parameter {pname} got an all-zero gradient"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_samples_are_independent(name: str) -> None:
    """Row i of hidden depends only on row i of the inputs (no cross-sample mixing)."""
    torch.manual_seed(0)
    model = all_models()[name]().eval()
    groups = make_groups(6)
    full = model(groups).hidden
    single = torch.cat([model([g[i : i + 1] for g in groups]).hidden for i in range(6)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-6)


def test_dropout_is_active_in_train_only() -> None:
    torch.manual_seed(0)
    model = DNNBackbone(GROUP_DIMS, DNNConfig(hidden_dims=SMALL, dropout=0.5))
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    groups = make_groups(16)
    model.train()
    assert not torch.equal(model(groups).hidden, model(groups).hidden)
    model.eval()
    torch.testing.assert_close(model(groups).hidden, model(groups).hidden, rtol=0, atol=0)


# =============================================================================
# DCN-V2 cross layer
# =============================================================================


def test_cross_layer_matches_hand_computed_example() -> None:
    layer = CrossLayerV2(2)
    assert isinstance(layer.proj, nn.Linear)
    with torch.no_grad():
        layer.proj.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        layer.proj.bias.copy_(torch.tensor([0.5, -1.0]))
    x0 = torch.tensor([[1.0, 2.0]])
    xl = torch.tensor([[1.0, -1.0]])
    # W xl + b = [1 - 2 + 0.5, 3 - 4 - 1] = [-0.5, -2]; x0 * that = [-0.5, -4]; + xl = [0.5, -5]
    torch.testing.assert_close(layer(x0, xl), torch.tensor([[0.5, -5.0]]))
    # x_l = x0 (first layer): W x0 + b = [5.5, 10]; x0 * that = [5.5, 20]; + x0 = [6.5, 22]
    torch.testing.assert_close(layer(x0, x0), torch.tensor([[6.5, 22.0]]))


def test_low_rank_cross_layer_equals_full_rank_with_w_equal_u_vt() -> None:
    torch.manual_seed(0)
    dim, rank = 5, 2
    low = CrossLayerV2(dim, rank=rank)
    assert isinstance(low.proj, nn.Sequential)
    vt, u = low.proj[0].weight, low.proj[1].weight  # [rank, dim], [dim, rank]
    assert vt.shape == (rank, dim) and u.shape == (dim, rank)
    full = CrossLayerV2(dim)
    with torch.no_grad():
        full.proj.weight.copy_(u @ vt)
        full.proj.bias.copy_(low.proj[1].bias)
    x0, xl = torch.randn(4, dim), torch.randn(4, dim)
    torch.testing.assert_close(low(x0, xl), full(x0, xl))
    expected = x0 * (xl @ (u @ vt).T + low.proj[1].bias) + xl
    torch.testing.assert_close(low(x0, xl), expected)


@pytest.mark.parametrize("rank", [None, 3])
def test_cross_network_with_zero_weights_returns_x0(rank: int | None) -> None:
    model = DCNv2Backbone(GROUP_DIMS, DCNv2Config(hidden_dims=SMALL, rank=rank))
    with torch.no_grad():
        for layer in model.cross:
            for p in layer.parameters():
                p.zero_()
    groups = make_groups(4)
    x0 = torch.cat(groups, dim=1)
    torch.testing.assert_close(model.cross_network(x0), x0)
    # parallel layout: the first D0 columns of hidden are the cross output, the rest the deep output
    hidden = model(groups).hidden
    torch.testing.assert_close(hidden[:, :D0], x0)
    torch.testing.assert_close(hidden[:, D0:], model.deep(x0))


def test_cross_network_chains_layers_with_the_same_x0() -> None:
    torch.manual_seed(0)
    model = DCNv2Backbone(GROUP_DIMS, DCNv2Config(hidden_dims=SMALL, cross_layers=2))
    x0 = torch.cat(make_groups(3), dim=1)
    l0, l1 = model.cross[0].proj, model.cross[1].proj
    x1 = x0 * l0(x0) + x0
    x2 = x0 * l1(x1) + x1
    torch.testing.assert_close(model.cross_network(x0), x2)


def test_stacked_dcn_applies_deep_on_cross_output() -> None:
    torch.manual_seed(0)
    model = DCNv2Backbone(GROUP_DIMS, DCNv2Config(hidden_dims=SMALL, structure="stacked"))
    groups = make_groups(4)
    expected = model.deep(model.cross_network(torch.cat(groups, dim=1)))
    torch.testing.assert_close(model(groups).hidden, expected)


# =============================================================================
# DeepFM
# =============================================================================


@pytest.mark.parametrize(("num_fields", "k"), [(2, 1), (3, 4), (7, 16)])
def test_fm_second_order_equals_brute_force_pairwise_sum(num_fields: int, k: int) -> None:
    torch.manual_seed(num_fields)
    v = torch.randn(5, num_fields, k, dtype=torch.float64)
    brute = torch.zeros(5, 1, dtype=torch.float64)
    for i, j in itertools.combinations(range(num_fields), 2):
        brute += (v[:, i] * v[:, j]).sum(dim=1, keepdim=True)
    got = DeepFMBackbone.fm_second_order(v)
    assert got.shape == (5, 1)
    torch.testing.assert_close(got, brute)


def test_fm_second_order_of_a_single_field_is_zero() -> None:
    torch.testing.assert_close(DeepFMBackbone.fm_second_order(torch.randn(3, 1, 8)), torch.zeros(3, 1))


def test_deepfm_hidden_layout() -> None:
    torch.manual_seed(0)
    model = DeepFMBackbone(GROUP_DIMS, DeepFMConfig(field_dim=4, hidden_dims=SMALL))
    groups = make_groups(6)
    hidden = model(groups).hidden
    v = torch.stack([model.field_proj[g](groups[g]) for g in range(len(GROUP_DIMS))], dim=1)  # [B, G, k]
    torch.testing.assert_close(model.field_embeddings(groups), v)
    torch.testing.assert_close(hidden[:, :16], model.deep(v.flatten(1)))
    torch.testing.assert_close(hidden[:, 16:17], DeepFMBackbone.fm_second_order(v))
    torch.testing.assert_close(hidden[:, 17:18], torch.cat(groups, dim=1) @ model.first_order.weight.T)


# =============================================================================
# Wide & Deep
# =============================================================================


def test_wide_part_is_linear() -> None:
    torch.manual_seed(0)
    model = WideDeepBackbone(GROUP_DIMS, WideDeepConfig(hidden_dims=SMALL, wide_dim=2))
    a, b = make_groups(8, seed=1), make_groups(8, seed=2)
    zero = [torch.zeros_like(g) for g in a]
    a_plus_b = [x + y for x, y in zip(a, b)]
    residual = model.wide_part(a_plus_b) - model.wide_part(b) - model.wide_part(a) + model.wide_part(zero)
    torch.testing.assert_close(residual, torch.zeros(8, 2), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.wide_part([3.0 * g for g in a]), 3.0 * model.wide_part(a))


def test_widedeep_hidden_layout() -> None:
    torch.manual_seed(0)
    model = WideDeepBackbone(GROUP_DIMS, WideDeepConfig(hidden_dims=SMALL))
    groups = make_groups(6)
    hidden = model(groups).hidden
    torch.testing.assert_close(hidden[:, :16], model.deep(torch.cat(groups, dim=1)))
    torch.testing.assert_close(hidden[:, 16:], model.wide_part(groups))


# =============================================================================
# Learning a multiplicative interaction
# =============================================================================


def interaction_task(n: int = 256, seed: int = 0) -> tuple[list[Tensor], Tensor]:
    """label = 1[(w . g0) * (u . g1) > 0]: an XOR of two group projections; group 2 is noise. No linear model over
    the concatenated groups does better than chance."""
    gen = torch.Generator().manual_seed(seed)
    groups = [torch.randn(n, d, generator=gen) for d in GROUP_DIMS]
    w, u = torch.randn(GROUP_DIMS[0], generator=gen), torch.randn(GROUP_DIMS[1], generator=gen)
    labels = ((groups[0] @ w) * (groups[1] @ u) > 0).float()
    return groups, labels


def train_with_linear_head(model: Backbone, columns: slice = slice(None), steps: int = 150) -> tuple[float, float]:
    """Full-batch Adam on the interaction task with a Linear head on ``hidden[:, columns]``; returns the first and
    the last training loss."""
    groups, labels = interaction_task()
    torch.manual_seed(0)
    width = len(range(model.out_dim)[columns])
    head = nn.Linear(width, 1)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    losses: list[float] = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(head(model(groups).hidden[:, columns]).squeeze(1), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.fixture(scope="module")
def linear_model_loss() -> float:
    """A pure linear model: Wide&Deep's wide column alone (linear over the concatenated groups)."""
    torch.manual_seed(0)
    model = WideDeepBackbone(GROUP_DIMS, WideDeepConfig(hidden_dims=(1,)))
    _, last = train_with_linear_head(model, columns=slice(-1, None))
    assert last > 0.6  # chance level is ln 2 = 0.693: the task is not linearly separable
    return last


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_fits_the_interaction_task(name: str, linear_model_loss: float) -> None:
    torch.manual_seed(0)
    first, last = train_with_linear_head(all_models()[name]())
    assert first > 0.6
    assert last < 0.1 * first, f"{name}: training loss went from {first:.3f} to only {last:.3f}"
    assert last < linear_model_loss - 0.5


def test_dcn_cross_network_alone_learns_the_interaction(linear_model_loss: float) -> None:
    """Head on the cross columns only (no deep part): one cross layer already holds the x0_i * (W x0)_i products."""
    torch.manual_seed(0)
    model = DCNv2Backbone(GROUP_DIMS, DCNv2Config(cross_layers=1, hidden_dims=(8,)))
    _, last = train_with_linear_head(model, columns=slice(0, D0))
    assert last < 0.25 < linear_model_loss - 0.3


def test_deepfm_fm_part_alone_learns_the_interaction(linear_model_loss: float) -> None:
    """Head on the two FM columns only (no deep part): <v_0, v_1> expresses the product of the projections."""
    torch.manual_seed(0)
    model = DeepFMBackbone(GROUP_DIMS, DeepFMConfig(field_dim=4, hidden_dims=(8,)))
    _, last = train_with_linear_head(model, columns=slice(-2, None))
    assert last < 0.25 < linear_model_loss - 0.3


# =============================================================================
# Validation
# =============================================================================


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wrong_group_count_raises(name: str) -> None:
    model = all_models()[name]()
    with pytest.raises(ValueError, match="expected 3 feature groups, got 2"):
        model(make_groups(2)[:2])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wrong_group_shape_raises_naming_the_group(name: str) -> None:
    model = all_models()[name]()
    groups = make_groups(2)
    groups[1] = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"feature group 1: expected shape \[B, 4\], got \[2, 5\]"):
        model(groups)
    groups = make_groups(2)
    groups[2] = torch.randn(2, 1, 3)
    with pytest.raises(ValueError, match="feature group 2"):
        model(groups)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DNNConfig(hidden_dims=()), "DNNConfig.hidden_dims"),
        (lambda: DNNConfig(hidden_dims=(16, 0)), "DNNConfig.hidden_dims"),
        (lambda: DNNConfig(dropout=1.0), "DNNConfig.dropout"),
        (lambda: DNNConfig(dropout=-0.1), "DNNConfig.dropout"),
        (lambda: DCNv2Config(cross_layers=0), "DCNv2Config.cross_layers"),
        (lambda: DCNv2Config(rank=0), "DCNv2Config.rank"),
        (lambda: DCNv2Config(structure="serial"), "DCNv2Config.structure"),
        (lambda: DCNv2Config(hidden_dims=()), "DCNv2Config.hidden_dims"),
        (lambda: DeepFMConfig(field_dim=0), "DeepFMConfig.field_dim"),
        (lambda: DeepFMConfig(dropout=2.0), "DeepFMConfig.dropout"),
        (lambda: WideDeepConfig(wide_dim=0), "WideDeepConfig.wide_dim"),
        (lambda: WideDeepConfig(hidden_dims=(8.5,)), "WideDeepConfig.hidden_dims"),  # type: ignore[arg-type]
    ],
)
def test_invalid_config_raises(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_config_accepts_list_hidden_dims() -> None:
    cfg = DNNConfig(hidden_dims=[8, 4])  # type: ignore[arg-type]  # e.g. loaded from YAML
    assert cfg.hidden_dims == (8, 4)
    assert DNNBackbone(GROUP_DIMS, cfg).out_dim == 4


@pytest.mark.parametrize("group_dims", [[], [4, 0], [4, -1]])
def test_invalid_group_dims_raise(group_dims: list[int]) -> None:
    with pytest.raises(ValueError, match="DeepFMBackbone"):
        DeepFMBackbone(group_dims, DeepFMConfig())
