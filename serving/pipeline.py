"""retrieve -> rank -> allocate for one request, on one :class:`~serving.bundle.ServingBundle`.

Stages (each timed into ``recsys_stage_seconds``):

1. ``features``: the user's recent events and TPP features from the store (cold start when the store is down).
2. ``retrieve``: GRank user vector -> exact MIPS over the items live now -> ``k1`` candidates.
3. ``prerank``: the GRank cross-attention ranker rescores them (with the streamers' day clicks from the store) and
   keeps ``k2`` (generator order for a retriever without a ranker).
4. ``rank``: the multi-task ranker scores the ``k2`` rooms; the final order is by P(click).
5. ``allocate``: the policy's P(insert the top room) on the environment's state features, an action drawn with a
   per-request seed, its propensity.
6. ``log``: the decision record to the decision log.

When the store is unavailable the request is served by the popularity fallback: live rooms by recent entries at the
last sync, no insertion (propensity 1), ``fallback: true`` in the response and in ``recsys_fallbacks_total``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable

import numpy as np
import torch

from models.ranking.inputs import to_input
from models.retrieval.grank import GRank
from models.retrieval.inputs import QueryBatch
from recsys.feed.decision_log import DecisionRecord, DecisionSink
from recsys.stream.features import LiveRoom
from serving.bundle import ServingBundle
from serving.config import ServeConfig
from serving.features import allocation_features
from serving.metrics import ServingMetrics
from serving.schemas import Allocation, RankedRoom, RecommendRequest, RecommendResponse
from serving.store_reader import StoreReader, UserState


class _Timer:
    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.metrics.stage_seconds.labels(stage).observe(now - self._t)
        self.ms[stage] = round((now - self._t) * 1e3, 3)
        self._t = now


class Recommender:
    """The request path. ``bundle`` is replaced as a whole by :meth:`swap` (hot reload)."""

    def __init__(self, cfg: ServeConfig, bundle: ServingBundle, reader: StoreReader, metrics: ServingMetrics,
                 sink: DecisionSink, clock: Callable[[], int] | None = None) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.reader = reader
        self.metrics = metrics
        self.sink = sink
        self.clock = clock

    def swap(self, bundle: ServingBundle) -> ServingBundle:
        old, self.bundle = self.bundle, bundle
        return old

    def default_time(self, bundle: ServingBundle) -> int:
        """The stream's event time: the latest room start in the live set (wall clock when nothing is live)."""
        if self.clock is not None:
            return int(self.clock())
        starts = [r.start for r in bundle.catalog.rooms.values()]
        return max(starts) if starts else int(time.time() * 1000)

    # --------------------------------------------------------------------------------------------------- stages
    def _retrieve(self, b: ServingBundle, state: UserState) -> tuple[QueryBatch, torch.Tensor, np.ndarray,
                                                                     np.ndarray, list[LiveRoom]]:
        q = QueryBatch.from_arrays(b.retrieval.query(state), b.device)
        u = b.retriever.model.user_vector(q)
        rows, scores, rooms = b.catalog.search(u[0].float().cpu().numpy(), self.cfg.k1, state.now)
        return q, u, rows, scores, rooms

    def _prerank(self, b: ServingBundle, q: QueryBatch, u: torch.Tensor, rows: np.ndarray, scores: np.ndarray,
                 rooms: list[LiveRoom], now: int) -> tuple[list[LiveRoom], np.ndarray]:
        model = b.retriever.model
        if isinstance(model, GRank) and model.ranker is not None and rows.size:
            clicks = self.reader.streamer_day_clicks([r.streamer_id for r in rooms], now)
            pop = torch.as_tensor(np.log1p(np.zeros(rows.size) if clicks is None else clicks), dtype=torch.float32,
                                  device=b.device)[None]
            scores = model.rank(q, u, torch.as_tensor(rows, device=b.device)[None], cand_pop=pop)[0]
            scores = scores.float().cpu().numpy()
        order = np.argsort(-scores, kind="stable")[: self.cfg.k2]
        return [rooms[i] for i in order], scores[order]

    def _rank(self, b: ServingBundle, state: UserState, rooms: list[LiveRoom], scores: np.ndarray
              ) -> tuple[list[LiveRoom], np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        entries = self.reader.room_entries([r.live_id for r in rooms], state.now) if rooms else None
        if b.ranker is None or b.ranking is None or not rooms:
            return rooms, scores, None, None, entries
        x = to_input(b.ranking.arrays(state, rooms, entries), user_of=np.zeros(len(rooms), np.int64))
        pred = b.ranker.model.predict(x.to(b.device))
        p = pred["click"].float().cpu().numpy()
        w = pred["watch_s"].float().cpu().numpy()
        order = np.argsort(-p, kind="stable")
        return ([rooms[i] for i in order], p[order], p[order], w[order],
                None if entries is None else entries[order])

    def _allocate(self, b: ServingBundle, req: RecommendRequest, now: int, top: LiveRoom | None,
                  p_click: float, watch_s: float, entries: np.ndarray | None, fallback: bool
                  ) -> tuple[Allocation, np.ndarray, int]:
        ctx = req.context
        group = ctx.group if ctx.group is not None else b.activity_group(req.user_id)
        group = min(group, max(b.n_groups - 1, 0))
        log_pop = 0.0
        if entries is not None and entries.size:
            log_pop = math.log((entries[0] + 1.0) / (float(entries.mean()) + 1.0))
        x = allocation_features(b.feature_names, p_click=p_click, watch_min=watch_s / 60.0, log_popularity=log_pop,
                                fatigue=ctx.fatigue, request_index=ctx.request_index, now=now,
                                has_candidate=top is not None, group=group)
        if top is None or b.policy is None or fallback:
            policy = "fallback" if fallback else b.policy_name
            return Allocation(insert=False, live_id=None, prob_insert=0.0, propensity=1.0, policy=policy), x, group
        prob = float(np.clip(b.policy(x)[0], 0.0, 1.0))
        u = np.random.default_rng([self.cfg.seed, req.user_id, now, ctx.request_index]).random()
        insert = bool(u < prob)
        return (Allocation(insert=insert, live_id=top.live_id, prob_insert=prob,
                           propensity=prob if insert else 1.0 - prob, policy=b.policy_name), x, group)

    # --------------------------------------------------------------------------------------------------- request
    @torch.no_grad()
    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        b = self.bundle  # one bundle for the whole request (a reload swaps the reference)
        start = time.perf_counter()
        timer = _Timer(self.metrics)
        now = int(req.time_ms) if req.time_ms is not None else self.default_time(b)
        k = min(req.k or self.cfg.default_k, self.cfg.max_k)
        request_id = uuid.uuid4().hex
        state = self.reader.user_state(req.user_id, now)
        fallback = not state.from_store
        cold = fallback or not (b.retrieval.known_user(req.user_id) or state.has_history)
        timer.lap("features")
        p = w = entries = None
        if fallback:
            self.metrics.fallbacks.labels("store_unavailable").inc()
            rooms = b.catalog.popular(max(k, self.cfg.k2), now)
            scores = np.array([float(b.catalog.popularity.get(r.live_id, 0)) for r in rooms])
            entries = np.array([b.catalog.popularity.get(r.live_id, 0) for r in rooms], np.int64)
        else:
            q, u, rows, gen, rooms = self._retrieve(b, state)
            timer.lap("retrieve")
            rooms, scores = self._prerank(b, q, u, rows, gen, rooms, now)
            timer.lap("prerank")
            rooms, scores, p, w, entries = self._rank(b, state, rooms, scores)
            timer.lap("rank")
        top = rooms[0] if rooms else None
        alloc, x, group = self._allocate(b, req, now, top, float(p[0]) if p is not None and top else 0.0,
                                         float(w[0]) if w is not None and top else 0.0, entries, fallback)
        timer.lap("allocate")
        items = [RankedRoom(live_id=r.live_id, streamer_id=r.streamer_id, score=float(s),
                            p_click=None if p is None else float(p[i]), watch_s=None if w is None else float(w[i]))
                 for i, (r, s) in enumerate(zip(rooms[:k], scores[:k]))]
        session = req.context.session_id or request_id
        self.sink.write(DecisionRecord(
            request_id=request_id, user_id=req.user_id, timestamp=now, session_id=session,
            step=req.context.request_index, group=group, live_id=top.live_id if top else 0,
            features=[float(v) for v in x[0]], feature_names=list(b.feature_names), action=int(alloc.insert),
            propensity=alloc.propensity, prob_insert=alloc.prob_insert, policy=alloc.policy,
            candidates=[it.live_id for it in items], scores=[it.score for it in items], fallback=fallback))
        timer.lap("log")
        self.metrics.decisions.labels("insert" if alloc.insert else "skip").inc()
        self.metrics.requests.labels("fallback" if fallback else ("cold_start" if cold else "ok")).inc()
        self.metrics.request_seconds.observe(time.perf_counter() - start)
        return RecommendResponse(request_id=request_id, user_id=req.user_id, time_ms=now, items=items,
                                 allocation=alloc, fallback=fallback, cold_start=cold, models=dict(b.versions),
                                 timings_ms=timer.ms)


__all__ = ["Recommender"]
