"""The "framework floor": a FastAPI app with the serving request/response shape and no work behind it.

``POST /v1/recommend`` validates a JSON object with an integer ``user_id`` (other fields are accepted and ignored)
and answers ``{"request_id", "user_id", "items": []}``; ``GET /healthz`` and ``GET /readyz`` answer
``{"status": "ok"}``. Benchmarks serve it next to the real service, under the same server and load generator, to
measure what FastAPI + uvicorn + JSON cost by themselves.

Build apps with ``create_trivial_app()``. The module-level ``app`` exists ONLY so that uvicorn can import it by
string (``uvicorn serving.trivial:app``); code should not import and share it.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict


class TrivialRequest(BaseModel):
    """A recommend request: ``user_id`` is required, any other field is allowed and ignored."""

    model_config = ConfigDict(extra="allow")

    user_id: int


def create_trivial_app() -> FastAPI:
    """A fresh floor app (no state shared between apps)."""
    app = FastAPI(title="recsys framework floor", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/recommend")
    async def recommend(request: TrivialRequest) -> dict:
        return {"request_id": uuid.uuid4().hex, "user_id": request.user_id, "items": []}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ok"}

    return app


# For uvicorn's import string only (`python -m uvicorn serving.trivial:app`); use create_trivial_app() in code.
app = create_trivial_app()
