"""`GET /metrics`: Prometheus text exposition (seed 8.3); which number comes from where is in
`app.metrics`. Unauthenticated like every scrape target: it holds counts, no contract data."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from app.db import get_engine
from app.http.deps import wiring
from app.metrics import render

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)  # Prometheus text, not a JSON operation
async def metrics(request: Request) -> Response:
    """Counters summed over every process of this host, gauges read from the database now."""
    engine = wiring(request).engine or get_engine()
    return Response(await run_in_threadpool(render, engine), media_type=CONTENT_TYPE_LATEST)


__all__ = ["router"]
