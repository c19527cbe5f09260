"""A real MCP server with its own OAuth 2.1 authorization server, on 127.0.0.1, for tests and
benchmarks of MCP clients (needs the `mcp` extra).

Built from the `mcp` SDK's own parts: `MCPServer` (streamable HTTP), its authorization-server
routes (RFC 8414 metadata, RFC 9728 protected-resource metadata, RFC 7591 registration,
/authorize with PKCE, /token, /revoke) and bearer middleware. Only the provider behind them is
ours, strict the way OAuth 2.1 asks for public clients: short access tokens, refresh tokens
rotated on every use, and a rotated refresh token presented again revokes the whole grant
(reuse detection), so a client that spends one refresh token twice loses access.

/authorize approves at once (no login page): `HeadlessBrowser` follows it like a person's
browser would. /stats (unauthenticated) returns the counters tests synchronise on.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import uvicorn
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthToken
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tokenward.testing.server import _FastStopServer

__all__ = ["COUNTERS", "HeadlessBrowser", "McpTestServer", "RotatingAuthProvider"]

#: What the authorization server counts (`RotatingAuthProvider.stats()`, GET /stats).
COUNTERS = (
    "registrations",
    "logins",
    "refreshes",
    "invalid_grant",
    "reuse_detected",
    "grants_revoked",
    "rejected_expired",
    "rejected_unknown",
    "rejected_revoked",
    "tool_calls",
)


@dataclass
class _Grant:
    client_id: str
    scopes: list[str]
    resource: str | None
    subject: str
    revoked: bool = False
    #: The one refresh token of this grant that is still valid.
    refresh_token: str | None = None


@dataclass
class RotatingAuthProvider:
    """The authorization server's state: clients, grants, tokens, counters. Thread-safe enough
    for one event loop (every method runs on the server's loop without awaiting mid-change)."""

    access_lifetime: float = 2.0
    clients: dict[str, OAuthClientInformationFull] = field(default_factory=dict)
    codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    grants: dict[str, _Grant] = field(default_factory=dict)
    access: dict[str, tuple[str, float]] = field(default_factory=dict)
    refresh: dict[str, str] = field(default_factory=dict)
    #: Rotated refresh tokens -> their grant: presented again, they revoke it.
    spent: dict[str, str] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    subject: str = "user"

    # -- clients
    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        assert client_info.client_id is not None
        self.clients[client_info.client_id] = client_info
        self.counters["registrations"] += 1

    # -- authorization code
    async def authorize(
        self, client: OAuthClientInformationFull, params: AuthorizationParams
    ) -> str:
        code = secrets.token_urlsafe(24)
        self.codes[code] = AuthorizationCode(
            code=code,
            scopes=params.scopes or [],
            expires_at=time.time() + 300,
            client_id=client.client_id or "",
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
            subject=self.subject,
        )
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        return self.codes.get(authorization_code)

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        self.codes.pop(authorization_code.code, None)
        grant_id = secrets.token_hex(8)
        self.grants[grant_id] = _Grant(
            client.client_id or "",
            authorization_code.scopes,
            authorization_code.resource,
            authorization_code.subject or self.subject,
        )
        self.counters["logins"] += 1
        return self._issue(grant_id)

    # -- refresh (rotation + reuse detection)
    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> RefreshToken | None:
        grant_id = self.refresh.get(refresh_token)
        if grant_id is None:
            self._refused(refresh_token)
            return None
        grant = self.grants[grant_id]
        return RefreshToken(
            token=refresh_token,
            client_id=grant.client_id,
            scopes=grant.scopes,
            resource=grant.resource,
            subject=grant.subject,
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        grant_id = self.refresh.pop(refresh_token.token, None)
        if grant_id is None:  # spent by a concurrent request since it was loaded
            self._refused(refresh_token.token)
            raise TokenError("invalid_grant", "refresh token already used")
        self.spent[refresh_token.token] = grant_id
        self.counters["refreshes"] += 1
        return self._issue(grant_id)

    def _refused(self, refresh_token: str) -> None:
        self.counters["invalid_grant"] += 1
        grant_id = self.spent.get(refresh_token)
        if grant_id is not None and not self.grants[grant_id].revoked:
            self._revoke(grant_id)
            self.counters["reuse_detected"] += 1

    def _revoke(self, grant_id: str) -> None:
        grant = self.grants[grant_id]
        grant.revoked = True
        if grant.refresh_token is not None:
            self.refresh.pop(grant.refresh_token, None)
        self.counters["grants_revoked"] += 1

    def _issue(self, grant_id: str) -> OAuthToken:
        grant = self.grants[grant_id]
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access[access] = (grant_id, time.time() + self.access_lifetime)
        self.refresh[refresh] = grant_id
        grant.refresh_token = refresh
        return OAuthToken(
            access_token=access,
            token_type="Bearer",
            expires_in=max(round(self.access_lifetime), 1),
            scope=" ".join(grant.scopes) or None,
            refresh_token=refresh,
        )

    # -- the resource server's view
    async def load_access_token(self, token: str) -> AccessToken | None:
        entry = self.access.get(token)
        if entry is None:
            self.counters["rejected_unknown"] += 1
            return None
        grant_id, expires_at = entry
        grant = self.grants[grant_id]
        if grant.revoked:
            self.counters["rejected_revoked"] += 1
            return None
        if time.time() >= expires_at:
            self.counters["rejected_expired"] += 1
            return None
        return AccessToken(
            token=token,
            client_id=grant.client_id,
            scopes=grant.scopes,
            resource=grant.resource,
            subject=grant.subject,
        )

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        grant_id = self.refresh.get(token.token) or self.access.get(token.token, ("", 0.0))[0]
        if grant_id in self.grants:
            self._revoke(grant_id)

    def active_grants(self) -> int:
        return sum(1 for grant in self.grants.values() if not grant.revoked)

    def stats(self) -> dict[str, int]:
        """Every counter (0 when nothing happened yet) and the number of live grants."""
        return {
            **dict.fromkeys(COUNTERS, 0),
            **self.counters,
            "active_grants": self.active_grants(),
        }


class McpTestServer:
    """An `MCPServer` with `RotatingAuthProvider`, served by uvicorn in a daemon thread.

    Tools: `add(a, b)` and `whoami()`. Use as a context manager; `url` is the MCP endpoint.
    """

    def __init__(self, access_lifetime: float = 2.0, host: str = "127.0.0.1") -> None:
        self.provider = RotatingAuthProvider(access_lifetime=access_lifetime)
        self.host = host
        self._sock: socket.socket | None = None
        self._server: _FastStopServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    @property
    def url(self) -> str:
        """The MCP endpoint (streamable HTTP)."""
        return self.base_url + "/mcp"

    def stats(self) -> dict[str, int]:
        """The authorization server's counters (refreshes, invalid_grant, reuse_detected, ...),
        read over HTTP like any client would (works from other processes too)."""
        return dict(httpx2.get(self.base_url + "/stats", timeout=10).json())

    def start(self) -> McpTestServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._sock = sock
        self.base_url = f"http://{self.host}:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self._app(),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        server = _FastStopServer(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="mcp-test-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.005)
        return self

    def _app(self) -> Any:
        provider = self.provider
        mcp: MCPServer[Any] = MCPServer(
            "tokenward-test",
            log_level="WARNING",  # MCPServer configures the root logger when it has no handler
            auth_server_provider=provider,  # type: ignore[arg-type] # no identity assertions
            auth=AuthSettings(
                issuer_url=self.base_url,  # type: ignore[arg-type]
                resource_server_url=self.url,  # type: ignore[arg-type]
                client_registration_options=ClientRegistrationOptions(enabled=True),
                revocation_options=RevocationOptions(enabled=True),
                validate_token_resource=False,
            ),
        )

        @mcp.tool()
        async def add(a: int, b: int) -> int:
            """Add two numbers."""
            provider.counters["tool_calls"] += 1
            await asyncio.sleep(0)
            return a + b

        @mcp.tool()
        async def whoami() -> str:
            """The subject of the grant the call was made with."""
            return provider.subject

        async def stats(request: Request) -> Response:
            return JSONResponse(provider.stats())

        mcp.custom_route("/stats", methods=["GET"])(stats)

        return mcp.streamable_http_app(stateless_http=True, json_response=True)

    def stop(self) -> None:
        if self._server is not None:
            self._server.request_exit()
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        self._sock = self._server = self._thread = None

    def __enter__(self) -> McpTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HeadlessBrowser:
    """A person's browser for `McpOAuth`'s interactive login: `redirect_handler` receives the
    authorization URL, `callback_handler` opens it and returns the code from the redirect (the
    test server approves at once)."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.opened = 0

    async def redirect_handler(self, url: str) -> None:
        self.url = url

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self.url is not None, "no authorization URL was handed to the browser"
        self.opened += 1
        async with httpx2.AsyncClient() as client:
            answer = await client.get(self.url)
        query = parse_qs(urlsplit(answer.headers["location"]).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0])
