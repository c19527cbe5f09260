"""The broker's ASGI app (FastAPI): proxy, token vending, sessions, admin, health, metrics.

    app = create_app(load_config())          # or create_app("tokenward.toml")
    uvicorn.run(app, host="127.0.0.1", port=8421)

Every route but `/healthz`, `/readyz`, `/metrics` and the OpenAPI document needs a client key
(`Authorization: Bearer twk_...`) and stays within the client's policy. Errors are JSON
`{"error": code, "reason": text}`; no answer, header or log line carries a secret other than
a vended token in the body of the vending and session answers. Each action writes one line on
the `tokenward.audit` logger (client, credential, action, status, token fingerprint).

What is shared between replicas: every credential's record and lease, in the configured store
(Redis or PostgreSQL for several replicas), so N replicas still refresh a credential once per
expiry. What is per replica: sessions (see `broker.sessions`), rate buckets, metrics counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated, Any

import httpx2
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..config import Config
from ..errors import TokenwardError
from ..token import fingerprint
from . import errors, session_routes
from .auth import BrokerError
from .config import BrokerConfig, ClientEntry, load_broker
from .cors import Cors
from .errors import ErrorOut, credential_error
from .guard import PROXY_PREFIX, Guard, client_of, is_public
from .models import ERRORS, PROXIED, UPSTREAM_ERRORS, CredentialOut, RefreshOut, TokenOut
from .openapi import exact_openapi
from .paths import UnsafePath, join_upstream, upstream_path
from .proxy import (
    PROXY_METHODS,
    BodyTooLarge,
    limited,
    method_override,
    read_limited,
    request_headers,
    response_headers,
    send_with_replay,
)
from .runtime import BrokerCredential
from .state import Broker, audit_logger

__all__ = ["PROXY_METHODS", "Broker", "create_app"]

_PROXY_ROUTE = PROXY_PREFIX + "{credential}/{path:path}"
#: What a proxied query must not hold: control characters, spaces, DEL, `#`, backslashes.
_UNSAFE_QUERY = re.compile(r"[\x00-\x20\x7f#\\]")
#: The files of examples/browser-session, served under /examples/browser-session/ ("" is the
#: page itself); anything else answers 404.
_EXAMPLE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "session.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


# -- the app ---------------------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="A broker client key: twk_...")


async def _client(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ClientEntry:
    """The client the guard authenticated (`broker.guard`: before any body was read); as a
    dependency, it declares the bearer scheme in the OpenAPI document."""
    return client_of(request.scope)


Client = Annotated[ClientEntry, Depends(_client)]


def create_app(
    config: Config | str | os.PathLike[str] | None = None, broker: BrokerConfig | None = None
) -> FastAPI:
    """The broker app. `config`: a loaded `Config` (then `broker` gives the `[broker]`
    settings, default: no clients), or a configuration file path (or None: found as usual),
    whose `[broker]` table is read."""
    if not isinstance(config, Config):
        config, broker = load_broker(config)
    state = Broker(config, broker or BrokerConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="tokenward broker",
        version="1",
        summary="Proxy, token vending and session tokens for API credentials kept alive.",
        lifespan=lifespan,
    )
    app.state.broker = state
    errors.install(app)
    _routes(app, state)
    exact_openapi(app, state.credentials, is_public)
    # The guard inside CORS: its refusals (401, 429, ...) carry CORS headers, so a page can
    # read them; preflights are answered before the guard (they carry no key).
    app.add_middleware(
        Guard,
        clients=state.clients,
        limits=state.limits,
        respond=errors.respond,
        audit=state.refused,
        on_auth_failure=state.metrics.auth_failure,
    )
    app.add_middleware(Cors, clients=state.clients)
    return app


def _routes(app: FastAPI, state: Broker) -> None:
    if state.settings.examples:

        @app.get("/examples/session", tags=["examples"], response_class=HTMLResponse)
        async def example_session() -> HTMLResponse:
            """A page that opens, keeps alive and closes a session from the browser."""
            page = resources.files("tokenward.broker").joinpath("examples/session.html")
            return HTMLResponse(page.read_text(encoding="utf-8"))

        @app.get(
            "/examples/browser-session/{name:path}", tags=["examples"], include_in_schema=False
        )
        async def example_browser_session(name: str) -> Response:
            """examples/browser-session: start and stop sessions as a streaming frontend does."""
            name = name or "index.html"
            kind = _EXAMPLE_FILES.get(name)
            if kind is None:
                raise BrokerError(404, "not_found", f"no example file {name!r}")
            folder = resources.files("tokenward.broker").joinpath("examples/browser-session")
            text = folder.joinpath(name).read_text(encoding="utf-8")
            return Response(text, media_type=kind, headers={"Cache-Control": "no-store"})

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorOut}})
    async def readyz() -> Response:
        """Every store the credentials use is reachable."""
        stores = {id(c.store): c.store for c in state.credentials.values()}
        for store in stores.values():
            try:
                await store.aload("tokenward:readyz")
            except Exception as exc:
                body = {"error": "store_unreachable", "reason": type(exc).__name__}
                return JSONResponse(body, 503)
        return JSONResponse({"status": "ready", "stores": len(stores)})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format (store reads run off the event loop)."""
        body = await asyncio.to_thread(state.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/credentials", tags=["credentials"], responses=ERRORS)
    async def list_credentials(client: Client) -> list[CredentialOut]:
        """State, expiry and refresh counts of the credentials the client may use."""
        out = []
        now = time.time()
        for name, cred in sorted(state.credentials.items()):
            if not client.policy.allows_credential(name):
                continue
            record = await cred.store.aload(name)
            expires_at = record.expires_at if record else None
            out.append(
                CredentialOut(
                    name=name,
                    grant=cred.config.grant,
                    session_scoped=bool(cred.config.settings.get("session_scoped")),
                    state=record.state if record else "empty",
                    version=record.version if record else 0,
                    fingerprint=fingerprint(record.access_token if record else None),
                    expires_at=expires_at,
                    expires_in=None if expires_at is None else expires_at - now,
                    refresh_count=record.refresh_count if record else 0,
                    has_refresh_token=bool(record and record.refresh_token),
                    last_error=record.last_error if record else None,
                )
            )
        state.audit(client.name, None, "credentials.list", 200, count=len(out))
        return out

    @app.post("/v1/credentials/{name}/refresh", tags=["credentials"], responses=ERRORS)
    async def refresh(name: str, client: Client) -> RefreshOut:
        """Refresh now (one refresh across replicas however many ask). Needs `admin`."""
        cred = state.credential(client, name)
        if not client.policy.admin:
            raise BrokerError(403, "forbidden", f"client {client.name!r} may not force refreshes")
        if cred.config.session_scoped:
            raise BrokerError(
                400,
                "session_scoped",
                f"credential {name!r} is session-scoped: it has no stored token to refresh "
                "(each session mints its own: POST /v1/sessions)",
            )
        try:
            token = await cred.manager.arefresh()
        except TokenwardError as exc:
            raise state.failed(client.name, cred, "credential.refresh", exc) from None
        state.audit(client.name, name, "credential.refresh", 200, token)
        return RefreshOut(
            name=name,
            fingerprint=token.fingerprint,
            version=token.version,
            expires_at=token.expires_at,
        )

    @app.post(
        "/v1/credentials/{name}/token",
        tags=["credentials"],
        responses=UPSTREAM_ERRORS,
        response_model=TokenOut,
    )
    async def vend(name: str, client: Client) -> JSONResponse:
        """A token for a client allowed to hold one (`raw_tokens`); session-scoped and
        API-key-exchange credentials get a freshly minted token on every call."""
        cred = state.credential(client, name)
        if not client.policy.raw_tokens:
            state.audit(client.name, name, "token.vend", 403)
            raise BrokerError(403, "forbidden", f"client {client.name!r} may not receive tokens")
        assert state.http is not None
        try:
            token = await (cred.mint(state.http) if cred.mints else cred.manager.atoken())
        except TokenwardError as exc:
            raise state.failed(client.name, cred, "token.vend", exc) from None
        state.audit(client.name, name, "token.vend", 200, token, minted=cred.mints)
        body = TokenOut(
            token=token.access_token,
            token_type="Bearer" if token.token_type.lower() == "bearer" else token.token_type,
            expires_at=token.expires_at,
            fingerprint=token.fingerprint,
        )
        return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})

    async def proxy(credential: str, path: str, request: Request) -> Response:
        """Forward to the credential's base URL with a fresh token; one replay on expiry."""
        # The guard checked the client key; no `Depends(_client)` here (the hot path: no
        # dependency resolution); `openapi_extra` declares the same bearer scheme.
        client = client_of(request.scope)
        started = time.monotonic()
        try:
            cred = state.credential(client, credential)
            if cred.config.session_scoped:
                raise BrokerError(
                    400,
                    "session_required",
                    f"credential {credential!r} is session-scoped: each token serves one "
                    "session. Open one with POST /v1/sessions, then send its calls to "
                    "/v1/sessions/{session_id}/proxy/{path}",
                )
            target, shown = _target(request, cred)
            if not client.policy.allows_method(request.method):
                raise BrokerError(
                    403, "forbidden", f"client {client.name!r} may not {request.method}"
                )
            if not client.policy.allows_path(shown):
                raise BrokerError(403, "forbidden", f"client {client.name!r} may not proxy {shown}")
            response = await _forward(state, cred, request, target, client.name, shown)
        except BrokerError as exc:
            state.audit(
                client.name,
                credential,
                "proxy",
                exc.status,
                method=request.method,
                error=exc.error,
            )
            raise
        state.metrics.proxy_histogram(credential, response.status_code).observe(
            time.monotonic() - started
        )
        return response

    # One route per method, so that each gets its own OpenAPI operation id.
    for method in PROXY_METHODS:
        app.add_api_route(
            _PROXY_ROUTE,
            proxy,
            methods=[method],
            operation_id=f"proxy_{method.lower()}",
            tags=["proxy"],
            response_class=Response,
            responses=PROXIED,
            openapi_extra={"security": [{_bearer.scheme_name: []}]},
        )
    session_routes.install(app, state, _client, PROXY_METHODS)
    # The proxy is the hot path: try its routes first. No other route's path starts with
    # /v1/proxy/, so the order decides nothing but how many patterns a proxied request tries.
    app.router.routes.sort(key=lambda route: getattr(route, "path", None) != _PROXY_ROUTE)


