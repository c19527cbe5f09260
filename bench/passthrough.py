"""A bare pass-through ASGI proxy: the broker's stack (FastAPI/Starlette, uvicorn, a streaming
httpx2.AsyncClient) with none of its logic: no client key, no policy, no token, no path checks,
no audit, no metrics. The broker benchmark (bench/broker.py) measures the broker against it.

Every request `METHOD /{path}` is sent to `upstream + /{path}` (plus the query) with the
client's headers minus Host and Connection, and the answer is streamed back as it arrives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

_DROP = frozenset({"host", "connection", "keep-alive", "transfer-encoding"})
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def create_app(upstream: str) -> FastAPI:
    base = upstream.rstrip("/")
    holder: dict[str, httpx2.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The broker's client settings: the same timeout object, no redirects, default pool.
        holder["http"] = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0), follow_redirects=False)
        try:
            yield
        finally:
            await holder["http"].aclose()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    async def relay(answer: httpx2.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in answer.aiter_raw():
                yield chunk
        finally:
            await answer.aclose()

    @app.api_route("/{path:path}", methods=_METHODS)
    async def forward(path: str, request: Request) -> StreamingResponse:
        query = request.scope.get("query_string", b"").decode("latin-1")
        url = f"{base}/{path}" + (f"?{query}" if query else "")
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        upstream_request = httpx2.Request(
            request.method,
            url,
            headers=[(k, v) for k, v in request.headers.items() if k not in _DROP],
            content=request.stream() if has_body else None,
        )
        answer = await holder["http"].send(upstream_request, stream=True)
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in answer.headers.multi_items()
            if k.lower() not in _DROP
        ]
        response = StreamingResponse(relay(answer), answer.status_code)
        response.raw_headers = headers
        return response

    return app
