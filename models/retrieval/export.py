"""The retriever's export format: what the ranking service loads to embed users and items, without the trainer.

A directory with

- ``retriever.json``: the :class:`~models.retrieval.registry.RetrieverConfig` and the
  :class:`~models.retrieval.inputs.CatalogSizes`;
- ``catalog.npz``: item raw ids and side arrays (streamer row, category, live type, title row), the title table,
  the raw user ids of the embedding rows (row = 1 + position) and each user row's profile ids (what a service needs
  to build the query token of a known user);
- ``profile_vocab.json``: the user-profile vocabulary (:class:`~recsys.data.ranking.CategoricalVocab`);
- ``weights.pt``: the ``state_dict`` (loaded with ``weights_only=True``);
- ``meta.json``: format version, model name, metrics.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.export_dir import read_checked, write_meta

from models.retrieval.inputs import CatalogSizes, catalog_tensors
from models.retrieval.registry import RetrieverConfig, build_retriever
from recsys.data.ranking import CategoricalVocab, IdIndex
from recsys.data.retrieval import ItemCatalog

FORMAT_VERSION = 1
FILES = ("retriever.json", "catalog.npz", "profile_vocab.json", "weights.pt")


@dataclass
class LoadedRetriever:
    model: torch.nn.Module
    config: RetrieverConfig
    catalog: ItemCatalog
    user_index: IdIndex
    user_profile: np.ndarray  # (n_users, F) profile ids per user row (row 0 = unknown user)
    profile_vocab: CategoricalVocab
    meta: dict


def save_retriever(model: torch.nn.Module, cfg: RetrieverConfig, sizes: CatalogSizes, directory: str | Path,
                   catalog: ItemCatalog, user_index: IdIndex, profile_vocab: CategoricalVocab,
                   user_profile: np.ndarray, meta: dict | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "retriever.json").write_text(json.dumps({"config": asdict(cfg), "sizes": asdict(sizes)}, indent=1))
    np.savez(d / "catalog.npz", item_ids=catalog.index.ids, streamer_row=catalog.streamer_row,
             category=catalog.category, live_type=catalog.live_type, title_row=catalog.title_row,
             titles=np.asarray(catalog.titles, np.float32), user_ids=user_index.ids, user_profile=user_profile,
             n_streamers=np.array([catalog.n_streamers]))
    (d / "profile_vocab.json").write_text(json.dumps({"columns": list(profile_vocab.columns),
                                                      "values": profile_vocab.values}))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, d / "weights.pt")
    write_meta(d, FORMAT_VERSION, meta)
    return d


def load_retriever(directory: str | Path, device: str | torch.device = "cpu") -> LoadedRetriever:
    d, meta = read_checked(directory, "retriever", FILES, FORMAT_VERSION)
    spec = json.loads((d / "retriever.json").read_text())
    cfg = RetrieverConfig(**spec["config"])
    sizes = CatalogSizes(**spec["sizes"])
    with np.load(d / "catalog.npz") as z:
        catalog = ItemCatalog(granularity=sizes.granularity, index=IdIndex(z["item_ids"]),
                              streamer_row=z["streamer_row"], category=z["category"], live_type=z["live_type"],
                              title_row=z["title_row"], titles=z["titles"], n_streamers=int(z["n_streamers"][0]))
        user_index = IdIndex(z["user_ids"])
        user_profile = z["user_profile"]
    vocab = json.loads((d / "profile_vocab.json").read_text())
    model = build_retriever(sizes, cfg, catalog_tensors(catalog))
    model.load_state_dict(torch.load(d / "weights.pt", map_location="cpu", weights_only=True))
    model.to(device).eval()
    return LoadedRetriever(model=model, config=cfg, catalog=catalog, user_index=user_index, user_profile=user_profile,
                           profile_vocab=CategoricalVocab(columns=tuple(vocab["columns"]), values=vocab["values"]),
                           meta=meta)


__all__ = ["FILES", "LoadedRetriever", "load_retriever", "save_retriever"]
