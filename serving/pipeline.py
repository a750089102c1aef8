"""retrieve -> rank -> allocate for a batch of requests, on one :class:`~serving.bundle.ServingBundle`.

Stages (each timed into ``recsys_stage_seconds``):

1. ``features``: the user's recent events and TPP features from the store (cold start when the store is down).
2. ``retrieve``: GRank user vector -> exact MIPS over the items live now -> ``k1`` candidates.
3. ``prerank``: the GRank cross-attention ranker rescores them (with the streamers' day clicks from the store) and
   keeps ``k2`` (generator order for a retriever without a ranker).
4. ``rank``: the multi-task ranker scores the ``k2`` rooms; the final order is by P(click).
5. ``allocate``: the policy's P(insert the top room) on the environment's state features, shifted by the exposure
   pacer (:mod:`serving.pacing`) so that the insertion ratio holds the policy's allocation target, an action drawn
   with a per-request seed, its propensity.
6. ``log``: the decision record to the decision log.

When the store is unavailable the request is served by the popularity fallback: live rooms by recent entries at the
last sync, no insertion (propensity 1), ``fallback: true`` in the response and in ``recsys_fallbacks_total``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch

from models.ranking.inputs import to_input
from models.retrieval.grank import GRank
from models.retrieval.inputs import QueryBatch
from recsys.feed.decision_log import DecisionRecord, DecisionSink
from recsys.stream.features import LiveRoom
from serving.bundle import ServingBundle
from serving.config import ServeConfig
from serving.features import allocation_features, concat_features, stack_queries
from serving.metrics import ServingMetrics
from serving.pacing import InsertionPacer
from serving.schemas import Allocation, RankedRoom, RecommendRequest, RecommendResponse
from serving.store_reader import StoreReader, UserState

log = logging.getLogger(__name__)


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


@dataclass(eq=False)
class _Job:
    """One request's state through the stages."""

    req: RecommendRequest
    now: int
    state: UserState
    cold: bool = False
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rooms: list[LiveRoom] = field(default_factory=list)
    p: np.ndarray | None = None
    w: np.ndarray | None = None
    entries: np.ndarray | None = None
    day_clicks: dict[int, int] = field(default_factory=dict)  # streamer id -> clicks in the last 24 h (store)
    group: int = 0
    x: np.ndarray | None = None
    alloc: Allocation | None = None

    @property
    def fallback(self) -> bool:
        return not self.state.from_store


