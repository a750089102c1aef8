"""Job: build the benchmark datasets from KuaiLive-format files (real or synthetic) and score the oracle."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.builders import (
    attach_oracle,
    ctr_samples,
    event_sequences,
    oracle_metrics,
    topk_eval_set,
    tpp_windows,
)
from recsys.data.features import context_features, past_behaviour_features
from recsys.data.live_index import LiveIndex
from recsys.data.loaders import KuaiLiveData

log = logging.getLogger(__name__)


@dataclass
class DatasetsResult:
    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    oracle: dict[str, float] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def oracle_scores(samples: pl.DataFrame, split: str = "test") -> dict[str, float]:
    """AUC / UAUC / LogLoss of the true click probabilities on one split (synthetic data with ``p_true``)."""
    in_split = (samples["split"] == split).to_numpy()
    rows = np.flatnonzero(in_split & samples["p_true"].is_not_null().to_numpy())
    if rows.size == 0:
        raise ValueError(f"no '{split}' samples carry ground truth p_true")
    return {**oracle_metrics(samples, rows), "coverage": rows.size / int(in_split.sum())}


def build_datasets(data: KuaiLiveData, out_dir: str | Path, truth_dir: str | Path | None = None,
                   n_negatives: int = 10_000, seed: int = 42, window_days: int = 3,
                   progress: bool = True) -> DatasetsResult:
    """CTR samples with past-only features, top-K eval sets (streamer and room), event sequences, TPP windows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = DatasetsResult(out_dir=out)
    t = data.tables

    t0 = time.perf_counter()
    samples, info = ctr_samples(t["click"], t["negative"])
    feats = past_behaviour_features(samples, t["click"], t.get("comment"), t.get("gift"))
    ctx = context_features(samples, t["rooms"])
    samples = pl.concat([samples, feats, ctx], how="horizontal")
    if truth_dir is not None and Path(truth_dir, "exposures.parquet").exists():
        samples = attach_oracle(samples, truth_dir)
        res.oracle = oracle_scores(samples, "test")
    samples.write_parquet(out / "ctr_samples.parquet")
    res.counts.update({f"ctr_{s}": int((samples["split"] == s).sum()) for s in ("train", "valid", "test")})
    res.counts["ctr_overlap_dropped"] = info["overlap_dropped"]
    res.timings_s["ctr"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    index = LiveIndex.from_rooms(t["rooms"])
    for gran in ("streamer", "room"):
        ev = topk_eval_set(t["click"], index, gran, n_negatives=n_negatives, seed=seed, progress=progress)
        ev.save(out / f"topk_{gran}")
        res.counts[f"topk_{gran}_targets"] = ev.targets.height
        res.counts[f"topk_{gran}_mean_negatives"] = int(np.diff(ev.neg_offsets).mean()) if ev.targets.height else 0
    res.timings_s["topk"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    events = event_sequences(t["click"], t["like"], t["comment"], t["gift"])
    events.write_parquet(out / "events.parquet")
    windows = tpp_windows(events, window_days=window_days)
    windows.write_parquet(out / "tpp_windows.parquet")
    res.counts["events"] = events.height
    res.counts["tpp_sequences"] = windows.height
    res.timings_s["sequences"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(
        {"counts": res.counts, "oracle": res.oracle, "timings_s": res.timings_s}, indent=2))
    return res
