"""Dataset builders following the KuaiLive benchmark protocols (brief §10).

- :func:`ctr_samples`: clicks (label 1) and negatives (label 0), global chronological 8:1:1 split.
- :func:`leave_last_out` + :func:`topk_eval_set`: per-user leave-one-out targets with 10,000 negatives drawn from
  the entities live at the target's time (streamer or room granularity), stored so every model sees the same.
- :func:`event_sequences`: every user's marked events (click, like, comment, gift) in time order.
- :func:`tpp_windows`: those sequences cut into CST-day windows for temporal point processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from recsys.data.live_index import LiveIndex
from recsys.data.schema import EVENT_TYPE_ID
from recsys.data.synthetic import drift_fraction
from recsys.metrics import auc, logloss, uauc
from recsys.timeutil import MS_PER_MINUTE, WINDOW_START_MS, cst_day, cst_midnight

Granularity = Literal["streamer", "room"]
SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------------------------- CTR
def chronological_split(timestamps: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
                        ) -> tuple[np.ndarray, int, int]:
    """Split codes (0 train, 1 valid, 2 test) cutting at the time quantiles; ties go to the earlier split."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    ts = np.asarray(timestamps)
    q1 = int(np.quantile(ts, fractions[0], method="lower"))
    q2 = int(np.quantile(ts, fractions[0] + fractions[1], method="lower"))
    code = np.where(ts <= q1, 0, np.where(ts <= q2, 1, 2)).astype(np.int8)
    return code, q1, q2


