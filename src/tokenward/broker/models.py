"""What the broker's routes take and answer, as the OpenAPI document describes it.

The pydantic models of the request and answer bodies, and the `responses` each kind of route
declares besides its success. The models have no docstrings on purpose: a docstring would
become the schema's `description` and change the published document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .errors import described

__all__ = [
    "ERRORS",
    "PROXIED",
    "SESSION_ERRORS",
    "SESSION_PROXIED",
    "UPSTREAM_ERRORS",
    "CredentialOut",
    "KeepaliveOut",
    "RefreshOut",
    "SessionIn",
    "SessionOut",
    "TokenOut",
]


class TokenOut(BaseModel):
    token: str
    token_type: str
    expires_at: float | None
    fingerprint: str


class CredentialOut(BaseModel):
    name: str
    grant: str
    session_scoped: bool
    state: str
    version: int
    fingerprint: str
    expires_at: float | None
    expires_in: float | None
    refresh_count: int
    has_refresh_token: bool
    last_error: str | None


class RefreshOut(BaseModel):
    name: str
    fingerprint: str
    version: int
    expires_at: float | None


class SessionIn(BaseModel):
    credential: str


class SessionOut(BaseModel):
    session_id: str
    token: str
    #: When the token expires: from the provider's answer, else the preset's lifetime.
    expires_at: float | None
    #: "provider" (the answer said), "preset" (documented or assumed lifetime), or "unknown".
    expires_at_basis: str
    #: When the provider ends the session whatever happens (its duration limit), if known.
    session_ends_at: float | None = None
    fingerprint: str
    upstream_session_id: str | None = None
    upstream: dict[str, Any] = {}
    #: The session-bound proxy: POST {proxy}/v1/streaming.task sends a task in this session.
    proxy: str


class KeepaliveOut(BaseModel):
    session_id: str
    idle_timeout: float


#: What every authenticated route can answer besides its success (the guard's and the error
#: handlers' statuses included).
ERRORS = described(400, 401, 403, 404, 413, 422, 429, 500, 503)
#: Also 502: the upstream failed (a minted token).
UPSTREAM_ERRORS = described(400, 401, 403, 404, 413, 422, 429, 500, 502, 503)
#: The session routes: also 410 (the session is over) and 502 (opening, a keepalive, a stop).
SESSION_ERRORS = described(400, 401, 403, 404, 410, 413, 422, 429, 500, 502, 503)
#: The proxy answers with the upstream's own status, headers and body, whatever they are; its
#: own errors are JSON `ErrorOut`s.
PROXIED: dict[int | str, dict[str, Any]] = {
    "default": {
        "description": "The upstream's answer as it is (any status, headers and body), or the "
        "broker's own error, an ErrorOut (JSON): 400 (unsafe path, ambiguous framing, method "
        "override), 401, 403, 404, 413, 429, 500, 502 (upstream unreachable or failed), 503 "
        "(no token), 504 (upstream timeout).",
        "content": {"*/*": {}},
    }
}
#: The session-bound proxy: the same, with its own errors.
SESSION_PROXIED: dict[int | str, dict[str, Any]] = {
    "default": {
        "description": "The upstream's answer as it is, or the broker's own error, an ErrorOut "
        "(JSON): 400 (unsafe path, session_mismatch), 401, 403, 404 (not this client's "
        "session), 410 (session_expired: start a new session; session_ended), 413, 429, 500, "
        "502 (upstream unreachable, or the stop call failed), 504 (upstream timeout).",
        "content": {"*/*": {}},
    }
}
