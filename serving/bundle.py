"""The models the service runs, loaded together and swapped together.

A :class:`ServingBundle` holds the retriever (with its live MIPS index), the ranker and the allocation policy, plus
the encoders built for them. A reload builds a complete new bundle (models loaded, index filled from the current live
rooms) next to the serving one and then replaces one reference: a request reads the bundle once at its start, so it
runs on the old models or on the new ones, never on a mix, and nothing waits for the load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.allocation.export import FILES as POLICY_FILES
from models.allocation.export import FORMAT_VERSION as POLICY_FORMAT
from models.allocation.export import load_policy
from models.export_dir import read_checked
from models.ranking.export import LoadedRanker, load_ranker
from models.retrieval.export import LoadedRetriever, load_retriever
from recsys.feed.env import FeedEnvConfig, Policy, feature_names, n_groups_of
from recsys.stream.features import LiveRoom
from serving.features import RankingEncoder, RetrievalEncoder
from serving.live import LiveCatalog

#: the file that marks each kind of export directory
MARKERS = {"retriever": "retriever.json", "ranker": "ranker.json", "policy": "policy.json"}


class ModelLoadError(RuntimeError):
    """A model reference could not be resolved or loaded (the message names the reference and the cause)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_export(ref: str, kind: str, tracking_uri: str) -> tuple[Path, str]:
    """A local export directory for ``ref`` (a directory, or an MLflow ``models:/`` / ``runs:/`` URI whose
    artifacts hold one) and the version label to report."""
    marker = MARKERS[kind]
    if "://" not in ref and ":/" not in ref:
        d = Path(ref)
        try:
            found = (d / marker).is_file()
        except OSError as exc:  # a name too long, a directory we may not read
            raise ModelLoadError(f"{kind} {ref!r}: {exc.strerror or exc}") from exc
        if not found:
            raise ModelLoadError(f"{kind} {ref!r}: not an export directory (no {marker})")
        return d, str(d)
    import mlflow

    label = ref
    try:
        if ref.startswith("models:/") and "@" in ref:
            name, alias = ref[len("models:/"):].split("@", 1)
            version = mlflow.MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version
            label = f"{name}/{version} ({ref})"
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, tracking_uri=tracking_uri))
    except Exception as exc:  # noqa: BLE001 - mlflow raises many types; the caller needs one with the reference
        raise ModelLoadError(f"{kind} {ref!r}: {type(exc).__name__}: {exc}") from exc
    found = sorted(p.parent for p in local.rglob(marker))
    if not found:
        raise ModelLoadError(f"{kind} {ref!r}: the artifacts at {local} hold no {marker}")
    return found[0], label


def _policy_meta(directory: Path) -> tuple[tuple[str, ...], float | None]:
    """(the state layout the policy was trained on, the allocation ratio it was trained for) from its export's meta;
    the environment's default layout and no target for older exports. ValueError when the layout is not an
    environment layout."""
    meta = read_checked(directory, "allocation policy", POLICY_FILES, POLICY_FORMAT)[1]
    names = tuple(meta.get("feature_names") or feature_names(FeedEnvConfig().n_groups))
    n_groups_of(names)
    target = meta.get("alloc_target")
    return names, float(target) if target is not None else None


@dataclass
class ServingBundle:
    retriever: LoadedRetriever
    retrieval: RetrievalEncoder
    catalog: LiveCatalog
    ranker: LoadedRanker | None
    ranking: RankingEncoder | None
    policy: Policy | None
    policy_name: str
    feature_names: tuple[str, ...]
    versions: dict[str, str]
    refs: dict[str, str | None]
    device: torch.device
    group_edges: np.ndarray = field(default_factory=lambda: np.zeros(0))  # activity-group thresholds on u_clicks
    policy_target: float | None = None  # the allocation ratio the policy was trained for

    @property
    def n_groups(self) -> int:
        return n_groups_of(self.feature_names)

    def activity_group(self, user_id: int) -> int:
        """Quantile tier of the user's past clicks (the batch ``u_clicks`` of the ranker tables); 0 without one."""
        if self.ranker is None or self.ranker.tables is None or self.group_edges.size == 0:
            return 0
        row = int(self.ranker.user_index.lookup(np.array([user_id]))[0])
        return int(np.searchsorted(self.group_edges, self.ranker.tables.user_dense[row, 0], side="right"))


def load_bundle(refs: dict[str, str | None], tracking_uri: str, device: str = "auto", mips_backend: str = "torch",
                live: Sequence[LiveRoom] = (), popularity: dict[int, int] | None = None) -> ServingBundle:
    """Load every model of ``refs`` (``retriever`` required; ``ranker`` / ``policy`` optional) and fill a new live
    index with ``live``. Raises :class:`ModelLoadError` naming the reference that failed."""
    dev = resolve_device(device)
    if not refs.get("retriever"):
        raise ModelLoadError("a retriever export is required")
    versions: dict[str, str] = {}
    path, versions["retriever"] = resolve_export(str(refs["retriever"]), "retriever", tracking_uri)
    try:
        retriever = load_retriever(path, device=dev)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"retriever {refs['retriever']!r}: {exc}") from exc
    ranker = ranking = None
    if refs.get("ranker"):
        path, versions["ranker"] = resolve_export(str(refs["ranker"]), "ranker", tracking_uri)
        try:
            ranker = load_ranker(path, device=dev)
            ranking = RankingEncoder(ranker)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"ranker {refs['ranker']!r}: {exc}") from exc
    policy, policy_name, names, target = None, "never", feature_names(FeedEnvConfig().n_groups), None
    if refs.get("policy"):
        path, versions["policy"] = resolve_export(str(refs["policy"]), "policy", tracking_uri)
        try:
            policy = load_policy(path)
            names, target = _policy_meta(path)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"policy {refs['policy']!r}: {exc}") from exc
        policy_name = str(getattr(policy, "name", "") or type(policy).__name__)
    catalog = LiveCatalog(retriever, mips_backend, dev)
    catalog.sync(list(live), popularity)
    edges = np.zeros(0)
    n_groups = n_groups_of(names)
    if ranker is not None and ranker.tables is not None and n_groups > 1:
        clicks = ranker.tables.user_dense[1:, 0]
        edges = np.quantile(clicks, np.arange(1, n_groups) / n_groups) if clicks.size else edges
    return ServingBundle(retriever=retriever, retrieval=RetrievalEncoder(retriever), catalog=catalog, ranker=ranker,
                         ranking=ranking, policy=policy, policy_name=policy_name, feature_names=tuple(names),
                         versions=versions, refs=dict(refs), device=dev, group_edges=edges, policy_target=target)


__all__ = ["MARKERS", "ModelLoadError", "ServingBundle", "load_bundle", "resolve_device", "resolve_export"]
