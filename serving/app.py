"""The FastAPI application of the ranking service: ``create_app(cfg)``.

Endpoints: ``POST /v1/recommend``, ``GET /healthz`` (the process is up), ``GET /readyz`` (models and index loaded,
store reachable), ``GET /metrics`` (Prometheus), ``POST /admin/reload`` (bearer token). Request bodies are pydantic
models with unknown fields forbidden: a bad body is a 422 that names the field. ``/v1/recommend`` hands each request
to a :class:`~serving.batcher.MicroBatcher`: concurrent requests are served together by one pipeline run on the
batch worker thread(s), while the event loop only parses, waits and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator

import torch
from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from recsys.feed.decision_log import open_sink
from recsys.store.base import FeatureStore
from recsys.stream.features import LiveRoom, OnlineFeatures
from serving.batcher import MicroBatcher
from serving.bundle import ModelLoadError, ServingBundle, load_bundle
from serving.config import ServeConfig
from serving.metrics import ServingMetrics
from serving.pipeline import Recommender
from serving.schemas import RecommendRequest, RecommendResponse, ReloadRequest, ReloadResponse
from serving.store_reader import StoreReader

log = logging.getLogger(__name__)


class ReloadInProgress(RuntimeError):
    """A reload was asked while another one runs (a 409; the running one is not disturbed)."""


def make_store(cfg: ServeConfig) -> FeatureStore:
    """The configured store. Redis is connected lazily (the service starts, and reports not ready, while Redis
    is down) with ``store_timeout_ms`` socket timeouts."""
    if cfg.store == "memory":
        from recsys.store.memory import InMemoryStore

        return InMemoryStore()
    import redis

    from recsys.store.redis_store import RedisStore

    t = cfg.store_timeout_ms / 1000.0
    client = redis.Redis.from_url(cfg.redis_url, socket_timeout=t, socket_connect_timeout=t, retry_on_timeout=False)
    return RedisStore(cfg.redis_url, namespace=cfg.redis_namespace, client=client)


def warm_store(cfg: ServeConfig, store: FeatureStore) -> int:
    """Embedded mode: replay the events of ``cfg.warm_data`` up to ``cfg.warm_until`` into the store through the
    stream worker (the same code path as ``recsys ingest``); returns the number of events applied."""
    from recsys.stream.embedded import replay_into_store

    stats = replay_into_store(cfg.warm_data, store, until=cfg.warm_until)
    return stats.processed


class ServiceState:
    """What the app holds: the recommender (with its swappable bundle), the store reader, the metrics."""

    def __init__(self, cfg: ServeConfig, store: FeatureStore) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = ServingMetrics()
        self.reader = StoreReader(OnlineFeatures(store), cooldown_s=cfg.store_cooldown_s,
                                  on_failure=lambda exc: self.metrics.errors.labels("store").inc())
        self.sink = open_sink(cfg.decision_log)
        self.recommender: Recommender | None = None
        self.batcher = MicroBatcher(self._serve_batch, cfg.max_batch, cfg.batch_wait_ms, cfg.batch_workers,
                                    name="recommend")
        self.load_error: str | None = None
        self._reload_lock = threading.Lock()
        self.synced = False

    def _serve_batch(self, reqs: list[RecommendRequest]) -> list[RecommendResponse]:
        rec = self.recommender
        if rec is None:
            raise RuntimeError("models are not loaded")
        return rec.recommend_batch(reqs)

    def live_snapshot(self) -> tuple[list[LiveRoom], dict[int, int] | None] | None:
        """The store's live rooms and their recent entries (at the latest room start), or None when the store
        cannot be read."""
        rooms = self.reader.live_rooms()
        if rooms is None:
            return None
        now = max((r.start for r in rooms), default=0)
        pop = self.reader.room_entries([r.live_id for r in rooms], now) if rooms else None
        return rooms, (None if pop is None else {r.live_id: int(n) for r, n in zip(rooms, pop)})

    def build(self, refs: dict[str, str | None]) -> ServingBundle:
        rooms, pop = self.live_snapshot() or ([], None)
        return load_bundle(refs, self.cfg.tracking_uri, self.cfg.device, self.cfg.mips_backend, rooms, pop)

    def sync_live(self) -> None:
        """One sync of the live set into the serving bundle's index (kept on a store failure)."""
        rec = self.recommender
        if rec is None:
            return
        snapshot = self.live_snapshot()
        self.metrics.store_up.set(1.0 if self.reader.up else 0.0)
        if snapshot is None:
            return
        stats = rec.bundle.catalog.sync(*snapshot)
        self.metrics.live_rooms.set(stats.live_rooms)
        self.metrics.index_items.set(len(rec.bundle.catalog))
        self.synced = True

    def reload(self, body: ReloadRequest) -> ReloadResponse:
        if self.recommender is None:
            raise ModelLoadError("the service has no models loaded yet")
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgress("a reload is already running")
        try:
            t0 = time.perf_counter()
            refs = dict(self.recommender.bundle.refs)
            refs.update({k: v for k, v in body.model_dump().items() if v is not None})
            bundle = self.build(refs)
            self.recommender.swap(bundle)
            self.metrics.index_items.set(len(bundle.catalog))
            return ReloadResponse(models=bundle.versions, index_items=len(bundle.catalog),
                                  seconds=round(time.perf_counter() - t0, 3))
        finally:
            self._reload_lock.release()


