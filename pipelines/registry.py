"""MLflow model registry for rankers: the export directory logged as a pyfunc model with a signature.

The pyfunc's input is one row per (request, candidate) with the encoded features of
:class:`recsys.data.ranking.FeatureArrays` (ids, profile/context field ids, dense features, title vector and
the history lists); its output is the multi-task predictions. The ranking service does not go through pyfunc: it
downloads the same artifacts by alias and loads them with :func:`models.ranking.export.load_ranker`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recsys.data.ranking import SEQ_KEYS, FeatureArrays, RankingDataset

if TYPE_CHECKING:
    from models.ranking.ranker import Ranker

ARTIFACT_KEY = "ranker_export"
_LIST_COLUMNS = ("user_profile", "streamer_profile", "context", "title", "dense", *SEQ_KEYS, "hist_gap")


def arrays_to_frame(a: FeatureArrays) -> pd.DataFrame:
    """FeatureArrays -> one row per sample, list-valued columns (histories trimmed to their lengths)."""
    data: dict[str, object] = {"user_idx": a.user_idx.astype(np.int64), "streamer_idx": a.streamer_idx.astype(np.int64),
                               "time_ms": a.time_ms.astype(np.int64)}
    for name in ("user_profile", "streamer_profile", "context"):
        data[name] = [r.astype(np.int64) for r in getattr(a, name)]
    # float columns as float64 (Array(double) in the signature): JSON input examples and REST payloads carry doubles
    data["title"] = [r.astype(np.float64) for r in a.title]
    data["dense"] = [r.astype(np.float64) for r in a.dense]
    for k in SEQ_KEYS:
        data[k] = [r[:n].astype(np.int64) for r, n in zip(a.hist[k], a.hist_len[k])]
    data["hist_gap"] = [r[:n].astype(np.int64) for r, n in zip(a.hist_gap, a.hist_len["hist_click"])]
    return pd.DataFrame(data)


def _pad(rows: list, width: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(rows), width), np.int64)
    lens = np.zeros(len(rows), np.int64)
    for i, r in enumerate(rows):
        r = np.asarray(r, np.int64)[-width:]
        out[i, :r.size] = r
        lens[i] = r.size
    return out, lens


def frame_to_arrays(df: pd.DataFrame, seq_lengths: dict[str, int]) -> FeatureArrays:
    """Inverse of :func:`arrays_to_frame`; names the missing column when the frame is malformed."""
    missing = [c for c in ("user_idx", "streamer_idx", "time_ms", *_LIST_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(f"ranker input is missing column(s): {', '.join(missing)}")
    hist, hist_len = {}, {}
    for k in SEQ_KEYS:
        hist[k], hist_len[k] = _pad(list(df[k]), seq_lengths[k])
    gap, _ = _pad(list(df["hist_gap"]), seq_lengths["hist_click"])

    def stack(col: str, dtype: type) -> np.ndarray:
        return np.stack([np.asarray(v, dtype) for v in df[col]]) if len(df) else np.zeros((0, 0), dtype)

    return FeatureArrays(
        user_idx=df["user_idx"].to_numpy(np.int64), streamer_idx=df["streamer_idx"].to_numpy(np.int64),
        user_profile=stack("user_profile", np.int64), streamer_profile=stack("streamer_profile", np.int64),
        context=stack("context", np.int64), title=stack("title", np.float32), dense=stack("dense", np.float32),
        hist=hist, hist_len=hist_len, hist_gap=gap, time_ms=df["time_ms"].to_numpy(np.int64),
    )


def predict_frame(model: "Ranker", frame: pd.DataFrame) -> pd.DataFrame:
    """The pyfunc's contract: feature frame in, one column per prediction out (on the model's device)."""
    import torch

    from models.ranking.inputs import to_input

    x = to_input(frame_to_arrays(frame, model.spec.seq_lengths)).to(next(model.parameters()).device)
    with torch.no_grad():
        pred = model.predict(x)
    return pd.DataFrame({k: v.float().cpu().numpy() for k, v in pred.items()})


def _python_model():
    import mlflow.pyfunc

    class RankerPyfunc(mlflow.pyfunc.PythonModel):
        """Loads the export; ``predict(frame)`` -> DataFrame of click, watch_s, comment, like, gift, gift_value."""

        def load_context(self, context) -> None:
            from models.ranking.export import load_ranker

            self.loaded = load_ranker(context.artifacts[ARTIFACT_KEY])

        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            return predict_frame(self.loaded.model, model_input)

    return RankerPyfunc()


def _requirements() -> list[str]:
    """The serving stack of the pyfunc (pinned as installed; the platform package itself provides the code)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("torch", "torchrec", "fbgemm-gpu-cpu", "numpy", "pandas", "polars", "mlflow"):
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


def log_ranker_model(export_dir: str | Path, model: "Ranker", ds: RankingDataset,
                     registered_name: str | None) -> str | None:
    """Log the export of ``model`` under the active run as pyfunc model ``ranker`` (signature from a real example
    scored by the model) and register it; returns the registered version (or None when not registering)."""
    import mlflow
    from mlflow.models import infer_signature

    example = arrays_to_frame(ds.arrays(ds.rows("test")[:3]))
    out = predict_frame(model, example)
    info = mlflow.pyfunc.log_model(
        pip_requirements=_requirements(),
        name="ranker", python_model=_python_model(), artifacts={ARTIFACT_KEY: str(export_dir)},
        signature=infer_signature(example, out), input_example=example,
        registered_model_name=registered_name,
    )
    version = getattr(info, "registered_model_version", None)
    return None if version is None else str(version)
