"""Pydantic bodies of the ranking service's API (every field validated; unknown fields are rejected by name)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid")
MAX_USER_ID = 2**62
#: request times outside [2000-01-01, 2100-01-01) are certainly a unit mistake (seconds or microseconds)
MIN_TIME_MS, MAX_TIME_MS = 946_684_800_000, 4_102_444_800_000


class FeedContext(BaseModel):
    """The feed session the request belongs to (the feed server knows it; the allocator's state needs it)."""

    model_config = _STRICT

    session_id: str | None = Field(None, max_length=128, description="feed session; default: one per request")
    request_index: int = Field(0, ge=0, le=10_000, description="position of this request in the session")
    fatigue: float = Field(0.0, ge=0.0, le=1_000.0,
                           description="decayed count of live insertions earlier in the session")
    group: int | None = Field(None, ge=0, le=63, description="user-activity group; default: from recent activity")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"user_id": 42, "k": 10}, {"user_id": 42, "k": 5, "time_ms": 1747000000000,
                                                  "context": {"session_id": "s-1", "request_index": 3}}]})

    user_id: int = Field(ge=0, le=MAX_USER_ID)
    k: int | None = Field(None, ge=1, le=1000, description="rooms to return (capped by the service's max_k)")
    time_ms: int | None = Field(None, ge=MIN_TIME_MS, lt=MAX_TIME_MS,
                                description="request time (epoch ms); default: the stream's event time")
    context: FeedContext = Field(default_factory=FeedContext)


class RankedRoom(BaseModel):
    live_id: int
    streamer_id: int
    score: float = Field(description="the final ranking score (higher first)")
    p_click: float | None = Field(None, description="ranker's click probability (None without a ranker)")
    watch_s: float | None = Field(None, description="ranker's expected watch seconds given a click")


class Allocation(BaseModel):
    """The allocator's decision for the feed slot: insert ``live_id`` (the top room) or not."""

    insert: bool
    live_id: int | None
    prob_insert: float
    propensity: float = Field(description="probability of the chosen action (for off-policy evaluation)")
    policy: str


class RecommendResponse(BaseModel):
    request_id: str
    user_id: int
    time_ms: int
    items: list[RankedRoom]
    allocation: Allocation
    fallback: bool = Field(description="served without the feature store (popularity among live rooms)")
    cold_start: bool = Field(description="no history for this user: served from profile-free defaults")
    models: dict[str, str]
    timings_ms: dict[str, float]


class ReloadRequest(BaseModel):
    """New model references; omitted ones are resolved again (an alias may point at a new version)."""

    model_config = _STRICT

    retriever: str | None = None
    ranker: str | None = None
    policy: str | None = None


class ReloadResponse(BaseModel):
    models: dict[str, str]
    index_items: int
    seconds: float


__all__ = ["Allocation", "FeedContext", "RankedRoom", "RecommendRequest", "RecommendResponse", "ReloadRequest",
           "ReloadResponse"]
