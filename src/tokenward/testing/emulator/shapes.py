"""What the emulated provider says on the wire, shared by the model and the HTTP app: fault and
endpoint names, counter and setting names, error bodies, the transport-free `Reply`, and small
helpers (fingerprints, PKCE, bearer tokens)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

DEVICE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:device_code"

DEFAULT_SCOPE: Final = "offline_access read write"

INVALID_GRANT_DESCRIPTION: Final = (
    "Error validating grant. Your authorization code or refresh token may be expired "
    "or it was already used"
)

INVALID_GRANT_BODY: Final[Mapping[str, Any]] = {
    "error": "invalid_grant",
    "error_description": INVALID_GRANT_DESCRIPTION,
    "status": 400,
    "cause": [],
}

API_INVALID_TOKEN_BODY: Final[Mapping[str, Any]] = {
    "message": "invalid_token",
    "error": "not_found",
    "status": 401,
    "cause": [],
}

#: Fault names accepted by :meth:`Emulator.inject`.
FAULTS: Final = frozenset(
    {
        "503",
        "500",
        "429",
        "401",
        "timeout",
        "drop_after_processing",
        "html",
        "garbage",
        "no_access_token",
        "negative_expires",
        "invalid_grant",
    }
)

#: Which endpoint group a fault applies to, and which faults make sense there.
API_FAULTS: Final = frozenset(
    {"503", "500", "429", "401", "timeout", "drop_after_processing", "html", "garbage"}
)

ENDPOINTS: Final[Mapping[str, frozenset[str]]] = {
    "token": FAULTS - {"401"},
    "api": API_FAULTS,
    "session": API_FAULTS | {"no_access_token"},
    # streaming.stop (a provider failing to stop a session: the caller must retry, not lie).
    "stop": frozenset({"503", "500", "429", "timeout", "drop_after_processing"}),
}

#: Where :meth:`Emulator.hold` can stall a request.
HOLD_STAGES: Final = frozenset({"received", "answered"})

COUNTER_NAMES: Final = (
    "token_requests",
    "token_requests_finished",
    "refreshes",
    "refresh_reuse",
    "refresh_grace_replays",
    "invalid_grant",
    "invalid_client",
    "client_credentials",
    "authorization_code",
    "authorizations",
    "device_authorizations",
    "device_code",
    "revocations",
    "families_revoked",
    "session_token_requests",
    "session_tokens",
    "api_calls",
    "api_ok",
    "api_401",
    "api_403",
    "api_401_expired",
    "api_401_revoked",
    "admin_revocations",
    "faults_injected",
    "abandoned_requests",
    "sessions_started",
    "sessions_stopped",
    "sessions_timed_out",
    "streams_started",
    "keepalives",
    "tasks",
    "interrupts",
    "session_tokens_reused",
    "session_401_expired",
    "session_api_key_calls",
    "sessions_refused_quota",
)

# Settings that may be changed at run time (name -> accepted JSON types), used by configure().
SETTINGS: Final[Mapping[str, tuple[type, ...]]] = {
    "access_lifetime": (int, float),
    "refresh_rotation": (bool,),
    "reuse_grace": (int, float),
    "revoke_family_on_reuse": (bool,),
    "refresh_lifetime": (int, float, type(None)),
    "latency": (int, float),
    "answer_latency": (int, float),
    "api_latency": (int, float),
    "www_authenticate": (bool,),
    "session_token_lifetime": (int, float),
    "session_idle_timeout": (int, float),
    "session_duration_limit": (int, float),
    "session_token_expires_in": (bool,),
    "session_optional_calls": (list,),
    "session_api_key_calls": (list,),
    "session_concurrency": (int,),
    "revoke_old_access_on_refresh": (bool,),
    "fault_delay": (int, float),
    "device_interval": (int,),
    "user_id": (int,),
    "echo_secrets": (bool,),
}

LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})


def fingerprint(token: str) -> str:
    """Name a secret without revealing it: first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def pkce_s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", errors="replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def json_seconds(value: float) -> int | float:
    """Integral lifetimes go out as JSON integers (as real providers send); others as floats."""
    return int(value) if float(value).is_integer() else float(value)


def offline_scope(scope: str) -> bool:
    return "offline_access" in scope.split()


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@dataclass
class Reply:
    """A transport-free answer, so the state logic stays testable without HTTP."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def oauth_error(error: str, description: str, status: int = 400) -> Reply:
    """MercadoLibre-shaped OAuth error (RFC 6749 fields plus status/cause)."""
    body = {"error": error, "error_description": description, "status": status, "cause": []}
    return Reply(status, body)


def invalid_request(param: str) -> Reply:
    return oauth_error("invalid_request", f"missing required parameter: {param}")


def session_error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message, "data": None})