def _target(request: Request, cred: BrokerCredential) -> tuple[httpx2.URL, str]:
    """The upstream URL (base_url + normalized path + query) and the path for policies."""
    base_url = cred.base_url
    if not base_url:
        raise BrokerError(
            400, "no_base_url", f"credential {cred.name!r} has no base_url to proxy to"
        )
    raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    raw_text = raw.decode("latin-1")
    if not raw_text.startswith(PROXY_PREFIX):
        raise BrokerError(400, "bad_path", "unexpected proxy path")
    named, _, rest = raw_text[len(PROXY_PREFIX) :].partition("/")
    if named != cred.name:
        raise BrokerError(400, "bad_path", "the credential name must be plain (not encoded)")
    try:
        path = upstream_path(rest)
    except UnsafePath as exc:
        raise BrokerError(400, "unsafe_path", str(exc)) from None
    query = request.scope.get("query_string", b"").decode("latin-1")
    if _UNSAFE_QUERY.search(query):
        raise BrokerError(400, "unsafe_path", "control characters in the query")
    override = method_override(query)
    if override:
        raise BrokerError(
            400,
            "method_override",
            f"the query parameter {override!r} would override the method upstream; send the "
            "method itself",
        )
    url = httpx2.URL(join_upstream(base_url, path) + (f"?{query}" if query else ""))
    if (url.scheme, url.host, url.port) != cred.origin:
        raise BrokerError(400, "unsafe_path", "the path would leave the credential's host")
    return url, path


