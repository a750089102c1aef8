"""The retrievers the platform trains, by name, and how to build one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import Tensor, nn

from models.retrieval.grank import GRank, GRankConfig
from models.retrieval.inputs import CatalogSizes
from models.retrieval.two_tower import TwoTower, TwoTowerConfig

#: name -> (architecture, config overrides). ``popularity`` is non-parametric and lives in the pipeline.
RETRIEVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "grank": ("grank", {}),
    "grank_no_aux": ("grank", {"aux": False}),
    "grank_no_ranker": ("grank", {"ranker": False}),
    "sasrec": ("grank", {"query_token": False, "aux": False, "ranker": False}),
    "two_tower": ("two_tower", {}),
}
NON_PARAMETRIC: tuple[str, ...] = ("popularity",)
ALL_RETRIEVERS: tuple[str, ...] = ("grank", "two_tower", "sasrec", "popularity", "grank_no_aux", "grank_no_ranker")
_CONFIGS = {"grank": GRankConfig, "two_tower": TwoTowerConfig}


@dataclass
class RetrieverConfig:
    """A named retriever and its architecture config (the overrides of ``RETRIEVERS`` plus the user's)."""

    model: str
    arch: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> "RetrieverConfig":
        if model not in RETRIEVERS:
            raise ValueError(f"unknown retriever {model!r}; choose one of {sorted(RETRIEVERS)} (or 'popularity')")
        arch, base = RETRIEVERS[model]
        known = {f.name for f in fields(_CONFIGS[arch])}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {model}; known: {sorted(known)}")
        options = asdict(_CONFIGS[arch](**{**base, **overrides}))
        return cls(model=model, arch=arch, options=options)

    def arch_config(self) -> GRankConfig | TwoTowerConfig:
        return _CONFIGS[self.arch](**self.options)


def build_retriever(sizes: CatalogSizes, cfg: RetrieverConfig, buffers: dict[str, Tensor] | None = None
                    ) -> nn.Module:
    """GRank (or a variant) or the two-tower, with the catalogue side arrays as buffers."""
    if cfg.arch == "grank":
        return GRank(sizes, cfg.arch_config(), buffers)
    return TwoTower(sizes, cfg.arch_config(), buffers)


__all__ = ["ALL_RETRIEVERS", "NON_PARAMETRIC", "RETRIEVERS", "RetrieverConfig", "build_retriever"]
