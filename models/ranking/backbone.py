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
