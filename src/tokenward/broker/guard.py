"""The broker's front door: what every request meets before any route reads a byte of its body.

A plain ASGI middleware, so that every route (the ones here and any added later) gets it without
declaring anything:

- **framing**: a request with both `Transfer-Encoding` and `Content-Length`, or several
  `Content-Length`s, is refused (400): which one frames the body is exactly what request
  smuggling plays on;
- **authentication first**: outside `PUBLIC_PATHS`, the client key is checked (and the
  `Origin`, and the client's rate bucket) from the headers alone; a request that fails is
  answered 401/403/429 without its body being read. The client found is left in the scope
  (`CLIENT_SCOPE_KEY`) for the routes;
- **failed authentication is limited** per source address and globally (`broker.lockout`);
- **body caps**: proxy routes' `max_body_bytes`, every other route's `max_request_bytes`, refused
  with 413 at once when `Content-Length` says so, else as soon as the stream exceeds the cap.

Why a middleware and not a FastAPI dependency: FastAPI reads and parses a route's body before it
resolves the route's dependencies, so a key check in a dependency comes after the body (an
unauthenticated 200 MB body was read whole).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import BrokerError, ClientRegistry
from .config import ClientEntry, Limits
from .lockout import FailedAuthLimiter

__all__ = [
    "CLIENT_SCOPE_KEY",
    "PROXY_PREFIX",
    "PUBLIC_PATHS",
    "Guard",
    "client_of",
    "is_proxied",
    "is_public",
]

#: Where the authenticated `ClientEntry` is kept in the ASGI scope.
CLIENT_SCOPE_KEY = "tokenward.client"
PROXY_PREFIX = "/v1/proxy/"
#: Paths answered without a client key (exact paths, and prefixes ending in `/`).
PUBLIC_PATHS = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/examples/",
    "/v1/client.js",  # the browser module: a page imports it before it has any key to send
)

#: What an error answer is built from: (status, error code, reason, headers) -> ASGI app.
Respond = Callable[[BrokerError], ASGIApp]
#: The audit callback: (status, error code, path, source address).
Audit = Callable[[int, str, str, str], None]


def is_public(path: str) -> bool:
    return any(
        path == p.rstrip("/") or (p.endswith("/") and path.startswith(p)) for p in PUBLIC_PATHS
    )


def is_proxied(path: str) -> bool:
    """A route that relays its body upstream (`/v1/proxy/...`, `/v1/sessions/{id}/proxy/...`):
    its cap is `max_body_bytes`, and it counts a chunked stream itself."""
    return path.startswith("/v1/") and "/proxy/" in path


def client_of(scope: Scope) -> ClientEntry:
    """The client the guard authenticated for this request."""
    client: ClientEntry | None = scope.get(CLIENT_SCOPE_KEY)
    if client is None:  # a public path routed to a route that wants a client: a wiring bug
        raise BrokerError(
            401, "unauthorized", "send the client key as Authorization: Bearer twk_..."
        )
    return client


class Guard:
    """See the module docstring. `respond` renders a `BrokerError` (the app's error shape);
    `audit` records a refused request; `on_auth_failure` counts one (metric label: why)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        clients: ClientRegistry,
        limits: Limits,
        respond: Respond,
        audit: Audit,
        on_auth_failure: Callable[[str], None],
    ) -> None:
        self.app = app
        self.clients = clients
        self.limits = limits
        self.respond = respond
        self.audit = audit
        self.on_auth_failure = on_auth_failure
        self.failures = FailedAuthLimiter(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        try:
            length, chunked = _framing(scope["headers"])
            if not is_public(path):
                scope[CLIENT_SCOPE_KEY] = self._authenticate(scope)
            proxied = is_proxied(path)
            cap = self.limits.max_body_bytes if proxied else self.limits.max_request_bytes
            if length is not None and length > cap:
                raise BrokerError(413, "body_too_large", f"the body exceeds {cap} bytes")
        except BrokerError as exc:
            await self.respond(exc)(scope, receive, send)
            return
        if chunked and not proxied:  # a proxy route counts its own stream
            receive = _capped(receive, cap)
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope) -> ClientEntry:
        """The client key, the origin and the client's rate, from the headers alone."""
        source = scope["client"][0] if scope.get("client") else "unknown"
        authorizations: list[bytes] = []
        origin: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorizations.append(value)
            elif key == b"origin" and origin is None:
                origin = value
        try:
            self.failures.check(source)
        except BrokerError as exc:
            self.on_auth_failure("throttled")
            self.audit(exc.status, exc.error, scope["path"], source)
            raise
        try:
            if len(authorizations) > 1:  # which one would count?
                raise BrokerError(400, "bad_request", "send exactly one Authorization header")
            client = self.clients.authenticate(
                authorizations[0].decode("latin-1") if authorizations else None
            )
        except BrokerError as exc:
            self.failures.failed(source)
            self.on_auth_failure("missing" if not authorizations else "invalid")
            self.audit(exc.status, exc.error, scope["path"], source)
            raise
        try:
            # Only listed origins: a page whose Origin merely equals the broker's own address
            # is what a DNS-rebinding attack looks like.
            if origin is not None and origin.decode("latin-1") not in client.policy.cors_origins:
                raise BrokerError(
                    403, "origin_forbidden", f"origin not allowed for client {client.name!r}"
                )
            self.clients.throttle(client)
        except BrokerError as exc:
            self.audit(exc.status, exc.error, scope["path"], source)
            raise
        return client


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(Content-Length, chunked?) of a request, or a 400 for ambiguous framing."""
    lengths = {value.strip() for key, value in headers if key == b"content-length"}
    chunked = any(key == b"transfer-encoding" for key, _ in headers)
    if chunked and lengths:
        raise BrokerError(
            400, "bad_request", "send either Transfer-Encoding or Content-Length, not both"
        )
    if len(lengths) > 1:
        raise BrokerError(400, "bad_request", "conflicting Content-Length headers")
    if not lengths:
        return None, chunked
    (text,) = lengths
    if not text.isdigit():
        raise BrokerError(400, "bad_request", "invalid Content-Length")
    return int(text), chunked


def _capped(receive: Receive, cap: int) -> Receive:
    """`receive`, raising a 413 once the body exceeds `cap` bytes (an `HTTPException`, which
    FastAPI's body reading passes on as it is, unlike other exceptions)."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message: dict[str, Any] = dict(await receive())
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise HTTPException(413, f"the body exceeds {cap} bytes")
        return message

    return capped
