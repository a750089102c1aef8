"""Benchmarks behind ``recsys bench NAME``: each returns flat metrics; the CLI wraps them in the result envelope."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.datasets import oracle_scores
from recsys.bench import peak_rss_mb
from recsys.data.builders import attach_oracle, ctr_samples
from recsys.data.loaders import load_kuailive
from recsys.data.synthetic import SynthConfig, generate


def bench_synth(scale: str, seed: int = 0, keep_dir: str | None = None) -> tuple[str, dict[str, Any]]:
    """Time and memory of the synthetic generator, and the oracle AUC on the CTR test split.

    ``peak_rss_mb`` is read right after generation (before the oracle is scored). ``rows_per_s`` counts the rows
    of all eight CSVs plus the title-embedding rows.
    """
    tmp = None
    out = Path(keep_dir) if keep_dir else Path(tmp := tempfile.mkdtemp(prefix=f"recsys-synth-{scale}-"))
    try:
        t0 = time.perf_counter()
        res = generate(out, SynthConfig(scale=scale, seed=seed), progress=False)
        wall = time.perf_counter() - t0
        rss = peak_rss_mb()
        rows = sum(v for k, v in res.counts.items() if k != "room")  # room_rows are the room.csv rows
        data = load_kuailive(out, tables=["click", "negative"], with_embeddings=False)
        samples, _ = ctr_samples(data.tables["click"], data.tables["negative"])
        oracle = oracle_scores(attach_oracle(samples, out / "truth"), "test")
        metrics: dict[str, Any] = {
            "rows_per_s": rows / wall,
            "wall_s": wall,
            "peak_rss_mb": rss,
            "oracle.auc": oracle["auc"],
            "oracle.uauc": oracle["uauc"],
            "oracle.logloss": oracle["logloss"],
            "ctr": float(np.mean(samples["label"].to_numpy())),
        }
        metrics.update({f"rows.{k}": v for k, v in res.counts.items()})
        return "cpu", metrics
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


#: name -> function(scale, **options) -> (device, metrics)
BENCHMARKS: dict[str, Callable[..., tuple[str, dict[str, Any]]]] = {
    "synth": bench_synth,
}

__all__ = ["BENCHMARKS", "bench_synth"]
