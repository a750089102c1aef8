"""Configuration of the ranking service (``recsys serve``): where the models come from, which feature store, the
stage sizes, the decision log and the admin token. One pydantic model, validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServeConfig(BaseModel):
    """Everything the service needs to start. Model references are export directories or MLflow URIs
    (``models:/kuailive-ranker@champion``, ``runs:/<id>/policy``), resolved again on every reload."""

    model_config = ConfigDict(extra="forbid")

    retriever: str = Field(description="GRank (or two-tower) export: a directory or an MLflow model URI")
    ranker: str | None = Field(None, description="TokenMixer (or baseline) ranker export; None: retrieval order")
    policy: str | None = Field(None, description="allocation policy export; None: never insert")
    tracking_uri: str = "sqlite:///mlruns.db"
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_namespace: str = "rs:"
    #: per-command Redis socket timeout: a slow store degrades the request instead of stalling it
    store_timeout_ms: float = Field(50.0, gt=0)
    #: after a store failure the store is skipped for this long (requests are served cold, counted as fallbacks)
    store_cooldown_s: float = Field(1.0, ge=0)
    k1: int = Field(200, ge=1, description="MIPS candidates per request (the GRank generator's top-k1)")
    k2: int = Field(50, ge=1, description="candidates the GRank ranker keeps for the multi-task ranker")
    default_k: int = Field(10, ge=1)
    max_k: int = Field(100, ge=1)
    mips_backend: Literal["torch", "faiss"] = "torch"
    device: str = "auto"
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads of each batch worker")
    max_batch: int = Field(64, ge=1, description="most requests served by one pipeline run (dynamic batching)")
    batch_wait_ms: float = Field(0.0, ge=0, le=100, description="how long a batch waits for more requests")
    batch_workers: int = Field(1, ge=1, le=16, description="threads running batches")
    gil_switch_interval_ms: float = Field(0.2, gt=0, le=10, description="sys.setswitchinterval of the process")
    live_sync_s: float = Field(1.0, gt=0, description="how often the live-room set is read from the store")
    decision_log: str | None = Field(None, description="JSONL path or kafka://host:port/topic; None: no log")
    admin_token: str | None = Field(None, description="bearer token of POST /admin/reload; None: reload disabled")
    #: embedded mode: replay this dataset's events up to ``warm_until`` into the in-memory store at start-up
    warm_data: Path | None = None
    warm_until: int | None = None
    seed: int = 0
    #: exposure pacing (:mod:`serving.pacing`): hold the insertion ratio at the policy's allocation target
    alloc_pacing: bool = True
    alloc_target: float | None = Field(None, gt=0, lt=1, description="ratio the pacer holds; None: the target "
                                       "stored with the policy export (no pacing when it has none)")

    @model_validator(mode="after")
    def _check(self) -> "ServeConfig":
        if self.k2 > self.k1:
            raise ValueError(f"k2 ({self.k2}) must not exceed k1 ({self.k1})")
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        if self.warm_data is not None and self.store != "memory":
            raise ValueError("warm_data replays events into the in-memory store; with Redis run `recsys ingest`")
        return self


__all__ = ["ServeConfig"]