async def _forward(
    state: Broker, cred: BrokerCredential, request: Request, url: httpx2.URL, client: str, path: str
) -> Response:
    limits = state.limits
    assert state.http is not None
    # The guard checked the framing (one valid Content-Length, or chunked, never both) and
    # refused a Content-Length above max_body_bytes.
    length_header = request.headers.get("content-length")
    length = int(length_header) if length_header is not None else None
    has_body = length is not None or "transfer-encoding" in request.headers
    streamed = has_body and (length is None or length > limits.replay_buffer_bytes)
    content: Any
    try:
        if not has_body:
            content = None
        elif streamed:
            content = limited(request.stream(), limits.max_body_bytes)
        else:
            content = await read_limited(request.stream(), limits.max_body_bytes)
        # A plain Request, not `client.build_request`: no default headers of the broker's
        # (Accept-Encoding, User-Agent, cookies), so an encoded body streamed back raw is one
        # the client asked for, and no cookie jar links one client's calls to another's.
        # The client's framing headers are never forwarded: httpx2 frames what it sends
        # (Content-Length of buffered bytes, chunked for a stream of unknown length).
        headers = request_headers(request.headers.items())
        if streamed and length is not None:
            headers.append(("Content-Length", str(length)))
        upstream = httpx2.Request(
            request.method,
            url,
            headers=headers,
            content=content,
            extensions={"timeout": dict(state.upstream_timeout)},
        )
        result = await send_with_replay(
            state.http, cred.manager, cred.manager.expiry_rule, upstream, streamed=streamed
        )
    except BodyTooLarge:
        raise BrokerError(
            413, "body_too_large", f"the body exceeds {limits.max_body_bytes} bytes"
        ) from None
    except httpx2.TimeoutException:
        raise BrokerError(
            504,
            "upstream_timeout",
            f"{cred.name}: the upstream did not answer within {limits.upstream_timeout:g} s",
        ) from None
    except httpx2.HTTPError as exc:
        if isinstance(exc.__context__, BodyTooLarge):
            raise BrokerError(
                413, "body_too_large", f"the body exceeds {limits.max_body_bytes} bytes"
            ) from None
        raise BrokerError(
            502, "upstream_unreachable", f"{cred.name}: upstream error ({type(exc).__name__})"
        ) from None
    except TokenwardError as exc:
        raise credential_error(cred.name, exc, api_key=cred.api_key) from None
    except Exception as exc:  # anything else: a clean 502 naming it, never a 500 traceback
        audit_logger.warning("proxy %s: %s upstream", cred.name, type(exc).__name__)
        raise BrokerError(
            502,
            "upstream_failed",
            f"{cred.name}: the upstream request failed ({type(exc).__name__})",
        ) from None
    answer = result.response
    state.audit(
        client,
        cred.name,
        "proxy",
        answer.status_code,
        result.token,
        method=request.method,
        path=path,
    )
    if result.read or answer.is_stream_consumed:  # read by the expiry check (or a transport)
        await answer.aclose()
        out = Response(answer.content, answer.status_code)
        out.raw_headers.extend(_raw(response_headers(answer.headers.multi_items(), decoded=True)))
        return out
    streaming = StreamingResponse(_relay(answer), answer.status_code)
    streaming.raw_headers = _raw(response_headers(answer.headers.multi_items(), decoded=False))
    return streaming


async def _relay(answer: httpx2.Response) -> AsyncIterator[bytes]:
    """The upstream body as it arrives (still encoded); the upstream connection is released
    however the relay ends (done, client gone, error)."""
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    finally:
        await answer.aclose()


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
