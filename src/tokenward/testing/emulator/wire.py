"""HTTP plumbing for the emulator's app: answers from a `Reply`, bodies read strictly, and the
per-path request counter."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .shapes import Reply, oauth_error, session_error

if TYPE_CHECKING:
    from .model import Emulator


class PathCounter:
    """ASGI middleware: per-path request counts (cheap enough to keep on always)."""

    def __init__(self, app: ASGIApp, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.emulator.count_path(scope["path"])
        await self.app(scope, receive, send)


def respond(reply: Reply, *, no_store: bool = False) -> Response:
    headers = dict(reply.headers)
    if no_store:
        headers.setdefault("Cache-Control", "no-store")
        headers.setdefault("Pragma", "no-cache")
    if reply.body is None:
        return Response(b"", reply.status, headers)
    return JSONResponse(reply.body, reply.status, headers)


def request_base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def html_attr(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("'", "&#39;")
        .replace('"', "&quot;")
        .replace("<", "&lt;")
    )


async def read_form(request: Request) -> tuple[dict[str, str], Reply | None]:
    """Parse an x-www-form-urlencoded body without python-multipart; repeats are errors."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != "application/x-www-form-urlencoded":
        reply = oauth_error("invalid_request", "expected application/x-www-form-urlencoded")
        return {}, reply
    raw = await request.body()
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}, oauth_error("invalid_request", "body is not valid UTF-8")
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:  # RFC 6749 3.2: parameters must not be repeated
            return {}, oauth_error("invalid_request", f"parameter repeated: {key}")
        params[key] = value
    return params, None


async def read_json(request: Request) -> tuple[dict[str, Any], Reply | None]:
    raw = await request.body()
    if not raw.strip():
        return {}, None
    try:
        payload = json.loads(raw)
    except ValueError:
        return {}, session_error(400, "body is not valid JSON")
    if not isinstance(payload, dict):
        return {}, session_error(400, "body must be a JSON object")
    return payload, None
