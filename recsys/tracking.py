"""MLflow helpers: every job is one run, on ``sqlite:///mlruns.db`` by default or a tracking server when configured.

MLflow is imported lazily (it takes seconds to import) so that commands that do not track stay fast.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from recsys.config import TrackingConfig

log = logging.getLogger(__name__)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> flat dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def _safe_metric_name(name: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . space / ; '@' (recall@10) is not allowed
    return name.replace("@", "_at_")


class Tracker:
    """A thin, explicit wrapper over one active MLflow run (no-op when tracking is disabled)."""

    def __init__(self, run: Any | None) -> None:
        self.run = run

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        import mlflow

        flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
        mlflow.log_params(flat)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.run is None:
            return
        import mlflow

        flat = {
            _safe_metric_name(k): float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        mlflow.log_metrics(flat, step=step)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        if self.run is None:
            return
        import mlflow

        mlflow.log_figure(figure, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run is None:
            return
        import mlflow

        mlflow.log_artifact(str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.run is None:
            return
        import mlflow

        mlflow.log_text(text, artifact_file)


@contextlib.contextmanager
def tracking_run(config: TrackingConfig, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[Tracker]:
    """Start (and always end) an MLflow run in ``config.experiment``; yields a :class:`Tracker`."""
    if not config.enabled:
        yield Tracker(None)
        return
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    mlflow.set_tracking_uri(config.tracking_uri)
    if mlflow.get_experiment_by_name(config.experiment) is None:
        mlflow.create_experiment(config.experiment, artifact_location=config.artifact_location)
    mlflow.set_experiment(config.experiment)
    nested = mlflow.active_run() is not None  # a job inside another job's run (e.g. training in quickstart)
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {}), nested=nested) as run:
        yield Tracker(run)
