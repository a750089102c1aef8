"""CTR baselines on the shared feature groups: DNN (DLRM-style MLP), DCN-V2, DeepFM and Wide&Deep.

Every baseline is a :class:`~models.ranking.backbone.Backbone`: it consumes exactly the feature groups the shared
encoder produces for the TokenMixer backbones (``groups[g]``: [B, D_g], one dense vector per semantic group) and
returns ``BackboneOutput(hidden=[B, out_dim])``. The shared multi-task heads are applied to ``hidden`` by the caller,
so the comparison with TokenMixer is "same features, same heads, same trainer". No backbone applies a final logit or
sigmoid.

Notation used in the shape comments:

* ``B``: batch size.
* ``G``: number of feature groups, ``len(group_dims)``.
* ``D0``: width of the concatenated groups, ``sum(group_dims)``.
* ``H``: width of the last deep layer, ``hidden_dims[-1]``.
* ``k``: DeepFM field-embedding width, ``field_dim``.

Additive logit components (DeepFM's FM terms, Wide&Deep's wide part) are appended to ``hidden`` as extra columns:
a linear head over ``hidden`` then computes ``w_deep . deep_out + w_fm * fm + w_wide * wide + bias``, which is the
paper models' "sum of logits" with a learned scalar weight per component and per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.ranking.backbone import Backbone, BackboneOutput, CrossLayerV2, mlp

DCN_STRUCTURES = ("parallel", "stacked")


# =============================================================================
# Configs
# =============================================================================


def _validate_deep(owner: str, hidden_dims: Sequence[int], dropout: float) -> tuple[int, ...]:
    """Check the deep-MLP options shared by every config; return ``hidden_dims`` as a tuple."""
    dims = tuple(hidden_dims)
    if not dims:
        raise ValueError(f"{owner}.hidden_dims must name at least one layer, got {dims}")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{owner}.hidden_dims must be positive ints, got {dims}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}.dropout must lie in [0, 1), got {dropout}")
    return dims


def _check_positive_int(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be an int >= 1, got {value!r}")


def _validate_group_dims(model: str, group_dims: Sequence[int]) -> list[int]:
    dims = list(group_dims)
    if not dims:
        raise ValueError(f"{model}: group_dims must name at least one feature group")
    for i, d in enumerate(dims):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{model}: feature group {i} must have an int width >= 1, got {d!r}")
    return dims


@dataclass(frozen=True)
class DNNConfig:
    """DLRM-style MLP over the concatenated groups."""

    hidden_dims: tuple[int, ...] = (256, 128)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", _validate_deep("DNNConfig", self.hidden_dims, self.dropout))


@dataclass(frozen=True)
class DCNv2Config:
    """DCN-V2: ``cross_layers`` cross layers (full-rank when ``rank`` is None, else ``W = U V^T`` of that rank) and a
    deep MLP, combined ``"parallel"`` (concat) or ``"stacked"`` (deep on top of cross)."""

    cross_layers: int = 3
    rank: int | None = None
    structure: str = "parallel"
    hidden_dims: tuple[int, ...] = (256, 128)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", _validate_deep("DCNv2Config", self.hidden_dims, self.dropout))
        _check_positive_int("DCNv2Config", "cross_layers", self.cross_layers)
        if self.rank is not None:
            _check_positive_int("DCNv2Config", "rank", self.rank)
        if self.structure not in DCN_STRUCTURES:
            raise ValueError(f"DCNv2Config.structure must be one of {DCN_STRUCTURES}, got {self.structure!r}")


@dataclass(frozen=True)
class DeepFMConfig:
    """DeepFM: one ``field_dim``-wide field embedding per group, FM over the fields, deep MLP over the fields."""

    field_dim: int = 16
    hidden_dims: tuple[int, ...] = (256, 128)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", _validate_deep("DeepFMConfig", self.hidden_dims, self.dropout))
        _check_positive_int("DeepFMConfig", "field_dim", self.field_dim)


@dataclass(frozen=True)
class WideDeepConfig:
    """Wide&Deep: a linear ``wide_dim``-wide part over the concatenated groups plus a deep MLP."""

    hidden_dims: tuple[int, ...] = (256, 128)
    dropout: float = 0.0
    wide_dim: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", _validate_deep("WideDeepConfig", self.hidden_dims, self.dropout))
        _check_positive_int("WideDeepConfig", "wide_dim", self.wide_dim)


# =============================================================================
# DNN
# =============================================================================


class DNNBackbone(Backbone):
    """DLRM-style MLP: ``concat(groups)`` [B, D0] -> Linear/ReLU(/Dropout) stack -> ``hidden`` [B, H].

    ``out_dim = hidden_dims[-1]``.
    """

    def __init__(self, group_dims: list[int], cfg: DNNConfig) -> None:
        super().__init__()
        self.group_dims = _validate_group_dims("DNNBackbone", group_dims)
        self.cfg = cfg
        self.in_dim = sum(self.group_dims)
        self.deep = mlp([self.in_dim, *cfg.hidden_dims], dropout=cfg.dropout)
        self.out_dim = cfg.hidden_dims[-1]

    def forward(self, groups: list[Tensor]) -> BackboneOutput:
        self.check_groups(groups, self.group_dims)
        x0 = torch.cat(groups, dim=1)  # [B, D0]
        return BackboneOutput(hidden=self.deep(x0))  # [B, H]


# =============================================================================
# DCN-V2
# =============================================================================


class DCNv2Backbone(Backbone):
    """DCN-V2 (Wang et al., WWW 2021) over ``x0 = concat(groups)`` [B, D0].

    Cross network: ``cross_layers`` :class:`CrossLayerV2` layers, output [B, D0].
    Deep network: MLP with ``hidden_dims``, output [B, H].

    * ``structure="parallel"``: cross and deep both read ``x0``; ``hidden = concat(cross_out, deep_out)``,
      ``out_dim = D0 + H``.
    * ``structure="stacked"``: ``hidden = deep(cross_out)``, ``out_dim = H``.
    """

    def __init__(self, group_dims: list[int], cfg: DCNv2Config) -> None:
        super().__init__()
        self.group_dims = _validate_group_dims("DCNv2Backbone", group_dims)
        self.cfg = cfg
        self.in_dim = sum(self.group_dims)
        self.cross = nn.ModuleList(CrossLayerV2(self.in_dim, cfg.rank) for _ in range(cfg.cross_layers))
        self.deep = mlp([self.in_dim, *cfg.hidden_dims], dropout=cfg.dropout)
        if cfg.structure == "parallel":
            self.out_dim = self.in_dim + cfg.hidden_dims[-1]
        else:
            self.out_dim = cfg.hidden_dims[-1]

    def cross_network(self, x0: Tensor) -> Tensor:
        """[B, D0] -> [B, D0]: the cross layers applied in sequence, each with the same ``x0``."""
        xl = x0
        for layer in self.cross:
            xl = layer(x0, xl)
        return xl

    def forward(self, groups: list[Tensor]) -> BackboneOutput:
        self.check_groups(groups, self.group_dims)
        x0 = torch.cat(groups, dim=1)  # [B, D0]
        cross_out = self.cross_network(x0)  # [B, D0]
        if self.cfg.structure == "parallel":
            hidden = torch.cat([cross_out, self.deep(x0)], dim=1)  # [B, D0 + H]
        else:
            hidden = self.deep(cross_out)  # [B, H]
        return BackboneOutput(hidden=hidden)


# =============================================================================
# DeepFM
# =============================================================================


class DeepFMBackbone(Backbone):
    """DeepFM (Guo et al., IJCAI 2017) with one field per feature group.

    * Field embeddings: group ``g`` ([B, D_g]) -> ``v_g = Linear_g(group_g)`` ([B, k]); stacked ``v``: [B, G, k].
      FM and deep part share these embeddings, as in DeepFM.
    * FM second order: ``sum_{i<j} <v_i, v_j> = 0.5 * sum_k ((sum_g v_gk)^2 - sum_g v_gk^2)`` -> [B, 1].
    * First order: ``Linear(concat(groups), 1, bias=False)`` -> [B, 1] (the global bias lives in the heads). The
      groups are dense, so this is the dense analogue of FM's per-feature weights.
    * Deep: MLP over ``v.flatten(1)`` ([B, G*k]) -> [B, H].

    ``hidden = concat(deep_out [B, H], fm_second_order [B, 1], first_order [B, 1])``, ``out_dim = H + 2``.
    DeepFM's prediction is ``sigmoid(y_FM + y_DNN)``; here the shared (per-task) linear heads read ``hidden`` and
    compute ``w . deep_out + a * fm_second_order + c * first_order + bias``, i.e. the same sum of the FM and DNN
    logits, with a learned scale per component and per task.
    """

    def __init__(self, group_dims: list[int], cfg: DeepFMConfig) -> None:
        super().__init__()
        self.group_dims = _validate_group_dims("DeepFMBackbone", group_dims)
        self.cfg = cfg
        self.in_dim = sum(self.group_dims)
        self.num_fields = len(self.group_dims)
        self.field_proj = nn.ModuleList(nn.Linear(d, cfg.field_dim) for d in self.group_dims)
        self.first_order = nn.Linear(self.in_dim, 1, bias=False)
        self.deep = mlp([self.num_fields * cfg.field_dim, *cfg.hidden_dims], dropout=cfg.dropout)
        self.out_dim = cfg.hidden_dims[-1] + 2

    def field_embeddings(self, groups: list[Tensor]) -> Tensor:
        """``groups`` -> field embeddings ``v`` of shape [B, G, k] (one per group; G is small, so the loop is over
        groups, not samples)."""
        return torch.stack([proj(g) for proj, g in zip(self.field_proj, groups)], dim=1)

    @staticmethod
    def fm_second_order(v: Tensor) -> Tensor:
        """FM pairwise term ``sum_{i<j} <v_i, v_j>``: ``v`` [B, F, k] -> [B, 1] in O(F*k)."""
        square_of_sum = v.sum(dim=1).pow(2)  # [B, k]
        sum_of_square = v.pow(2).sum(dim=1)  # [B, k]
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1, keepdim=True)  # [B, 1]

    def forward(self, groups: list[Tensor]) -> BackboneOutput:
        self.check_groups(groups, self.group_dims)
        v = self.field_embeddings(groups)  # [B, G, k]
        fm = self.fm_second_order(v)  # [B, 1]
        first = self.first_order(torch.cat(groups, dim=1))  # [B, 1]
        deep_out = self.deep(v.flatten(1))  # [B, H]
        return BackboneOutput(hidden=torch.cat([deep_out, fm, first], dim=1))  # [B, H + 2]


# =============================================================================
# Wide & Deep
# =============================================================================


class WideDeepBackbone(Backbone):
    """Wide&Deep (Cheng et al., DLRS 2016) on the shared groups.

    * Wide: ``Linear(concat(groups), wide_dim, bias=False)`` -> [B, wide_dim]. The original wide part is a linear
      model over sparse raw and hand-crossed features; here it is linear over the shared dense features, which
      already contain the id embeddings and the user x streamer cross statistics. No hand-made crosses are added.
    * Deep: MLP over ``concat(groups)`` [B, D0] -> [B, H].

    ``hidden = concat(deep_out [B, H], wide_out [B, wide_dim])``, ``out_dim = H + wide_dim``: the linear heads add
    the wide and deep logits, as in the paper's joint training (global bias in the heads).
    """

    def __init__(self, group_dims: list[int], cfg: WideDeepConfig) -> None:
        super().__init__()
        self.group_dims = _validate_group_dims("WideDeepBackbone", group_dims)
        self.cfg = cfg
        self.in_dim = sum(self.group_dims)
        self.wide = nn.Linear(self.in_dim, cfg.wide_dim, bias=False)
        self.deep = mlp([self.in_dim, *cfg.hidden_dims], dropout=cfg.dropout)
        self.out_dim = cfg.hidden_dims[-1] + cfg.wide_dim

    def wide_part(self, groups: list[Tensor]) -> Tensor:
        """``groups`` -> [B, wide_dim], linear in the concatenated groups."""
        return self.wide(torch.cat(groups, dim=1))

    def forward(self, groups: list[Tensor]) -> BackboneOutput:
        self.check_groups(groups, self.group_dims)
        x0 = torch.cat(groups, dim=1)  # [B, D0]
        hidden = torch.cat([self.deep(x0), self.wide(x0)], dim=1)  # [B, H + wide_dim]
        return BackboneOutput(hidden=hidden)


__all__ = [
    "CrossLayerV2",
    "DCNv2Backbone",
    "DCNv2Config",
    "DNNBackbone",
    "DNNConfig",
    "DeepFMBackbone",
    "DeepFMConfig",
    "WideDeepBackbone",
    "WideDeepConfig",
]
