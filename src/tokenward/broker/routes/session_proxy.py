"""`ANY /v1/sessions/{session_id}/proxy/{path}`: the session-bound proxy's route.

It forwards a call to the credential's `base_url` with *that session's* credentials: its own
token, or the API key for the calls the preset says the provider accepts it on
(`session_api_key_calls`) once the token is refused. Only the client that opened the session
may use it (others: 404). A JSON body's `session_id` is filled in with the upstream session's
id when absent, and refused when it names another session, so a client can only ever act on
its own upstream session. A call the provider answers as expired, without an API-key
alternative, ends the session: 410 `session_expired` (the frontend starts a new session), the
upstream session is stopped, and a `session.expired` event and metric record it. Proxying the
preset's stop call is the same as `DELETE`.
"""

from __future__ import annotations

import json
import time

import httpx2
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...errors import SessionExpired
from ...session_hooks import SessionCalls
from ..auth import BrokerError
from ..config import ClientEntry
from ..guard import client_of
from ..models import SESSION_PROXIED
from ..proxy import BodyTooLarge, read_limited, request_headers, response_headers
from ..sessions import BrokerSession
from ..state import Broker
from .deps import add_proxy_routes, broker_of, upstream_target
from .sessions import SESSION_PROXY_PREFIX, expired, stopped

__all__ = ["SESSION_PROXY_ROUTE", "router"]

SESSION_PROXY_ROUTE = "/v1/sessions/{session_id}/proxy/{path:path}"

router = APIRouter(tags=["sessions"])


async def session_proxy(session_id: str, path: str, request: Request) -> Response:
    """Forward a call of this session upstream with the session's own credentials."""
    client = client_of(request.scope)  # the guard authenticated it
    state = broker_of(request)
    started = time.monotonic()
    found: BrokerSession | None = None
    try:
        found = state.sessions.usable(session_id, client)
        sent = await _send(state, client, found, session_id, request)
    except SessionExpired:
        assert found is not None
        raise await expired(state, found) from None
    except httpx2.TimeoutException:
        timeout = state.limits.upstream_timeout
        failure = BrokerError(
            504, "upstream_timeout", f"the upstream did not answer within {timeout:g} s"
        )
        raise _logged(state, client, session_id, request, failure) from None
    except httpx2.HTTPError as exc:
        failure = BrokerError(502, "upstream_unreachable", f"upstream error ({type(exc).__name__})")
        raise _logged(state, client, session_id, request, failure) from None
    except BrokerError as exc:
        raise _logged(state, client, session_id, request, exc) from None
    if isinstance(sent, Response):  # the preset's stop call: the session was ended
        return sent
    answer, shown = sent
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


add_proxy_routes(router, SESSION_PROXY_ROUTE, session_proxy, "session_proxy", SESSION_PROXIED)


async def _send(
    state: Broker, client: ClientEntry, found: BrokerSession, session_id: str, request: Request
) -> Response | tuple[httpx2.Response, str]:
    """The call sent upstream through the session's client: its answer and the path the
    policies saw; or, for the preset's stop call, the answer to ending the session."""
    cred = state.credentials[found.credential]
    prefix = f"{SESSION_PROXY_PREFIX}{session_id}/proxy/"
    url, shown = upstream_target(request, cred, client, prefix, "session id")
    hooks = found.session._state
    calls = cred.sessions.hooks
    if isinstance(calls, SessionCalls) and shown == calls.stop_path:
        found.ending = "delete"
        return stopped(state, await state.sessions.end(found))
    id_field = calls.id_field if isinstance(calls, SessionCalls) else "session_id"
    body = await _body(request, state.limits.replay_buffer_bytes)
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
    return await found.session.client.send(upstream), shown


def _logged(
    state: Broker, client: ClientEntry, session_id: str, request: Request, exc: BrokerError
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
