"""CORS for the broker: preflights answered, answers labelled for the origins clients list.

A plain ASGI middleware outside the guard (`broker.guard`): a preflight carries no client key,
so it is answered here before the guard; the guard's own refusals (401, 429, ...) pass back
through it and get the CORS headers, so a page can read them.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import ClientRegistry
from .proxy import PROXY_METHODS

__all__ = ["Cors"]


class Cors:
    """Answers preflights and labels answers for allowed origins (plain ASGI middleware).

    A preflight carries no client key, so it is allowed when *some* client lists the origin;
    the real request is then checked against its own client's `cors_origins` (403 otherwise).
    """

    def __init__(self, app: ASGIApp, clients: ClientRegistry) -> None:
        self.app = app
        self.clients = clients

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin: str | None = None
        for key, value in scope["headers"]:  # the last Origin counts, as in a dict of them
            if key.lower() == b"origin":
                origin = value.decode("latin-1")
        allowed = origin is not None and origin in self.clients.origins()
        if scope["method"] == "OPTIONS" and origin:
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            if "access-control-request-method" in headers:
                await self._preflight(origin, allowed, headers, scope, receive, send)
                return
        if not allowed:
            await self.app(scope, receive, send)
            return

        async def labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"access-control-allow-origin", origin.encode("latin-1")),  # type: ignore[union-attr]
                    (b"vary", b"Origin"),
                    (b"access-control-expose-headers", b"Retry-After, Content-Length"),
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, labelled)

    async def _preflight(
        self,
        origin: str,
        allowed: bool,
        headers: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if not allowed:
            body = {"error": "cors_forbidden", "reason": "origin not allowed by any client"}
            response: Response = JSONResponse(body, 403)
        else:
            requested = headers.get("access-control-request-headers", "authorization, content-type")
            response = Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": ", ".join(PROXY_METHODS),
                    "Access-Control-Allow-Headers": requested,
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
        await response(scope, receive, send)
