"""The ranker's export format: what the ranking service loads, without the training code path.

A directory with

- ``ranker.json``: :class:`~models.ranking.ranker.RankerConfig` (model name, backbone and encoder sizes);
- ``spec.json``: :class:`~recsys.data.ranking.RankingFeatureSpec` (vocabularies, sequence lengths, dense layout);
- ``user_ids.npy`` / ``streamer_ids.npy``: the raw ids of the embedding rows (row = 1 + position);
- ``weights.pt``: the ``state_dict`` (loaded with ``weights_only=True``);
- ``serving.npz`` (optional): :class:`~recsys.data.ranking.ServingTables`, the profile / title tables and the
  materialised per-user and per-streamer dense features that the ranking service encodes requests with.

This is the one place in ``models`` that touches files: the format has to be shared by the trainer
(``pipelines``) and the service (``serving``), which may not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.export_dir import read_checked, write_meta
from models.ranking.ranker import Ranker, RankerConfig
from recsys.data.ranking import IdIndex, RankingFeatureSpec, ServingTables

FORMAT_VERSION = 1
FILES = ("ranker.json", "spec.json", "user_ids.npy", "streamer_ids.npy", "weights.pt")


@dataclass
class LoadedRanker:
    model: Ranker
    user_index: IdIndex
    streamer_index: IdIndex
    meta: dict
    tables: ServingTables | None = None


def save_ranker(model: Ranker, directory: str | Path, user_index: IdIndex, streamer_index: IdIndex,
                meta: dict | None = None, tables: ServingTables | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "ranker.json").write_text(model.cfg.to_json())
    (d / "spec.json").write_text(model.spec.to_json())
    np.save(d / "user_ids.npy", user_index.ids)
    np.save(d / "streamer_ids.npy", streamer_index.ids)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, d / "weights.pt")
    if tables is not None:
        np.savez(d / "serving.npz", as_of=np.array([tables.as_of]),
                 **{name: getattr(tables, name) for name in ServingTables.ARRAYS})
    write_meta(d, FORMAT_VERSION, meta)
    return d


def load_ranker(directory: str | Path, device: str | torch.device = "cpu") -> LoadedRanker:
    d, meta = read_checked(directory, "ranker", FILES, FORMAT_VERSION)
    cfg = RankerConfig.from_json((d / "ranker.json").read_text())
    spec = RankingFeatureSpec.from_json((d / "spec.json").read_text())
    model = Ranker(spec, cfg)
    state = torch.load(d / "weights.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    tables = None
    if (d / "serving.npz").exists():
        with np.load(d / "serving.npz") as z:
            tables = ServingTables(as_of=int(z["as_of"][0]), **{name: z[name] for name in ServingTables.ARRAYS})
    return LoadedRanker(model=model, user_index=IdIndex(np.load(d / "user_ids.npy")),
                        streamer_index=IdIndex(np.load(d / "streamer_ids.npy")), meta=meta, tables=tables)
