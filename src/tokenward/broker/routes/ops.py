"""The operations routes (public: no client key): liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..errors import ErrorOut
from .deps import State

__all__ = ["router"]

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorOut}})
async def readyz(state: State) -> Response:
    """Every store the credentials use is reachable."""
    stores = {id(c.store): c.store for c in state.credentials.values()}
    for store in stores.values():
        try:
            await store.aload("tokenward:readyz")
        except Exception as exc:
            body = {"error": "store_unreachable", "reason": type(exc).__name__}
            return JSONResponse(body, 503)
    return JSONResponse({"status": "ready", "stores": len(stores)})


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Prometheus text format (store reads run off the event loop)."""
    body = await asyncio.to_thread(state.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
