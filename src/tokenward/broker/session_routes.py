"""The broker's session routes: open, keep alive, proxy through, and close a session.

    POST   /v1/sessions                              {"credential": "avatar"} -> 201
    POST   /v1/sessions/{id}/keepalive
    ANY    /v1/sessions/{id}/proxy/{path}            the session-bound proxy
    DELETE /v1/sessions/{id}                         204, or 502 with the truth
    GET    /v1/client.js                             the browser module (public)

The session-bound proxy forwards a call to the credential's `base_url` with *that session's*
credentials: its own token, or the API key for the calls the preset says the provider accepts
it on (`session_api_key_calls`) once the token is refused. Only the client that opened the
session may use it (others: 404). A JSON body's `session_id` is filled in with the upstream
session's id when absent, and refused when it names another session, so a client can only ever
act on its own upstream session. A call the provider answers as expired, without an API-key
alternative, ends the session: 410 `session_expired` (the frontend starts a new session), the
upstream session is stopped, and a `session.expired` event and metric record it. Proxying the
preset's stop call is the same as `DELETE`.
"""

# No `from __future__ import annotations`: the routes' annotations name the client dependency
# passed to `install`, so FastAPI must see them evaluated.
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Annotated

import httpx2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..errors import TokenwardError
from ..sessions import AsyncSession, SessionCalls, SessionExpired
from .auth import BrokerError
from .config import ClientEntry
from .guard import client_of
from .models import SESSION_ERRORS, SESSION_PROXIED, KeepaliveOut, SessionIn, SessionOut
from .paths import UnsafePath, join_upstream, upstream_path
from .proxy import BodyTooLarge, read_limited, request_headers, response_headers
from .sessions import BrokerSession, StopOutcome

if TYPE_CHECKING:
    from .state import Broker

__all__ = ["SESSION_PROXY_PREFIX", "install"]

SESSION_PROXY_PREFIX = "/v1/sessions/"
_PROXY_ROUTE = "/v1/sessions/{session_id}/proxy/{path:path}"


