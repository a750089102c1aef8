"""Multi-task heads and their losses (ranking brief §9).

| task | head output | loss | rows |
|---|---|---|---|
| click | logit | BCE | all |
| watch | log1p(seconds) | MSE | clicked |
| comment, like | logit | BCE | clicked |
| gift | (logit of P(gift), mu, log sigma) of a zero-inflated log-normal (ZILN, arXiv 1912.07753) | ZILN NLL | clicked |

The expected gift value is ``P(gift) * exp(mu + sigma^2 / 2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEAD_OUTPUTS: dict[str, int] = {"click": 1, "watch": 1, "comment": 1, "like": 1, "gift": 3}


@dataclass
class LossWeights:
    """Task weights of :func:`multitask_loss`. Measured on small (TokenMixer-Large, BENCHMARKS.md): comment / like /
    gift at 0.1 / 0.1 / 0.02 left those heads near chance (test AUC 0.62 / 0.56 / 0.56); at 0.5 / 0.5 / 0.2 they
    reach 0.68 / 0.65 / 0.83 with the same click AUC (0.8343 and 0.8340)."""

    click: float = 1.0
    watch: float = 0.05
    comment: float = 0.5
    like: float = 0.5
    gift: float = 0.2
    aux: float = 0.1  # TokenMixer-Large auxiliary (lower-layer) click loss, lambda of brief §5.4


class TaskHeads(nn.Module):
    """One small tower per task: ``forward(h [B, d]) -> {task: [B, k]}`` with k from :data:`HEAD_OUTPUTS`."""

    def __init__(self, in_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.towers = nn.ModuleDict({
            t: nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, k)) for t, k in HEAD_OUTPUTS.items()
        })

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        return {t: tower(h) for t, tower in self.towers.items()}

    def click_logit(self, h: Tensor) -> Tensor:
        return self.towers["click"](h).squeeze(-1)


def ziln_loss(out: Tensor, value: Tensor) -> Tensor:
    """Per-row ZILN negative log-likelihood. ``out`` [B, 3] = (logit, mu, log sigma); ``value`` [B] >= 0."""
    logit, mu, log_sigma = out[:, 0], out[:, 1], out[:, 2].clamp(-4.0, 4.0)
    positive = value > 0
    bce = F.binary_cross_entropy_with_logits(logit, positive.to(logit.dtype), reduction="none")
    log_x = torch.log(value.clamp_min(1e-6))
    nll = log_sigma + log_x + 0.5 * math.log(2 * math.pi) + 0.5 * ((log_x - mu) / log_sigma.exp()) ** 2
    return bce + torch.where(positive, nll, torch.zeros_like(nll))


def expected_gift_value(out: Tensor) -> Tensor:
    """E[value] = P(gift) * exp(mu + sigma^2 / 2) of the ZILN output [B, 3] -> [B]."""
    sigma = out[:, 2].clamp(-4.0, 4.0).exp()
    return torch.sigmoid(out[:, 0]) * torch.exp((out[:, 1] + 0.5 * sigma ** 2).clamp(max=30.0))


def predictions(out: dict[str, Tensor]) -> dict[str, Tensor]:
    """Head outputs -> user-facing predictions: probabilities, watch seconds, expected gift value ([B] each)."""
    return {
        "click": torch.sigmoid(out["click"].squeeze(-1)),
        "watch_s": torch.expm1(out["watch"].squeeze(-1).clamp(min=0.0, max=20.0)),
        "comment": torch.sigmoid(out["comment"].squeeze(-1)),
        "like": torch.sigmoid(out["like"].squeeze(-1)),
        "gift": torch.sigmoid(out["gift"][:, 0]),
        "gift_value": expected_gift_value(out["gift"]),
    }


@dataclass
class LossParts:
    total: Tensor
    parts: dict[str, float] = field(default_factory=dict)


def multitask_loss(out: dict[str, Tensor], labels: dict[str, Tensor], w: LossWeights,
                   aux_click_logits: list[Tensor] | None = None) -> LossParts:
    """Weighted sum of the task losses; the non-click tasks are averaged over clicked rows only."""
    click = labels["click"]
    clicked = click > 0.5
    n_clicked = clicked.sum().clamp_min(1).to(click.dtype)
    mask = clicked.to(click.dtype)

    def on_clicked(per_row: Tensor) -> Tensor:
        return (per_row * mask).sum() / n_clicked

    losses = {
        "click": F.binary_cross_entropy_with_logits(out["click"].squeeze(-1), click),
        "watch": on_clicked((out["watch"].squeeze(-1) - labels["watch"]) ** 2),
        "comment": on_clicked(F.binary_cross_entropy_with_logits(out["comment"].squeeze(-1), labels["comment"],
                                                                 reduction="none")),
        "like": on_clicked(F.binary_cross_entropy_with_logits(out["like"].squeeze(-1), labels["like"],
                                                              reduction="none")),
        "gift": on_clicked(ziln_loss(out["gift"], labels["gift_value"])),
    }
    total = sum(getattr(w, k) * v for k, v in losses.items())
    if aux_click_logits:
        aux = torch.stack([F.binary_cross_entropy_with_logits(a, click) for a in aux_click_logits]).sum()
        losses["aux"] = aux
        total = total + w.aux * aux
    return LossParts(total=total, parts={k: float(v.detach()) for k, v in losses.items()})
