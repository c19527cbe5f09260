"""The session routes: open, keep alive and close a session; the browser module.

    POST   /v1/sessions                              {"credential": "avatar"} -> 201
    POST   /v1/sessions/{id}/keepalive
    DELETE /v1/sessions/{id}                         204, or 502 with the truth
    GET    /v1/client.js                             the browser module (public)

A session's calls go through the session-bound proxy (`routes.session_proxy`), which shares
`expired` and `stopped` with these routes.
"""

from __future__ import annotations

from importlib import resources

import httpx2
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ...errors import TokenwardError
from ...sessions import AsyncSession, SessionExpired
from ..auth import BrokerError
from ..models import SESSION_ERRORS, KeepaliveOut, SessionIn, SessionOut
from ..sessions import BrokerSession, StopOutcome
from ..state import Broker
from .deps import Client, State

__all__ = ["SESSION_PROXY_PREFIX", "expired", "router", "stopped"]

SESSION_PROXY_PREFIX = "/v1/sessions/"

router = APIRouter(tags=["sessions"])


@router.post("/v1/sessions", responses=SESSION_ERRORS, status_code=201, response_model=SessionOut)
async def open_session(payload: SessionIn, client: Client, state: State) -> JSONResponse:
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
async def keepalive(session_id: str, client: Client, state: State) -> KeepaliveOut:
    """Keep the session (and its upstream session) from being reaped as idle."""
    found = state.sessions.usable(session_id, client)
    hooks = state.credentials[found.credential].sessions.hooks

    async def upstream(session: AsyncSession) -> None:
        await hooks.akeep_alive(session._state)  # the hook API takes the session's state

    try:
        await state.sessions.keepalive(session_id, client, upstream)
    except SessionExpired:
        raise await expired(state, found) from None
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
    return KeepaliveOut(session_id=session_id, idle_timeout=state.limits.session_idle_timeout)


@router.delete("/v1/sessions/{session_id}", responses=SESSION_ERRORS, status_code=204)
async def close_session(session_id: str, client: Client, state: State) -> Response:
    """Stop the upstream session and forget its token: 204 once the provider confirmed
    the stop; 502 `stop_pending` (retried by the broker) or `stop_failed` otherwise."""
    outcome = await state.sessions.close(session_id, client)
    return stopped(state, outcome)


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


async def expired(state: Broker, found: BrokerSession) -> BrokerError:
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


def stopped(state: Broker, outcome: StopOutcome) -> Response:
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
