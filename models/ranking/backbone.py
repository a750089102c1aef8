"""The contract every ranking backbone follows, so that all models share one encoder, one set of heads and one
trainer ("the same features and trainer").

A backbone receives the encoder's feature *groups* (one dense vector per semantic group: user profile, streamer
profile, room context, short-term interest, multi-behaviour history, user x streamer cross, streamer real-time) and
returns one representation per sample, plus optional auxiliary representations from lower layers (TokenMixer-Large's
auxiliary loss) and diagnostic statistics (e.g. per-token expert utilisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class BackboneOutput:
    """``hidden``: [B, out_dim]. ``aux``: list of [B, out_dim] from lower layers (empty when none; used only for the
    training loss). ``stats``: scalar or small tensors for logging (never used in the loss)."""

    hidden: Tensor
    aux: list[Tensor] = field(default_factory=list)
    stats: dict[str, Tensor] = field(default_factory=dict)


class Backbone(nn.Module):
    """Base class: ``forward(groups)`` with ``groups[g]`` of shape [B, group_dims[g]] -> :class:`BackboneOutput`.

    Subclasses set ``self.out_dim`` (width of ``hidden``) in ``__init__``.
    """

    out_dim: int

    def forward(self, groups: list[Tensor]) -> BackboneOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def check_groups(groups: list[Tensor], group_dims: list[int]) -> None:
        """Clear error when the encoder and the backbone disagree on the group layout."""
        if len(groups) != len(group_dims):
            raise ValueError(f"expected {len(group_dims)} feature groups, got {len(groups)}")
        for i, (g, d) in enumerate(zip(groups, group_dims)):
            if g.dim() != 2 or g.shape[1] != d:
                raise ValueError(f"feature group {i}: expected shape [B, {d}], got {list(g.shape)}")


class CrossLayerV2(nn.Module):
    """One DCN-V2 cross layer: ``x_{l+1} = x0 * (W x_l + b) + x_l`` (element-wise product), all [B, dim].

    Full rank (``rank=None``): ``self.proj = Linear(dim, dim)`` holds ``W`` [dim, dim] and ``b`` [dim].
    Low rank: ``W = U V^T`` with ``U``, ``V`` of shape [dim, rank]; ``self.proj = Sequential(Linear(dim, rank,
    bias=False), Linear(rank, dim))`` whose first weight is ``V^T`` [rank, dim] and second weight ``U`` [dim, rank]
    with bias ``b`` [dim]. Cost per layer: O(dim^2) full rank, O(dim*rank) low rank.
    """

    def __init__(self, dim: int, rank: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.rank = rank
        self.proj: nn.Module
        if rank is None:
            self.proj = nn.Linear(dim, dim)
        else:
            self.proj = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))

    def forward(self, x0: Tensor, xl: Tensor) -> Tensor:
        """``x0``, ``xl``: [B, dim] -> [B, dim]."""
        return x0 * self.proj(xl) + xl


def mlp(dims: list[int], activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0,
        last_activation: bool = True) -> nn.Sequential:
    """Plain MLP ``dims[0] -> dims[1] -> ... -> dims[-1]``; activation after every layer (after the last one too
    when ``last_activation``)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2 or last_activation:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["Backbone", "BackboneOutput", "count_parameters", "mlp"]
