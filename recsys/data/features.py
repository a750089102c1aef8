"""Point-in-time ("as of t") aggregates: every feature for a sample at time t reads only events strictly before t.

The building blocks are :func:`count_before` and :func:`sum_before`, vectorised with one sort and binary searches,
so that a feature for 17 M samples is a few seconds. ``watch_live_time`` of a past click counts only once the
session is over (``timestamp + watch_live_time <= t``): the watch time of a click is the outcome of that click.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.timeutil import MS_PER_MINUTE, cst_hour, cst_weekday

_SHIFT = 36  # (dense key << 36) | (time - origin)


def _packable(*arrays: np.ndarray) -> bool:
    return all(a.size == 0 or (int(a.min()) >= 0 and int(a.max()) < 1 << 31) for a in arrays)


def _pack(pairs: np.ndarray) -> np.ndarray:
    return (pairs[:, 0].astype(np.int64) << 31) | pairs[:, 1].astype(np.int64)


def _composite(keys: np.ndarray, times: np.ndarray, q_keys: np.ndarray, q_times: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense-key composites for events and queries, plus each query's group start composite."""
    keys = np.asarray(keys)
    q_keys = np.asarray(q_keys)
    if keys.ndim == 2 and keys.shape[1] == 2 and _packable(keys, q_keys):  # pairs of ids: one int64 each
        keys, q_keys = _pack(keys), _pack(q_keys)
    if keys.ndim == 2:  # other multi-column keys: make them dense ids
        allk = np.concatenate([keys, q_keys])
        _, inv = np.unique(allk, axis=0, return_inverse=True)
    else:
        _, inv = np.unique(np.concatenate([keys, q_keys]), return_inverse=True)
    inv = inv.ravel().astype(np.int64)
    ek, qk = inv[: len(times)], inv[len(times):]
    all_t = np.concatenate([np.asarray(times, dtype=np.int64), np.asarray(q_times, dtype=np.int64)])
    origin = int(all_t.min()) - 1 if all_t.size else -1
    span = int(all_t.max(initial=origin)) - origin + 2
    if span >= 1 << _SHIFT:
        raise ValueError("timestamps span more than 2**36 ms")
    ec = (ek << _SHIFT) | (np.asarray(times, dtype=np.int64) - origin)
    qc = (qk << _SHIFT) | (np.asarray(q_times, dtype=np.int64) - origin)
    return ec, qc, qk << _SHIFT


def count_before(keys: np.ndarray, times: np.ndarray, q_keys: np.ndarray, q_times: np.ndarray,
                 inclusive: bool = False) -> np.ndarray:
    """For each query (key, t): number of events with the same key and time < t (<= t if ``inclusive``).

    ``keys`` is (n,) or (n, k) for composite keys (e.g. user x streamer); ``q_keys`` likewise. Returns int64 (m,).
    """
    ec, qc, qbase = _composite(keys, times, q_keys, q_times)
    ec.sort()
    side = "right" if inclusive else "left"
    return np.searchsorted(ec, qc, side=side) - np.searchsorted(ec, qbase, side="left")


def sum_before(keys: np.ndarray, times: np.ndarray, values: np.ndarray, q_keys: np.ndarray,
               q_times: np.ndarray, inclusive: bool = False) -> np.ndarray:
    """For each query: sum of ``values`` of events with the same key and time < t (<= t if ``inclusive``)."""
    ec, qc, qbase = _composite(keys, times, q_keys, q_times)
    order = np.argsort(ec, kind="stable")
    ec = ec[order]
    csum = np.r_[0.0, np.cumsum(np.asarray(values, dtype=np.float64)[order])]
    side = "right" if inclusive else "left"
    return csum[np.searchsorted(ec, qc, side=side)] - csum[np.searchsorted(ec, qbase, side="left")]


