"""The allocator's state from the ranker the service runs, for the feed environment.

The ranking service feeds the allocation policy the multi-task ranker's ``P(click)`` and expected watch time of the
top candidate (:func:`serving.features.allocation_features`). A policy trained on the environment's truth instead
(``p_click_hat = sigmoid(f)``, the truth's expected watch) meets another distribution when served: the quickstart's
exported SL-MGAC inserted a room in 2 % of the requests against a 0.30 budget. :class:`RankerEstimator` is a
:data:`recsys.feed.env.Estimator`: it scores each environment request's candidate with the ranker, on features
built from the past of the dataset by the same code path as the ranker's training samples
(:meth:`recsys.data.ranking.RankingDataset.with_samples`), and gives the candidate's ``log_popularity`` as the
service computes it (``log1p`` of its streamer's clicks in the last 24 h), so that a policy is trained on the state
it will see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from models.ranking.inputs import to_input
from models.ranking.ranker import Ranker
from recsys.data.features import count_window
from recsys.data.ranking import RankingDataset, build_ranking_dataset
from recsys.timeutil import MS_PER_DAY

__all__ = ["RankerEstimator", "ranker_estimator"]


@dataclass
class RankerEstimator:
    """``(user_ids, times_ms, live_ids) -> (P(click), watch minutes, log_popularity)`` of a trained
    :class:`Ranker`; ``log_popularity`` is ``log1p`` of the candidate streamer's clicks in ``[t - 1 day - 1 ms, t)``,
    the window the service reads from the store (:meth:`serving.store_reader.StoreReader.streamer_day_clicks`).

    Args:
        model: the ranker (its device is used).
        ds: the ranking dataset it was trained on (vocabularies, histories, profile and title tables).
        tables: the dataset's tables (``click``, ``negative``, ``rooms`` ... of ``KuaiLiveData.tables``), whose past
            the features read.
        batch_size: rows per forward pass.
    """

    model: Ranker
    ds: RankingDataset
    tables: dict[str, pl.DataFrame]
    batch_size: int = 8192
    name: str = "ranker"

    def __post_init__(self) -> None:
        rooms = self.tables["rooms"].select("live_id", "streamer_id").unique("live_id").sort("live_id")
        self._room_ids = rooms["live_id"].to_numpy().astype(np.int64)
        self._room_streamer = rooms["streamer_id"].to_numpy().astype(np.int64)
        clicks = self.tables["click"]
        self._click_streamer = clicks["streamer_id"].to_numpy().astype(np.int64)
        self._click_time = clicks["timestamp"].to_numpy().astype(np.int64)

    @torch.no_grad()
    def __call__(self, user_ids: np.ndarray, times: np.ndarray, live_ids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        live_ids = np.asarray(live_ids, np.int64)
        pos = np.searchsorted(self._room_ids, live_ids)
        known = (pos < self._room_ids.size) & (self._room_ids[np.minimum(pos, self._room_ids.size - 1)] == live_ids)
        if not known.all():
            raise ValueError(f"live_id {int(live_ids[~known][0])} is not in the rooms table")
        samples = pl.DataFrame({"user_id": np.asarray(user_ids, np.int64), "live_id": live_ids,
                                "streamer_id": self._room_streamer[pos], "timestamp": np.asarray(times, np.int64)})
        enc = self.ds.with_samples(samples, self.tables)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        p = np.empty(samples.height)
        w = np.empty(samples.height)
        try:
            for lo in range(0, samples.height, self.batch_size):
                rows = np.arange(lo, min(lo + self.batch_size, samples.height))
                pred = self.model.predict(to_input(enc.arrays(rows)).to(device))
                p[rows] = pred["click"].float().cpu().numpy()
                w[rows] = pred["watch_s"].float().cpu().numpy() / 60.0  # the service's unit: minutes
        finally:
            self.model.train(was_training)
        return p, w, self.log_popularity(self._room_streamer[pos], samples["timestamp"].to_numpy())

    def log_popularity(self, streamer_ids: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``log1p`` of each streamer's clicks in ``[t - 1 day - 1 ms, t - 1 ms]`` (the store's ``zcount`` window)."""
        t = np.asarray(times, np.int64)
        n = count_window(self._click_streamer, self._click_time, streamer_ids, t - MS_PER_DAY - 1, t - 1)
        return np.log1p(n.astype(np.float64))


def ranker_estimator(ranker_dir: str | Path, data_dir: str | Path, device: str = "cpu") -> RankerEstimator:
    """A :class:`RankerEstimator` of a ranker export (``recsys train ranker --export``) over the dataset in
    ``data_dir``, which must be the one it was trained on (the feature spec is checked)."""
    from models.ranking.export import load_ranker
    from recsys.data.loaders import load_kuailive

    loaded = load_ranker(ranker_dir, device)
    data = load_kuailive(data_dir)
    spec = loaded.model.spec
    ds = build_ranking_dataset(data, seq_len=spec.seq_len, behaviour_len=spec.behaviour_len)
    if ds.spec.to_json() != spec.to_json():
        raise ValueError(f"the ranker in {ranker_dir} was trained on another dataset than {data_dir} (its feature "
                         "spec differs: vocabularies, id counts or time span)")
    return RankerEstimator(loaded.model, ds, data.tables)
