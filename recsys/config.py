"""Typed platform configuration: defaults in code, a YAML file overrides them, ``RECSYS_*`` env vars override both.

Environment variables name a field by section and field joined with a double underscore, e.g.
``RECSYS_SERVICES__REDIS_URL=redis://10.0.0.5:6379/0`` or ``RECSYS_DATA__SCALE=small``. Values are parsed as YAML
scalars (so ``true``, ``3``, ``0.5`` get their types) and then validated by pydantic, which names the bad field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "RECSYS_"


class _Section(BaseModel):
    # env values are YAML-parsed, so RECSYS_TRACKING__EXPERIMENT=2025 arrives as an int: accept it for str fields
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class DataConfig(_Section):
    """Where datasets live and which synthetic scale/seed the jobs use by default."""

    data_dir: Path = Path("data/kuailive")
    synthetic_dir: Path = Path("data/synthetic")
    cache_dir: Path | None = Path("data/.cache")
    scale: Literal["tiny", "small", "full"] = "small"
    seed: int = 0


class TrackingConfig(_Section):
    """MLflow: a local SQLite store by default, a tracking server (PostgreSQL-backed) when configured."""

    tracking_uri: str = "sqlite:///mlruns.db"
    artifact_location: str | None = None
    experiment: str = "kuailive"
    enabled: bool = True


class ServicesConfig(_Section):
    """External services; empty Kafka bootstrap means the embedded in-process replay."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap: str = ""


class PlatformConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    services: ServicesConfig = Field(default_factory=ServicesConfig)


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str], prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """Nested dict from ``PREFIX_SECTION__FIELD=value`` variables (keys lower-cased, values YAML-parsed)."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(prefix) or "__" not in name:
            continue
        path = name[len(prefix):].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        value = yaml.safe_load(raw) if raw != "" else ""
        node[path[-1]] = value
    return out


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> PlatformConfig:
    """Defaults <- YAML file (when given) <- environment. Raises pydantic.ValidationError naming bad fields."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {p} must hold a mapping at the top level, got {type(loaded).__name__}")
        values = _deep_merge(values, loaded)
    values = _deep_merge(values, env_overrides(os.environ if environ is None else environ))
    return PlatformConfig.model_validate(values)