def past_behaviour_features(samples: pl.DataFrame, clicks: pl.DataFrame,
                            comments: pl.DataFrame | None = None, gifts: pl.DataFrame | None = None) -> pl.DataFrame:
    """History features of (user, streamer, t) samples, computed only from events strictly before t.

    Columns: ``u_clicks``, ``us_clicks``, ``s_clicks`` (click counts of the user, the user x streamer pair and the
    streamer), ``u_watch_min`` / ``us_watch_min`` (watch minutes of past sessions already over at t),
    ``u_comments``, ``u_gifts``. Row order follows ``samples``.
    """
    su = samples["user_id"].to_numpy()
    ss = samples["streamer_id"].to_numpy()
    stt = samples["timestamp"].to_numpy()
    cu = clicks["user_id"].to_numpy()
    cs = clicks["streamer_id"].to_numpy()
    ct = clicks["timestamp"].to_numpy()
    cw = clicks["watch_live_time"].to_numpy()
    pair = np.stack([cu, cs], axis=1)
    qpair = np.stack([su, ss], axis=1)
    ended = ct + cw  # a session's watch time is known only once it is over
    out = {
        "u_clicks": count_before(cu, ct, su, stt),
        "us_clicks": count_before(pair, ct, qpair, stt),
        "s_clicks": count_before(cs, ct, ss, stt),
        "u_watch_min": sum_before(cu, ended, cw / MS_PER_MINUTE, su, stt, inclusive=True),
        "us_watch_min": sum_before(pair, ended, cw / MS_PER_MINUTE, qpair, stt, inclusive=True),
    }
    for name, df in (("u_comments", comments), ("u_gifts", gifts)):
        if df is not None and df.height:
            out[name] = count_before(df["user_id"].to_numpy(), df["timestamp"].to_numpy(), su, stt)
        else:
            out[name] = np.zeros(su.size, dtype=np.int64)
    return pl.DataFrame(out)


def context_features(samples: pl.DataFrame, rooms: pl.DataFrame) -> pl.DataFrame:
    """Room context at t: minutes since the room started, live type, category, title id; CST hour and weekday."""
    joined = samples.select("live_id", "timestamp").join(
        rooms.select("live_id", "start_timestamp", "live_type", "live_content_category", "live_name_id"),
        on="live_id", how="left", maintain_order="left",
    )
    t = joined["timestamp"].to_numpy()
    start = joined["start_timestamp"].fill_null(joined["timestamp"]).to_numpy()
    return pl.DataFrame(
        {
            "room_age_min": np.maximum(t - start, 0) / MS_PER_MINUTE,
            "live_type": joined["live_type"].fill_null(0),
            "live_content_category": joined["live_content_category"].fill_null("<unk>"),
            "live_name_id": joined["live_name_id"].fill_null(-1),
            "hour": cst_hour(t),
            "weekday": cst_weekday(t),
        }
    )


def count_window(keys: np.ndarray, times: np.ndarray, q_keys: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 values: np.ndarray | None = None) -> np.ndarray:
    """Count (or sum of ``values``) of events with the same key and lo <= time <= hi (both ends included, as a
    store's ``zcount``)."""
    if values is None:
        return count_before(keys, times, q_keys, hi, inclusive=True) - count_before(keys, times, q_keys, lo)
    return sum_before(keys, times, values, q_keys, hi, inclusive=True) - sum_before(keys, times, values, q_keys, lo)


def last_before(keys: np.ndarray, times: np.ndarray, q_keys: np.ndarray, q_times: np.ndarray) -> np.ndarray:
    """For each query (key, t): the latest event time with the same key and time < t, or -1 when there is none."""
    ec, qc, qbase = _composite(keys, times, q_keys, q_times)
    order = np.argsort(ec, kind="stable")
    ec = ec[order]
    t_sorted = np.asarray(times, dtype=np.int64)[order]
    pos = np.searchsorted(ec, qc, side="left") - 1
    start = np.searchsorted(ec, qbase, side="left")
    found = pos >= start
    return np.where(found, t_sorted[np.clip(pos, 0, None)] if t_sorted.size else -1, -1)
