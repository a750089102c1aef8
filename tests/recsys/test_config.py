"""Platform config: defaults <- YAML file <- RECSYS_SECTION__FIELD environment, validated by pydantic."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from recsys.config import PlatformConfig, env_overrides, load_config


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recsys.yaml"
    path.write_text(text)
    return path


def _locs(exc: pydantic.ValidationError) -> list[tuple]:
    return [tuple(e["loc"]) for e in exc.errors()]


def test_defaults() -> None:
    cfg = load_config(environ={})
    assert cfg == PlatformConfig()
    assert cfg.data.scale == "small"
    assert cfg.data.seed == 0
    assert cfg.data.data_dir == Path("data/kuailive")
    assert cfg.data.synthetic_dir == Path("data/synthetic")
    assert cfg.data.cache_dir == Path("data/.cache")
    assert cfg.tracking.tracking_uri == "sqlite:///mlruns.db"
    assert cfg.tracking.enabled is True
    assert cfg.tracking.experiment == "kuailive"
    assert cfg.tracking.artifact_location is None
    assert cfg.services.redis_url == "redis://127.0.0.1:6379/0"
    assert cfg.services.kafka_bootstrap == ""


def test_yaml_file_overrides_defaults(tmp_path: Path) -> None:
    path = _yaml(tmp_path, """
data:
  scale: tiny
  seed: 7
  cache_dir: null
services:
  redis_url: redis://yaml-host:6380/2
tracking:
  enabled: false
""")
    cfg = load_config(path, environ={})
    assert cfg.data.scale == "tiny"
    assert cfg.data.seed == 7
    assert cfg.data.cache_dir is None
    assert cfg.services.redis_url == "redis://yaml-host:6380/2"
    assert cfg.tracking.enabled is False
    # fields the file does not mention keep their defaults (sections are merged, not replaced)
    assert cfg.data.data_dir == Path("data/kuailive")
    assert cfg.services.kafka_bootstrap == ""
    assert cfg.tracking.experiment == "kuailive"


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_yaml(tmp_path, ""), environ={}) == PlatformConfig()


def test_env_overrides_yaml(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "data:\n  scale: tiny\n  seed: 7\nservices:\n  redis_url: redis://yaml-host:6380/2\n")
    environ = {
        "RECSYS_SERVICES__REDIS_URL": "redis://10.0.0.5:6379/0",
        "RECSYS_DATA__SCALE": "full",
        "PATH": "/usr/bin",  # unrelated variables are ignored
        "RECSYS_TEST_REDIS_URL": "redis://ignored:1/1",  # no double underscore: not a config field
    }
    cfg = load_config(path, environ=environ)
    assert cfg.services.redis_url == "redis://10.0.0.5:6379/0"
    assert cfg.data.scale == "full"
    assert cfg.data.seed == 7  # from YAML, not overridden


def test_env_overrides_defaults_without_file() -> None:
    cfg = load_config(environ={"RECSYS_DATA__SCALE": "tiny", "RECSYS_SERVICES__KAFKA_BOOTSTRAP": "broker:9092"})
    assert cfg.data.scale == "tiny"
    assert cfg.services.kafka_bootstrap == "broker:9092"


def test_env_values_are_typed() -> None:
    cfg = load_config(environ={"RECSYS_DATA__SEED": "3", "RECSYS_TRACKING__ENABLED": "false"})
    assert cfg.data.seed == 3
    assert cfg.tracking.enabled is False


def test_env_numeric_looking_string_field() -> None:
    """A string field set from the environment to digits (an experiment named 2025) stays a string."""
    cfg = load_config(environ={"RECSYS_TRACKING__EXPERIMENT": "2025"})
    assert cfg.tracking.experiment == "2025"


def test_env_overrides_nesting() -> None:
    assert env_overrides({"RECSYS_DATA__SCALE": "tiny", "RECSYS_SERVICES__REDIS_URL": "redis://h:1/0",
                          "OTHER__X": "1", "RECSYS_NOSECTION": "1"}) == {
        "data": {"scale": "tiny"}, "services": {"redis_url": "redis://h:1/0"},
    }


def test_bad_env_value_names_field(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        load_config(_yaml(tmp_path, "data:\n  scale: tiny\n"), environ={"RECSYS_DATA__SCALE": "huge"})
    assert ("data", "scale") in _locs(info.value)
    assert "data.scale" in str(info.value)
    assert "huge" in str(info.value)


def test_bad_yaml_value_names_field(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        load_config(_yaml(tmp_path, "data:\n  seed: lots\n"), environ={})
    assert ("data", "seed") in _locs(info.value)


@pytest.mark.parametrize(
    "text, loc",
    [
        ("services:\n  redis_uri: redis://typo:6379/0\n", ("services", "redis_uri")),
        ("data:\n  scael: tiny\n", ("data", "scael")),
        ("features:\n  enabled: true\n", ("features",)),
    ],
)
def test_unknown_field_in_yaml_rejected(tmp_path: Path, text: str, loc: tuple) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        load_config(_yaml(tmp_path, text), environ={})
    assert loc in _locs(info.value)
    assert any(e["type"] == "extra_forbidden" for e in info.value.errors())


def test_unknown_field_in_env_rejected() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        load_config(environ={"RECSYS_SERVICES__REDIS_URI": "redis://typo:6379/0"})
    assert ("services", "redis_uri") in _locs(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(missing, environ={})


def test_non_mapping_yaml_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mapping"):
        load_config(_yaml(tmp_path, "- a\n- b\n"), environ={})