def install(
    app: FastAPI,
    state: "Broker",
    client_dependency: Callable[..., Awaitable[ClientEntry]],
    methods: list[str],
) -> None:
    """Add the session routes to `app`; `client_dependency` gives the client the guard
    authenticated (and declares the bearer scheme in the OpenAPI document)."""
    router = APIRouter(tags=["sessions"])
    limits = state.limits
    Client = Annotated[ClientEntry, Depends(client_dependency)]

    @router.post(
        "/v1/sessions", responses=SESSION_ERRORS, status_code=201, response_model=SessionOut
    )
    async def open_session(payload: SessionIn, client: Client) -> JSONResponse:
        """A fresh session token (and the upstream session, where the preset defines one)."""
        cred = state.credential(client, payload.credential)
        if client.policy.max_sessions <= 0:
            raise BrokerError(403, "forbidden", f"client {client.name!r} may not open sessions")
        try:
            opened = await state.sessions.open(client, cred.name, cred.sessions)
        except BrokerError as exc:
            state.audit(client.name, cred.name, "session.open", exc.status, error=exc.error)
            raise
        except TokenwardError as exc:
            raise state.failed(client.name, cred, "session.open", exc) from None
        except httpx2.HTTPError as exc:
            state.audit(client.name, cred.name, "session.open", 502, error=type(exc).__name__)
            raise BrokerError(
                502,
                "upstream_failed",
                f"{cred.name}: could not open a session ({type(exc).__name__})",
            ) from None
        session = opened.session
        token = session.token
        state.audit(client.name, cred.name, "session.open", 201, token, session=opened.id)
        body = SessionOut(
            session_id=opened.id,
            token=token.access_token,
            expires_at=token.expires_at,
            expires_at_basis=cred.lifetime_basis,
            session_ends_at=session._state.ends_at,
            fingerprint=token.fingerprint,
            upstream_session_id=session.id,
            upstream=session.info,
            proxy=f"/v1/sessions/{opened.id}/proxy",
        )
        return JSONResponse(body.model_dump(), 201, headers={"Cache-Control": "no-store"})

    @router.post("/v1/sessions/{session_id}/keepalive", responses=SESSION_ERRORS)
    async def keepalive(session_id: str, client: Client) -> KeepaliveOut:
        """Keep the session (and its upstream session) from being reaped as idle."""
        found = state.sessions.usable(session_id, client)
        hooks = state.credentials[found.credential].sessions.hooks

        async def upstream(session: AsyncSession) -> None:
            await hooks.akeep_alive(session._state)  # the hook API takes the session's state

        try:
            await state.sessions.keepalive(session_id, client, upstream)
        except SessionExpired:
            raise await _expired(state, found) from None
        except httpx2.HTTPError as exc:
            state.audit(client.name, found.credential, "session.keepalive", 502, session=session_id)
            raise BrokerError(
                502, "upstream_failed", f"keepalive failed upstream ({type(exc).__name__})"
            ) from None
        state.audit(
            client.name,
            found.credential,
            "session.keepalive",
            200,
            found.fingerprint,
            session=session_id,
        )
        return KeepaliveOut(session_id=session_id, idle_timeout=limits.session_idle_timeout)

    @router.delete("/v1/sessions/{session_id}", responses=SESSION_ERRORS, status_code=204)
    async def close_session(session_id: str, client: Client) -> Response:
        """Stop the upstream session and forget its token: 204 once the provider confirmed
        the stop; 502 `stop_pending` (retried by the broker) or `stop_failed` otherwise."""
        outcome = await state.sessions.close(session_id, client)
        return _stopped(state, outcome)

    async def session_proxy(session_id: str, path: str, request: Request) -> Response:
        """Forward a call of this session upstream with the session's own credentials."""
        client = client_of(request.scope)  # the guard authenticated it
        started = time.monotonic()
        found: BrokerSession | None = None
        try:
            found = state.sessions.usable(session_id, client)
            cred = state.credentials[found.credential]
            url, shown = _target(request, cred.base_url or "", session_id)
            if not client.policy.allows_method(request.method):
                raise BrokerError(
                    403, "forbidden", f"client {client.name!r} may not {request.method}"
                )
            if not client.policy.allows_path(shown):
                raise BrokerError(403, "forbidden", f"client {client.name!r} may not proxy {shown}")
            hooks = found.session._state
            calls = state.credentials[found.credential].sessions.hooks
            if isinstance(calls, SessionCalls) and shown == calls.stop_path:
                found.ending = "delete"
                return _stopped(state, await state.sessions.end(found))
            id_field = calls.id_field if isinstance(calls, SessionCalls) else "session_id"
            body = await _body(request, limits.replay_buffer_bytes)
            with_key = shown in hooks.api_key_calls
            body = _bind(body, id_field, found.session.id, with_key or request.method == "POST")
            upstream = httpx2.Request(
                request.method,
                url,
                # The body may have changed (the session id filled in): httpx sets the length.
                headers=[
                    (k, v)
                    for k, v in request_headers(request.headers.items())
                    if k.lower() != "content-length"
                ],
                content=body,
                extensions={"timeout": dict(state.upstream_timeout)},
            )
            found.last_seen = time.monotonic()
            answer = await found.session.client.send(upstream)
        except SessionExpired:
            assert found is not None
            raise await _expired(state, found) from None
        except httpx2.TimeoutException:
            raise _logged(
                state,
                client,
                session_id,
                request,
                BrokerError(
                    504,
                    "upstream_timeout",
                    f"the upstream did not answer within {limits.upstream_timeout:g} s",
                ),
            ) from None
        except httpx2.HTTPError as exc:
            raise _logged(
                state,
                client,
                session_id,
                request,
                BrokerError(502, "upstream_unreachable", f"upstream error ({type(exc).__name__})"),
            ) from None
        except BrokerError as exc:
            raise _logged(state, client, session_id, request, exc) from None
        state.audit(
            client.name,
            found.credential,
            "session.proxy",
            answer.status_code,
            found.fingerprint,
            session=session_id,
            method=request.method,
            path=shown,
        )
        state.metrics.proxy_histogram(found.credential, answer.status_code).observe(
            time.monotonic() - started
        )
        out = Response(answer.content, answer.status_code)
        out.raw_headers.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in response_headers(answer.headers.multi_items(), decoded=True)
        )
        return out

    @router.get("/v1/client.js", include_in_schema=False)
    async def client_module() -> Response:
        """The browser ES module (`SessionClient`): start, tasks, keepalive, stop; a fresh
        session on expiry. Public: a page imports it before it has a key to send."""
        text = resources.files("tokenward.broker").joinpath("static/client.js").read_text("utf-8")
        return Response(
            text,
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    for method in methods:
        router.add_api_route(
            _PROXY_ROUTE,
            session_proxy,
            methods=[method],
            operation_id=f"session_proxy_{method.lower()}",
            response_class=Response,
            responses=SESSION_PROXIED,
            openapi_extra={"security": [{"HTTPBearer": []}]},
        )
    app.include_router(router)


def _logged(
    state: "Broker", client: ClientEntry, session_id: str, request: Request, exc: BrokerError
) -> BrokerError:
    state.audit(
        client.name,
        None,
        "session.proxy",
        exc.status,
        session=session_id,
        method=request.method,
        error=exc.error,
    )
    return exc


async def _expired(state: "Broker", found: BrokerSession) -> BrokerError:
    """The provider refused the session's token for a call with no API-key alternative: end
    the session (stopped upstream with the API key where the provider accepts it) and tell
    the client to start a new one."""
    state.metrics.session_event(found.credential, "expired").inc()
    found.ending = "expired"
    outcome = await state.sessions.end(found)
    state.audit(
        found.client,
        found.credential,
        "session.expired",
        410,
        found.fingerprint,
        session=found.id,
        stop=outcome.result,
    )
    return BrokerError(
        410,
        "session_expired",
        "the session's token is no longer accepted by the provider: start a new session "
        "with POST /v1/sessions (a fresh token); this session is over",
    )


def _stopped(state: "Broker", outcome: StopOutcome) -> Response:
    """The answer to a stop: 204 only when the provider confirmed it."""
    found = outcome.session
    action = "session.reap" if found.ending == "idle" else "session.close"
    if outcome.result == "stopped":
        state.audit(
            found.client,
            found.credential,
            action,
            204,
            found.fingerprint,
            session=found.id,
            reason=found.ending,
        )
        return Response(status_code=204)
    code = "stop_pending" if outcome.result == "pending" else "stop_failed"
    state.audit(
        found.client, found.credential, action, 502, found.fingerprint, session=found.id, error=code
    )
    if outcome.result == "pending":
        reason = (
            f"the provider did not confirm the stop ({outcome.reason}); the broker retries it "
            "(DELETE again to retry now)"
        )
    else:
        reason = (
            f"the upstream session could not be stopped ({outcome.reason}); it ends at the "
            "provider's own timeout"
        )
    raise BrokerError(502, code, reason)


def _target(request: Request, base_url: str, session_id: str) -> tuple[httpx2.URL, str]:
    """The upstream URL (base_url + normalized path + query) and the path for policies."""
    if not base_url:
        raise BrokerError(400, "no_base_url", "the session's credential has no base_url")
    raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    prefix = f"{SESSION_PROXY_PREFIX}{session_id}/proxy/"
    raw_text = raw.decode("latin-1")
    if not raw_text.startswith(prefix):
        raise BrokerError(400, "bad_path", "the session id must be plain (not encoded)")
    try:
        path = upstream_path(raw_text[len(prefix) :])
    except UnsafePath as exc:
        raise BrokerError(400, "unsafe_path", str(exc)) from None
    query = request.scope.get("query_string", b"").decode("latin-1")
    if any(ord(c) < 0x21 or c in "#\\\x7f" for c in query):
        raise BrokerError(400, "unsafe_path", "control characters in the query")
    url = httpx2.URL(join_upstream(base_url, path) + (f"?{query}" if query else ""))
    base = httpx2.URL(base_url)
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        raise BrokerError(400, "unsafe_path", "the path would leave the credential's host")
    return url, path


async def _body(request: Request, limit: int) -> bytes | None:
    """The whole body (session calls are small JSON documents; it may be sent twice)."""
    try:
        body = await read_limited(request.stream(), limit)
    except BodyTooLarge:
        raise BrokerError(
            413, "body_too_large", f"a session call's body exceeds {limit} bytes"
        ) from None
    return body or None


def _bind(body: bytes | None, field: str, upstream_id: str | None, strict: bool) -> bytes | None:
    """Fill in the upstream session id, or refuse a body naming another session. `strict`
    (a POST, or a call sent with the API key): the body must be a JSON object (or empty)."""
    if upstream_id is None or (body is None and not strict):
        return body
    try:
        document = json.loads(body) if body else {}
    except ValueError:
        document = None
    if not isinstance(document, dict):
        if strict:  # the API key would act on any session: only this one's id goes
            raise BrokerError(400, "bad_request", "a session call's body must be a JSON object")
        return body
    named = document.get(field)
    if named is None:
        document[field] = upstream_id
        return json.dumps(document).encode()
    if named != upstream_id:
        raise BrokerError(
            400, "session_mismatch", f"{field} names another session than this broker session's"
        )
    return body
