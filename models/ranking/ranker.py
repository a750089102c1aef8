"""The multi-task ranker: shared encoder -> backbone (TokenMixer-Large, RankMixer or a baseline) -> task heads.

``RANKERS`` is the model registry used by ``recsys train ranker --model NAME`` and the benchmark, including the
TokenMixer-Large ablations of the issue (no token mixing, shared FFN instead of per-token, no MoE) and the paper's
MLP global token in place of this project's cross-layer one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from models.ranking.backbone import Backbone, BackboneOutput, count_parameters
from models.ranking.baselines import (
    DCNv2Backbone,
    DCNv2Config,
    DeepFMBackbone,
    DeepFMConfig,
    DNNBackbone,
    DNNConfig,
    WideDeepBackbone,
    WideDeepConfig,
)
from models.ranking.encoder import EncoderConfig, RankingEncoder
from models.ranking.heads import LossParts, LossWeights, TaskHeads, multitask_loss, predictions
from models.ranking.inputs import RankingInput
from models.ranking.mixer import MixerBackbone, MixerConfig
from recsys.data.ranking import RankingFeatureSpec

#: TokenMixer-Large as shipped by this project at KuaiLive scale (brief §9 ``tml-s`` shrunk for CPU, with the
#: S-P MoE of §6.3: 4 experts per token = 1 shared + top-1 of 3 routed, gate scale 2). One deviation from the paper,
#: measured: the global token is a DCN-V2 cross layer over the raw groups (``global_token="cross"``), not an MLP;
#: the ``tokenmixer_mlp_global`` ablation is the paper's token (BENCHMARKS.md, ranker section).
TOKENMIXER = MixerConfig(kind="tokenmixer", n_tokens=8, dim=32, heads=8, expansion=4, layers=2, moe=True,
                         n_experts=4, top_k=2, gate_scale=2.0, gate_softmax="all", global_token="cross")
RANKMIXER = MixerConfig(kind="rankmixer", n_tokens=8, dim=32, heads=8, expansion=4, layers=2)

#: name -> (backbone family, config). Ablations change one thing each.
RANKERS: dict[str, tuple[str, Any]] = {
    "tokenmixer": ("mixer", TOKENMIXER),
    "rankmixer": ("mixer", RANKMIXER),
    "dcnv2": ("dcnv2", DCNv2Config()),
    "deepfm": ("deepfm", DeepFMConfig()),
    "wide_deep": ("wide_deep", WideDeepConfig()),
    "dnn": ("dnn", DNNConfig()),
    "tokenmixer_no_mixing": ("mixer", dataclasses.replace(TOKENMIXER, mixing=False)),
    "tokenmixer_shared_ffn": ("mixer", dataclasses.replace(TOKENMIXER, per_token=False)),
    "tokenmixer_no_moe": ("mixer", dataclasses.replace(TOKENMIXER, moe=False, expansion=2)),
    "tokenmixer_mlp_global": ("mixer", dataclasses.replace(TOKENMIXER, global_token="mlp")),
}
MAIN_MODELS: tuple[str, ...] = ("tokenmixer", "rankmixer", "dcnv2", "deepfm", "wide_deep", "dnn")
ABLATIONS: tuple[str, ...] = ("tokenmixer_no_mixing", "tokenmixer_shared_ffn", "tokenmixer_no_moe",
                               "tokenmixer_mlp_global")

_BACKBONES: dict[str, tuple[type[Backbone], type]] = {
    "mixer": (MixerBackbone, MixerConfig),
    "dcnv2": (DCNv2Backbone, DCNv2Config),
    "deepfm": (DeepFMBackbone, DeepFMConfig),
    "wide_deep": (WideDeepBackbone, WideDeepConfig),
    "dnn": (DNNBackbone, DNNConfig),
}


@dataclass
class RankerConfig:
    """Everything needed to rebuild a ranker (saved with every export)."""

    model: str = "tokenmixer"
    family: str = "mixer"
    backbone: dict[str, Any] = field(default_factory=dict)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    losses: LossWeights = field(default_factory=LossWeights)
    head_hidden: int = 64

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> "RankerConfig":
        if model not in RANKERS:
            raise ValueError(f"unknown ranker {model!r}; choose one of {sorted(RANKERS)}")
        family, bcfg = RANKERS[model]
        extra = dict(overrides.pop("backbone", {}))
        unknown = sorted(set(extra) - {f.name for f in dataclasses.fields(bcfg)})
        if unknown:
            raise ValueError(f"unknown backbone option(s) for {model!r}: {', '.join(unknown)}; "
                             f"valid: {', '.join(f.name for f in dataclasses.fields(bcfg))}")
        backbone = {k: (tuple(v) if isinstance(v, list) else v) for k, v in {**asdict(bcfg), **extra}.items()}
        return cls(model=model, family=family, backbone=backbone, **overrides)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "RankerConfig":
        d = json.loads(text)
        d["encoder"] = EncoderConfig(**d["encoder"])
        d["losses"] = LossWeights(**d["losses"])
        d["backbone"] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d["backbone"].items()}
        return cls(**d)

    def backbone_config(self) -> Any:
        _, cfg_cls = _BACKBONES[self.family]
        fields = {f.name for f in dataclasses.fields(cfg_cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.backbone.items() if k in fields}
        return cfg_cls(**kwargs)


@dataclass
class RankerOutput:
    heads: dict[str, Tensor]  # raw head outputs
    backbone: BackboneOutput


class Ranker(nn.Module):
    """``forward(RankingInput) -> RankerOutput``; :meth:`loss` and :meth:`predict` on top."""

    def __init__(self, spec: RankingFeatureSpec, cfg: RankerConfig) -> None:
        super().__init__()
        self.spec = spec
        self.cfg = cfg
        self.encoder = RankingEncoder(spec, cfg.encoder)
        backbone_cls, _ = _BACKBONES[cfg.family]
        self.backbone = backbone_cls(self.encoder.group_dims, cfg.backbone_config())
        self.heads = TaskHeads(self.backbone.out_dim, cfg.head_hidden)

    def forward(self, x: RankingInput) -> RankerOutput:
        out = self.backbone(self.encoder(x))
        return RankerOutput(heads=self.heads(out.hidden), backbone=out)

    def loss(self, out: RankerOutput, labels: dict[str, Tensor]) -> LossParts:
        aux = [self.heads.click_logit(a) for a in out.backbone.aux]
        return multitask_loss(out.heads, labels, self.cfg.losses, aux)

    @torch.no_grad()
    def predict(self, x: RankingInput) -> dict[str, Tensor]:
        return predictions(self(x).heads)

    def dense_parameter_count(self) -> int:
        """Backbone parameters (embeddings and heads excluded, as the papers count them)."""
        return count_parameters(self.backbone)


def build_ranker(model: str, spec: RankingFeatureSpec, **overrides: Any) -> Ranker:
    return Ranker(spec, RankerConfig.for_model(model, **overrides))
