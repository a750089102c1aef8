"""Replay logged traffic against the ranking service: the request bodies of a time range of KuaiLive, grouped into
feed sessions, sent in time order with the session state (request index, fatigue) the feed server would keep.

A request is made wherever the log has a user's impression (a row of ``click`` or ``negative``): the moments the app
asked for content. Impressions of a user more than ``session_gap_min`` apart start a new session. The fatigue sent
with request ``i`` is ``sum_j a_j exp(-(t_i - t_j) / fatigue_minutes)`` over the session's earlier insertions ``a_j``
decided by the service itself (the environment's definition, :mod:`recsys.feed.env`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.data.loaders import KuaiLiveData
from recsys.feed.env import FeedEnvConfig
from recsys.timeutil import MS_PER_MINUTE


@dataclass(frozen=True)
class ReplayRequest:
    user_id: int
    time_ms: int
    session_id: str
    request_index: int


def logged_requests(data: KuaiLiveData, start_ms: int, end_ms: int, session_gap_min: float = 30.0,
                    max_requests: int | None = None) -> list[ReplayRequest]:
    """Requests at the impressions with ``start_ms <= t < end_ms``, in time order (see the module docstring)."""
    parts = [data.tables[name].select("user_id", "timestamp") for name in ("click", "negative")
             if name in data.tables]
    if not parts:
        raise ValueError("the dataset has neither a click nor a negative table to take request times from")
    imp = (pl.concat(parts).filter((pl.col("timestamp") >= start_ms) & (pl.col("timestamp") < end_ms))
           .unique().sort("user_id", "timestamp"))
    u, t = imp["user_id"].to_numpy(), imp["timestamp"].to_numpy()
    new = np.ones(u.size, bool)
    new[1:] = (u[1:] != u[:-1]) | (t[1:] - t[:-1] > session_gap_min * MS_PER_MINUTE)
    session = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    index = np.arange(u.size) - first[session]
    reqs = [ReplayRequest(int(a), int(b), f"{int(a)}-{int(s)}", int(i)) for a, b, s, i in zip(u, t, session, index)]
    reqs.sort(key=lambda r: (r.time_ms, r.user_id))
    return reqs[:max_requests] if max_requests is not None else reqs


def request_body(r: ReplayRequest, fatigue: float = 0.0, k: int = 10) -> dict:
    return {"user_id": r.user_id, "k": k, "time_ms": r.time_ms,
            "context": {"session_id": r.session_id, "request_index": r.request_index, "fatigue": round(fatigue, 6)}}


def replay(requests: list[ReplayRequest], post: Callable[[dict], dict], k: int = 10,
           fatigue_minutes: float | None = None) -> list[dict]:
    """Send ``requests`` in order through ``post(body) -> response body``, carrying each session's fatigue."""
    tau = (FeedEnvConfig().fatigue_minutes if fatigue_minutes is None else fatigue_minutes) * MS_PER_MINUTE
    inserted: dict[str, list[int]] = {}
    out = []
    for r in requests:
        times = inserted.setdefault(r.session_id, [])
        fatigue = sum(math.exp(-(r.time_ms - s) / tau) for s in times)
        resp = post(request_body(r, fatigue, k))
        if resp.get("allocation", {}).get("insert"):
            times.append(r.time_ms)
        out.append(resp)
    return out


__all__ = ["ReplayRequest", "logged_requests", "replay", "request_body"]