def ctr_samples(clicks: pl.DataFrame, negatives: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """All exposures with labels and the chronological split.

    Columns: user_id, live_id, streamer_id, timestamp, label (1 click / 0 negative), watch_live_time (label-side
    only: never a feature), split ('train'|'valid'|'test'). A negative identical to a click on
    (user, live, timestamp) is dropped and counted (the brief's overlap pitfall). Sorted by timestamp.
    """
    key = ["user_id", "live_id", "timestamp"]
    pos = clicks.select(*key, "streamer_id", "watch_live_time").with_columns(pl.lit(1, pl.Int8).alias("label"))
    neg = negatives.select(*key, "streamer_id").join(pos.select(key), on=key, how="anti")
    overlap = negatives.height - neg.height
    neg = neg.with_columns(pl.lit(None, pl.Int64).alias("watch_live_time"), pl.lit(0, pl.Int8).alias("label"))
    df = pl.concat([pos, neg.select(pos.columns)]).sort("timestamp", "user_id", "live_id")
    code, q1, q2 = chronological_split(df["timestamp"].to_numpy())
    df = df.with_columns(pl.Series("split", np.asarray(SPLITS)[code]).cast(pl.Categorical))
    info = {"overlap_dropped": overlap, "cut_valid_ms": q1, "cut_test_ms": q2}
    return df.select("user_id", "live_id", "streamer_id", "timestamp", "label", "watch_live_time", "split"), info


#: optional truth columns (generators since the oracle decomposition) -> sample column names
_ORACLE_PARTS = {"click_noise": "noise_true", "drift_slope": "drift_slope_true"}


def attach_oracle(samples: pl.DataFrame, truth_dir: str | Path) -> pl.DataFrame:
    """Add ``p_true``, the generator's click probability of each exposure (synthetic data only), and, when the truth
    has them, ``noise_true`` (the exposure's logit noise) and ``drift_slope_true`` (d logit / d drift fraction):
    the parts :func:`oracle_scores_of` takes apart."""
    path = Path(truth_dir) / "exposures.parquet"
    have = set(pl.read_parquet_schema(path))
    parts = [c for c in _ORACLE_PARTS if c in have]
    truth = pl.read_parquet(path, columns=["user_id", "live_id", "timestamp", "p_click", *parts])
    truth = truth.unique(subset=["user_id", "live_id", "timestamp"], keep="first", maintain_order=True)
    return samples.join(truth.rename({"p_click": "p_true", **{c: _ORACLE_PARTS[c] for c in parts}}),
                        on=["user_id", "live_id", "timestamp"], how="left", maintain_order="left")


def oracle_scores_of(samples: pl.DataFrame, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The oracle's scores of ``samples[rows]`` (after :func:`attach_oracle`; empty without ground truth, and any
    score with a missing value is left out):

    - ``true``: ``p_true``, the generator's click probability. It includes the exposure's logit noise, which nothing
      observable predicts.
    - ``noise_free``: ``logit(p_true) - noise``: the best any model can do, knowing every latent factor.
    - ``static_user``: ``noise_free`` with every user's taste frozen at the mean drift fraction of the ``train`` rows
      (``logit - (frac(t) - mean_train_frac) * drift_slope``): the ceiling of a model whose user representation
      does not move with time, such as a fitted user-id embedding alone.
    """
    if "p_true" not in samples.columns:
        return {}
    p = samples["p_true"].to_numpy().astype(np.float64)
    out: dict[str, np.ndarray] = {}
    if not np.isnan(p[rows]).any():
        out["true"] = p[rows]
    if "noise_true" not in samples.columns or "drift_slope_true" not in samples.columns:
        return out
    q = np.clip(p[rows], 1e-12, 1 - 1e-12)
    clean = np.log(q / (1 - q)) - samples["noise_true"].to_numpy().astype(np.float64)[rows]
    if np.isnan(clean).any():
        return out
    out["noise_free"] = clean
    train = (samples["split"] == "train").to_numpy()
    if train.any():
        frac = drift_fraction(samples["timestamp"].to_numpy())
        slope = samples["drift_slope_true"].to_numpy().astype(np.float64)
        out["static_user"] = clean - (frac[rows] - frac[train].mean()) * slope[rows]
    return out


def oracle_metrics(samples: pl.DataFrame, rows: np.ndarray) -> dict[str, float]:
    """The oracle's metrics on ``samples[rows]`` against their ``label``: ``auc``, ``uauc`` and ``logloss`` of the
    true probability, and ``auc_noise_free`` / ``auc_static_user`` (see :func:`oracle_scores_of`); a score the
    samples cannot give is left out."""
    scores = oracle_scores_of(samples, rows)
    y = samples["label"].to_numpy()[rows].astype(np.int64)
    out: dict[str, float] = {}
    if "true" in scores:
        p = scores["true"]
        out.update(auc=auc(y, p), uauc=uauc(samples["user_id"].to_numpy()[rows], y, p), logloss=logloss(y, p))
    for name in ("noise_free", "static_user"):
        if name in scores:
            out[f"auc_{name}"] = auc(y, scores[name])
    return out


# ---------------------------------------------------------------------------------------------------------- top-K
def leave_last_out(clicks: pl.DataFrame, granularity: Granularity) -> pl.DataFrame:
    """Per-user chronological leave-one-out on clicks (ties broken by live_id).

    Returns user_id, item_id, timestamp, split: the last click is 'test', the second-last 'valid', the rest 'train';
    users with a single click go to 'test' only (as the official ``preprocess.py``).
    """
    item = "streamer_id" if granularity == "streamer" else "live_id"
    df = clicks.select("user_id", pl.col(item).alias("item_id"), "timestamp", "live_id").sort(
        "user_id", "timestamp", "live_id"
    )
    df = df.with_columns(
        pl.int_range(pl.len(), 0, -1).over("user_id").alias("_from_end"),  # 1 for the last click
        pl.len().over("user_id").alias("_n"),
    )
    split = (
        pl.when(pl.col("_from_end") == 1).then(pl.lit("test"))
        .when((pl.col("_from_end") == 2) & (pl.col("_n") >= 2)).then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    return df.with_columns(split.alias("split")).select("user_id", "item_id", "timestamp", "split")


@dataclass
class TopKEvalSet:
    """Leave-one-out targets with their sampled live-at-t negatives (ragged, stored as offsets + items)."""

    granularity: str
    targets: pl.DataFrame  # user_id, item_id, timestamp, split, n_live (pool size incl. target)
    neg_offsets: np.ndarray  # (n_targets + 1,)
    neg_items: np.ndarray  # (total,)
    n_negatives: int
    seed: int
    exclude_history: bool

    def negatives(self, i: int) -> np.ndarray:
        return self.neg_items[self.neg_offsets[i]: self.neg_offsets[i + 1]]

    def padded(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(items, mask) of shape (n, max_negatives) for a batch of target rows (all by default)."""
        rows = np.arange(self.targets.height) if rows is None else np.asarray(rows)
        lens = self.neg_offsets[rows + 1] - self.neg_offsets[rows]
        width = int(lens.max(initial=0))
        items = np.zeros((rows.size, width), dtype=self.neg_items.dtype)
        mask = np.arange(width)[None, :] < lens[:, None]
        src = np.concatenate([np.arange(self.neg_offsets[r], self.neg_offsets[r + 1]) for r in rows]) if rows.size else []
        items[mask] = self.neg_items[src]
        return items, mask

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.targets.write_parquet(d / "targets.parquet")
        np.save(d / "neg_offsets.npy", self.neg_offsets)
        np.save(d / "neg_items.npy", self.neg_items)
        meta = {"granularity": self.granularity, "n_negatives": self.n_negatives, "seed": self.seed,
                "exclude_history": self.exclude_history}
        (d / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "TopKEvalSet":
        d = Path(directory)
        meta = json.loads((d / "meta.json").read_text())
        return cls(targets=pl.read_parquet(d / "targets.parquet"), neg_offsets=np.load(d / "neg_offsets.npy"),
                   neg_items=np.load(d / "neg_items.npy"), **meta)


def topk_eval_set(
    clicks: pl.DataFrame,
    index: LiveIndex,
    granularity: Granularity,
    n_negatives: int = 10_000,
    seed: int = 42,
    exclude_history: bool = False,
    splits: tuple[str, ...] = ("valid", "test"),
    progress: bool = False,
) -> TopKEvalSet:
    """Sample, for each leave-one-out target at time t, ``n_negatives`` entities live at t (uniform, without
    replacement, seeded per (seed, user, split)); the whole pool when it is smaller. The target is kept even when
    rounding puts it outside its room interval. ``exclude_history`` drops the user's earlier clicked items.
    """
    loo = leave_last_out(clicks, granularity)
    targets = loo.filter(pl.col("split").is_in(list(splits))).sort("user_id", "split")
    history = None
    if exclude_history:
        history = dict(
            loo.filter(pl.col("split") == "train").group_by("user_id").agg(pl.col("item_id").unique())
            .iter_rows()
        )
    offsets = np.zeros(targets.height + 1, dtype=np.int64)
    chunks: list[np.ndarray] = []
    n_live = np.zeros(targets.height, dtype=np.int64)
    rows = targets.select("user_id", "item_id", "timestamp", "split").iter_rows()
    for i, (user, item, ts, split) in enumerate(tqdm(rows, total=targets.height, disable=not progress,
                                                     desc=f"negatives ({granularity})")):
        live = index.live_rows(ts)
        pool = np.unique(index.streamer_id[live]) if granularity == "streamer" else np.sort(index.live_id[live])
        n_live[i] = pool.size + int(not np.any(pool == item))
        pool = pool[pool != item]
        if history is not None and user in history:
            pool = np.setdiff1d(pool, np.asarray(history[user]), assume_unique=True)
        rng = np.random.default_rng([seed, int(user), SPLITS.index(split)])
        negs = pool if pool.size <= n_negatives else rng.choice(pool, size=n_negatives, replace=False)
        chunks.append(negs.astype(np.int64))
        offsets[i + 1] = offsets[i] + negs.size
    neg_items = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    return TopKEvalSet(
        granularity=granularity, targets=targets.with_columns(pl.Series("n_live", n_live)),
        neg_offsets=offsets, neg_items=neg_items, n_negatives=n_negatives, seed=seed,
        exclude_history=exclude_history,
    )


# ---------------------------------------------------------------------------------------------------------- sequences
def event_sequences(clicks: pl.DataFrame, likes: pl.DataFrame, comments: pl.DataFrame,
                    gifts: pl.DataFrame) -> pl.DataFrame:
    """All marked events in one long table sorted by (user, time, mark order click < like < comment < gift).

    Columns: user_id, timestamp, type (0 click, 1 like, 2 comment, 3 gift), live_id, streamer_id,
    watch_live_time (clicks; label-side, never an input before ``timestamp + watch``), gift_price (gifts).
    """
    base = ["user_id", "timestamp", "live_id", "streamer_id"]

    def part(df: pl.DataFrame, name: str) -> pl.DataFrame:
        return df.select(
            *base,
            pl.lit(EVENT_TYPE_ID[name], pl.Int8).alias("type"),
            (pl.col("watch_live_time") if "watch_live_time" in df.columns else pl.lit(None, pl.Int64)).alias("watch_live_time"),
            (pl.col("gift_price") if "gift_price" in df.columns else pl.lit(None, pl.Int64)).alias("gift_price"),
        )

    parts = [part(clicks, "click"), part(likes, "like"), part(comments, "comment"), part(gifts, "gift")]
    return pl.concat(parts).sort("user_id", "timestamp", "type", "live_id").select(
        "user_id", "timestamp", "type", "live_id", "streamer_id", "watch_live_time", "gift_price"
    )


def tpp_windows(events: pl.DataFrame, window_days: int = 3, max_len: int = 256) -> pl.DataFrame:
    """Cut event sequences into CST-day windows: one row per (window, user).

    Ties are broken by the mark order of :func:`event_sequences` plus a 1 ms offset per tied event, so times are
    strictly increasing. Columns: window, user_id, time_min (list of minutes since the window start), type (list),
    timestamp (list of the events' own epoch ms, before the tie offsets), n_events, truncated (True when the last
    ``max_len`` events were kept).
    """
    if window_days < 1:
        raise ValueError(f"window_days must be >= 1, got {window_days}")
    day0 = int(cst_day(WINDOW_START_MS))
    ev = events.sort("user_id", "timestamp", "type", "live_id").with_columns(
        (pl.col("timestamp") + pl.int_range(pl.len()).over("user_id", "timestamp")).alias("_t"),
    )
    ev = ev.with_columns(
        ((pl.col("timestamp").map_batches(lambda s: pl.Series(cst_day(s.to_numpy()) - day0)) // window_days)
         .cast(pl.Int32).alias("window"))
    )
    ev = ev.with_columns(
        ((pl.col("_t") - pl.col("window").map_batches(
            lambda w: pl.Series(cst_midnight(day0 + w.to_numpy().astype(np.int64) * window_days))))
         / MS_PER_MINUTE).alias("time_min")
    )
    out = ev.group_by("window", "user_id", maintain_order=True).agg(
        pl.col("time_min").tail(max_len), pl.col("type").tail(max_len), pl.col("timestamp").tail(max_len),
        pl.len().alias("n_events"),
    )
    return out.with_columns((pl.col("n_events") > max_len).alias("truncated")).sort("window", "user_id")


__all__ = [
    "SPLITS", "TopKEvalSet", "attach_oracle", "chronological_split", "ctr_samples", "event_sequences",
    "leave_last_out", "oracle_metrics", "oracle_scores_of", "topk_eval_set", "tpp_windows",
]