def create_app(cfg: ServeConfig, store: FeatureStore | None = None) -> FastAPI:
    """The service. ``store`` may be passed in (tests, an embedded store already filled); otherwise it is made from
    ``cfg``. Models load in the lifespan: /readyz answers 503 until they are in and the live set was read once."""
    state = ServiceState(cfg, store if store is not None else make_store(cfg))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(cfg.torch_threads)
        # the batch worker hands the GIL to the event loop at every torch op: with the default 5 ms switch interval
        # it waits up to 5 ms to get it back each time (the convoy effect), which multiplies latency under load
        sys.setswitchinterval(cfg.gil_switch_interval_ms / 1000.0)
        if cfg.warm_data is not None:
            n = await run_in_threadpool(warm_store, cfg, state.store)
            log.info("warmed the in-memory store with %d events of %s", n, cfg.warm_data)
        refs = {"retriever": cfg.retriever, "ranker": cfg.ranker, "policy": cfg.policy}
        try:
            bundle = await run_in_threadpool(state.build, refs)
            state.recommender = Recommender(cfg, bundle, state.reader, state.metrics, state.sink)
            state.metrics.index_items.set(len(bundle.catalog))
        except ModelLoadError as exc:
            state.load_error = str(exc)
            log.error("models not loaded: %s", exc)
            raise
        stop = asyncio.Event()
        state.batcher.start()

        async def sync_loop() -> None:
            while not stop.is_set():
                try:
                    await run_in_threadpool(state.sync_live)
                except Exception:  # noqa: BLE001 - the loop must survive anything; the error is counted
                    state.metrics.errors.labels("live_sync").inc()
                    log.exception("live-room sync failed")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), cfg.live_sync_s)

        task = asyncio.create_task(sync_loop())
        try:
            yield
        finally:
            stop.set()
            await task
            await run_in_threadpool(state.batcher.stop)
            state.sink.close()

    app = FastAPI(title="KuaiLive ranking service", version="1",
                  description="retrieve (GRank + exact MIPS over live rooms) -> rank (multi-task ranker) -> "
                              "allocate (SL-MGAC), with a decision log for off-policy evaluation.",
                  lifespan=lifespan)
    app.state.service = state

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A 422 naming the field; the offending input is echoed as its ``repr`` when JSON cannot carry it (NaN,
        infinities, lone surrogates), so a bad body never turns into a 500."""
        return JSONResponse(status_code=422, content={"detail": [_safe_error(e) for e in exc.errors()]})

    @app.post("/v1/recommend", response_model=RecommendResponse, summary="Ranked live rooms and the allocation")
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        if state.recommender is None:
            raise HTTPException(503, "models are not loaded yet")
        try:
            return await asyncio.wrap_future(state.batcher.submit(req))
        except Exception:
            state.metrics.errors.labels("request").inc()
            raise

    @app.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: models and index loaded, store reachable")
    def readyz(response: Response) -> dict[str, object]:
        rec = state.recommender
        store_ok = state.reader.ping()
        ready = rec is not None and state.synced and store_ok
        body: dict[str, object] = {"status": "ready" if ready else "not ready", "models_loaded": rec is not None,
                                   "live_synced": state.synced, "store": "ok" if store_ok else state.reader.last_error}
        if rec is not None:
            body.update(models=rec.bundle.versions, index_items=len(rec.bundle.catalog))
        if state.load_error:
            body["load_error"] = state.load_error
        response.status_code = 200 if ready else 503
        return body

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", response_model=ReloadResponse, summary="Load models again and swap them atomically",
              responses={401: {"description": "missing or wrong token"}, 403: {"description": "reload disabled"},
                         409: {"description": "a reload is running"}, 400: {"description": "a model failed"}})
    def reload(body: ReloadRequest | None = None, authorization: str | None = Header(None)) -> ReloadResponse:
        if not cfg.admin_token:
            raise HTTPException(403, "reload is disabled: the service has no admin token (admin_token)")
        if authorization != f"Bearer {cfg.admin_token}":
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        try:
            out = state.reload(body or ReloadRequest())
        except ModelLoadError as exc:
            state.metrics.reloads.labels("failed").inc()
            raise HTTPException(400, f"reload failed, the serving models are unchanged: {exc}") from exc
        except ReloadInProgress as exc:
            raise HTTPException(409, str(exc)) from exc
        state.metrics.reloads.labels("ok").inc()
        return out

    return app


def _safe_error(error: dict) -> dict:
    out = {k: v for k, v in error.items() if k not in ("input", "ctx", "url")}
    try:
        value = jsonable_encoder(error.get("input"))
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")  # as JSONResponse renders it
    except (ValueError, TypeError, UnicodeEncodeError):
        value = repr(error.get("input"))
    out["input"] = value
    return out


__all__ = ["ReloadInProgress", "ServiceState", "create_app", "make_store", "warm_store"]
