"""MLflow model registry for retrievers: the export directory logged as a pyfunc that embeds users.

The pyfunc's input is one row per request with the encoded query of :class:`recsys.data.retrieval.QueryArrays`
(user row, profile ids, CST hour and weekday, the click history with its gap buckets, the behaviour lists); its output
is the user vector (``user_vector``, a list of floats) that exact MIPS searches over the live items' vectors. The
ranking service loads the same artifacts with :func:`models.retrieval.export.load_retriever`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.retrieval.inputs import QueryBatch
from pipelines.registry import _requirements
from recsys.data.retrieval import BEHAVIOURS, QueryArrays, RetrievalDataset

ARTIFACT_KEY = "retriever_export"
_LISTS = ("profile", "hist", "hist_gap", *(f"behaviour_{b}" for b in BEHAVIOURS))


def query_to_frame(q: QueryArrays) -> pd.DataFrame:
    """QueryArrays -> one row per request; histories trimmed of their left padding."""
    data: dict[str, object] = {"user": q.user.astype(np.int64), "hour": q.hour.astype(np.int64),
                               "weekday": q.weekday.astype(np.int64),
                               "profile": [r.astype(np.int64) for r in q.profile]}
    keep = q.hist > 0
    data["hist"] = [r[k].astype(np.int64) for r, k in zip(q.hist, keep)]
    data["hist_gap"] = [r[k].astype(np.int64) for r, k in zip(q.hist_gap, keep)]
    for j, b in enumerate(BEHAVIOURS):
        data[f"behaviour_{b}"] = [r[r > 0].astype(np.int64) for r in q.behaviour[:, j]]
    return pd.DataFrame(data)


def _right(rows: list, width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        r = np.asarray(r, np.int64)[-width:]
        if r.size:
            out[i, width - r.size:] = r
    return out


def frame_to_query(df: pd.DataFrame, long_len: int, behaviour_len: int) -> QueryArrays:
    """Inverse of :func:`query_to_frame`; names the missing column when the frame is malformed."""
    missing = [c for c in ("user", "hour", "weekday", *_LISTS) if c not in df.columns]
    if missing:
        raise ValueError(f"retriever input is missing column(s): {', '.join(missing)}")
    profile = np.stack([np.asarray(v, np.int64) for v in df["profile"]]) if len(df) else np.zeros((0, 0), np.int64)
    return QueryArrays(
        user=df["user"].to_numpy(np.int64), profile=profile, hour=df["hour"].to_numpy(np.int64),
        weekday=df["weekday"].to_numpy(np.int64), hist=_right(list(df["hist"]), long_len),
        hist_gap=_right(list(df["hist_gap"]), long_len),
        behaviour=np.stack([_right(list(df[f"behaviour_{b}"]), behaviour_len) for b in BEHAVIOURS], axis=1),
    )


def user_vectors_frame(model: torch.nn.Module, frame: pd.DataFrame, long_len: int, behaviour_len: int
                       ) -> pd.DataFrame:
    """The pyfunc's contract: query frame in, ``user_vector`` (list of floats) out."""
    q = QueryBatch.from_arrays(frame_to_query(frame, long_len, behaviour_len), next(model.parameters()).device)
    with torch.no_grad():
        u = model.user_vector(q).float().cpu().numpy()
    return pd.DataFrame({"user_vector": [r.astype(np.float64) for r in u]})


def _python_model():
    import mlflow.pyfunc

    class RetrieverPyfunc(mlflow.pyfunc.PythonModel):
        """Loads the export; ``predict(query frame)`` -> DataFrame with one ``user_vector`` per request."""

        def load_context(self, context) -> None:
            from models.retrieval.export import load_retriever

            self.loaded = load_retriever(context.artifacts[ARTIFACT_KEY])

        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            opts = self.loaded.config.options
            return user_vectors_frame(self.loaded.model, model_input, opts["long_len"],
                                      int(self.loaded.meta.get("behaviour_len", 20)))

    return RetrieverPyfunc()


def log_retriever_model(export_dir: str | Path, model: torch.nn.Module, ds: RetrievalDataset,
                        registered_name: str | None) -> str | None:
    """Log the export under the active run as pyfunc model ``retriever`` (signature from a real example) and
    register it; returns the registered version (or None when not registering)."""
    import mlflow
    from mlflow.models import infer_signature

    ev = ds.eval_sets["test"].targets.head(3)
    example = query_to_frame(ds.query(ds.user_index.lookup(ev["user_id"].to_numpy()), ev["timestamp"].to_numpy()))
    out = user_vectors_frame(model, example, ds.long_len, ds.behaviour_len)
    info = mlflow.pyfunc.log_model(
        pip_requirements=_requirements(), name="retriever", python_model=_python_model(),
        artifacts={ARTIFACT_KEY: str(export_dir)}, signature=infer_signature(example, out), input_example=example,
        registered_model_name=registered_name,
    )
    version = getattr(info, "registered_model_version", None)
    return None if version is None else str(version)


__all__ = ["frame_to_query", "log_retriever_model", "query_to_frame", "user_vectors_frame"]