class Recommender:
    """The request path. ``bundle`` is replaced as a whole by :meth:`swap` (hot reload)."""

    def __init__(self, cfg: ServeConfig, bundle: ServingBundle, reader: StoreReader, metrics: ServingMetrics,
                 sink: DecisionSink) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.reader = reader
        self.metrics = metrics
        self.sink = sink
        self.pacer = self._new_pacer(bundle)

    def swap(self, bundle: ServingBundle) -> ServingBundle:
        """Serve ``bundle`` from now on (a new policy starts a new pacer); returns the previous bundle."""
        self.pacer = self._new_pacer(bundle)
        old, self.bundle = self.bundle, bundle
        return old

    def _new_pacer(self, bundle: ServingBundle) -> InsertionPacer | None:
        target = self.cfg.alloc_target if self.cfg.alloc_target is not None else bundle.policy_target
        if not self.cfg.alloc_pacing or target is None or bundle.policy is None:
            return None
        return InsertionPacer(target)

    def default_time(self, bundle: ServingBundle) -> int:
        """The stream's event time: the latest room start in the live set (wall clock when nothing is live)."""
        latest = bundle.catalog.latest_start
        return latest if latest is not None else int(time.time() * 1000)

    # --------------------------------------------------------------------------------------------------- stages
    def _retrieve(self, b: ServingBundle, jobs: list[_Job]) -> tuple[QueryBatch, torch.Tensor]:
        q = QueryBatch.from_arrays(stack_queries([b.retrieval.query(j.state) for j in jobs]), b.device)
        u = b.retriever.model.user_vector(q)
        found = b.catalog.search(u.float().cpu().numpy(), self.cfg.k1, [j.now for j in jobs])
        for j, (rows, scores, rooms) in zip(jobs, found):
            j.rows, j.scores, j.rooms = rows, scores, rooms
        return q, u

    def _prerank(self, b: ServingBundle, jobs: list[_Job], q: QueryBatch, u: torch.Tensor) -> None:
        """GRank's ranker over every request's candidates at once (padded to the longest list), then top-``k2``."""
        model = b.retriever.model
        width = max(len(j.rooms) for j in jobs)
        if isinstance(model, GRank) and model.ranker is not None and width:
            cand = np.zeros((len(jobs), width), np.int64)
            pop = np.zeros((len(jobs), width), np.float32)
            gen = np.zeros((len(jobs), width), np.float32)
            valid = np.zeros((len(jobs), width), bool)
            for i, j in enumerate(jobs):
                n = len(j.rooms)
                cand[i, :n], gen[i, :n], valid[i, :n] = j.rows, j.scores, True
                clicks = self.reader.streamer_day_clicks([r.streamer_id for r in j.rooms], j.now) if n else None
                if clicks is not None:
                    pop[i, :n] = np.log1p(clicks)
                    j.day_clicks = {r.streamer_id: int(c) for r, c in zip(j.rooms, clicks)}
            pop_t = torch.as_tensor(pop, device=b.device)
            ranked = model.rank(q, u, torch.as_tensor(cand, device=b.device), cand_pop=pop_t)
            # the generator's MIPS scores (and the popularity) take part when the model fuses them (cfg.fusion)
            scores = model.rerank(ranked, torch.as_tensor(gen, device=b.device),
                                  torch.as_tensor(valid, device=b.device), pop_t).float().cpu().numpy()
            for i, j in enumerate(jobs):
                j.scores = scores[i, :len(j.rooms)]
        for j in jobs:
            order = np.argsort(-j.scores, kind="stable")[: self.cfg.k2]
            j.rooms, j.scores = [j.rooms[i] for i in order], j.scores[order]

    def _rank(self, b: ServingBundle, jobs: list[_Job]) -> None:
        """The multi-task ranker over every request's candidates as one batch; final order by P(click)."""
        for j in jobs:
            j.entries = self.reader.room_entries([r.live_id for r in j.rooms], j.now) if j.rooms else None
        todo = [j for j in jobs if j.rooms]
        if b.ranker is None or b.ranking is None or not todo:
            return
        arrays, user_of, offsets = concat_features([b.ranking.arrays(j.state, j.rooms, j.entries) for j in todo])
        pred = b.ranker.model.predict(to_input(arrays, user_of=user_of).to(b.device))
        p_all = pred["click"].float().cpu().numpy()
        w_all = pred["watch_s"].float().cpu().numpy()
        for j, lo, hi in zip(todo, offsets[:-1], offsets[1:]):
            p, w = p_all[lo:hi], w_all[lo:hi]
            order = np.argsort(-p, kind="stable")
            j.rooms, j.scores, j.p, j.w = [j.rooms[i] for i in order], p[order], p[order], w[order]
            if j.entries is not None:
                j.entries = j.entries[order]

    def _top_log_popularity(self, j: _Job) -> float:
        """``log1p`` of the top room's streamer's clicks in the last 24 h (the allocator's ``log_popularity``, as
        :class:`pipelines.allocator_state.RankerEstimator` computes it offline); the ranker stage's read when it
        made one, else one store read; 0 when the store does not answer."""
        sid = j.rooms[0].streamer_id
        if sid not in j.day_clicks:
            clicks = self.reader.streamer_day_clicks([sid], j.now)
            if clicks is None:
                return 0.0
            j.day_clicks[sid] = int(clicks[0])
        return math.log1p(j.day_clicks[sid])

    def _allocate(self, b: ServingBundle, jobs: list[_Job], pacer: InsertionPacer | None) -> None:
        """The allocator's state for every request, one policy call, an action drawn per request."""
        xs = []
        for j in jobs:
            ctx = j.req.context
            group = ctx.group if ctx.group is not None else b.activity_group(j.req.user_id)
            j.group = min(group, max(b.n_groups - 1, 0))
            top = bool(j.rooms)
            log_pop = self._top_log_popularity(j) if top and not j.fallback else 0.0
            xs.append(allocation_features(
                b.feature_names, p_click=float(j.p[0]) if j.p is not None and top else 0.0,
                watch_min=float(j.w[0]) / 60.0 if j.w is not None and top else 0.0, log_popularity=log_pop,
                fatigue=ctx.fatigue, request_index=ctx.request_index, now=j.now, has_candidate=top, group=j.group))
        x = np.vstack(xs)
        decide = [i for i, j in enumerate(jobs) if j.rooms and not j.fallback and b.policy is not None]
        probs = np.clip(b.policy(x[decide]), 0.0, 1.0) if decide else np.zeros(0)
        if pacer is not None and decide:
            probs = pacer.adjust(probs)
            self.metrics.pacing_offset.set(pacer.update(probs))
        prob_of = dict(zip(decide, probs.tolist()))
        for i, j in enumerate(jobs):
            j.x = x[i]
            if i not in prob_of:
                policy = "fallback" if j.fallback else b.policy_name
                j.alloc = Allocation(insert=False, live_id=None, prob_insert=0.0, propensity=1.0, policy=policy)
                continue
            prob = prob_of[i]
            u = np.random.default_rng([self.cfg.seed, j.req.user_id, j.now, j.req.context.request_index]).random()
            insert = bool(u < prob)
            j.alloc = Allocation(insert=insert, live_id=j.rooms[0].live_id, prob_insert=prob,
                                 propensity=prob if insert else 1.0 - prob, policy=b.policy_name)

    # --------------------------------------------------------------------------------------------------- requests
    @torch.no_grad()
    def recommend_batch(self, reqs: list[RecommendRequest]) -> list[RecommendResponse]:
        """Serve a batch of requests together (one bundle; the model stages run once over all of them)."""
        b, pacer = self.bundle, self.pacer  # one bundle for the whole batch (a reload swaps the reference)
        start = time.perf_counter()
        timer = _Timer(self.metrics)
        jobs = []
        for req in reqs:
            now = int(req.time_ms) if req.time_ms is not None else self.default_time(b)
            state = self.reader.user_state(req.user_id, now)
            job = _Job(req, now, state)
            job.cold = job.fallback or not (b.retrieval.known_user(req.user_id) or state.has_history)
            jobs.append(job)
        timer.lap("features")
        for j in jobs:
            if j.fallback:
                self.metrics.fallbacks.labels("store_unavailable").inc()
                j.rooms = b.catalog.popular(max(self.k(j.req), self.cfg.k2), j.now)
                j.entries = np.array([b.catalog.popularity.get(r.live_id, 0) for r in j.rooms], np.int64)
                j.scores = j.entries.astype(np.float64)
        served = [j for j in jobs if not j.fallback]
        if served:
            q, u = self._retrieve(b, served)
            timer.lap("retrieve")
            self._prerank(b, served, q, u)
            timer.lap("prerank")
            self._rank(b, served)
            timer.lap("rank")
        self._allocate(b, jobs, pacer)
        timer.lap("allocate")
        responses = [self._respond(b, j, timer.ms) for j in jobs]
        timer.lap("log")
        elapsed = time.perf_counter() - start
        self.metrics.batch_size.observe(len(jobs))
        for j, resp in zip(jobs, responses):
            resp.timings_ms = dict(timer.ms)
            self.metrics.decisions.labels("insert" if j.alloc.insert else "skip").inc()
            self.metrics.requests.labels("fallback" if j.fallback else ("cold_start" if j.cold else "ok")).inc()
            self.metrics.request_seconds.observe(elapsed)
        return responses

    def k(self, req: RecommendRequest) -> int:
        return min(req.k or self.cfg.default_k, self.cfg.max_k)

    def _respond(self, b: ServingBundle, j: _Job, timings: dict[str, float]) -> RecommendResponse:
        k = self.k(j.req)
        items = [RankedRoom(live_id=r.live_id, streamer_id=r.streamer_id, score=float(s),
                            p_click=None if j.p is None else float(j.p[i]),
                            watch_s=None if j.w is None else float(j.w[i]))
                 for i, (r, s) in enumerate(zip(j.rooms[:k], j.scores[:k]))]
        request_id = uuid.uuid4().hex
        record = DecisionRecord(
            request_id=request_id, user_id=j.req.user_id, timestamp=j.now,
            session_id=j.req.context.session_id or request_id, step=j.req.context.request_index, group=j.group,
            live_id=j.rooms[0].live_id if j.rooms else 0, features=[float(v) for v in j.x],
            feature_names=list(b.feature_names), action=int(j.alloc.insert), propensity=j.alloc.propensity,
            prob_insert=j.alloc.prob_insert, policy=j.alloc.policy, candidates=[it.live_id for it in items],
            scores=[it.score for it in items], fallback=j.fallback)
        try:
            self.sink.write(record)
        except Exception as exc:  # noqa: BLE001 - a log that cannot be written must not fail the recommendation
            self.metrics.errors.labels("decision_log").inc()
            log.warning("decision %s not logged: %s: %s", request_id, type(exc).__name__, exc)
        return RecommendResponse(request_id=request_id, user_id=j.req.user_id, time_ms=j.now, items=items,
                                 allocation=j.alloc, fallback=j.fallback, cold_start=j.cold,
                                 models=dict(b.versions), timings_ms=dict(timings))


__all__ = ["Recommender"]
