"""An in-process OAuth / API-key provider emulator: state plus a Starlette ASGI app.

It models the behaviours that break token clients in production (single-use rotating refresh
tokens, reuse detection, lost responses, 429/5xx, malformed bodies, single-session tokens) so
that tokenward and its users can test against real HTTP instead of mocks. It is the bottom
layer of tokenward and imports nothing else from it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus, urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "COUNTER_NAMES",
    "DEVICE_GRANT_TYPE",
    "ENDPOINTS",
    "FAULTS",
    "INVALID_GRANT_BODY",
    "Emulator",
    "Hold",
    "create_app",
    "fingerprint",
]

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
_API_FAULTS: Final = frozenset(
    {"503", "500", "429", "401", "timeout", "drop_after_processing", "html", "garbage"}
)
ENDPOINTS: Final[Mapping[str, frozenset[str]]] = {
    "token": FAULTS - {"401"},
    "api": _API_FAULTS,
    "session": _API_FAULTS | {"no_access_token"},
    # streaming.stop (a provider failing to stop a session: the caller must retry, not lie).
    "stop": frozenset({"503", "500", "429", "timeout", "drop_after_processing"}),
}
#: Where :meth:`Emulator.hold` can stall a request.
HOLD_STAGES: Final = frozenset({"received", "answered"})
#: Faults that delay the answer instead of replacing it.
_DELAY_FAULTS: Final = frozenset({"timeout", "drop_after_processing"})

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
_SETTINGS: Final[Mapping[str, tuple[type, ...]]] = {
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

_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})


def fingerprint(token: str) -> str:
    """Name a secret without revealing it: first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def _pkce_s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", errors="replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _seconds(value: float) -> int | float:
    """Integral lifetimes go out as JSON integers (as real providers send); others as floats."""
    return int(value) if float(value).is_integer() else float(value)


@dataclass
class _Client:
    client_id: str
    client_secret: str | None
    redirect_uris: list[str] | None


@dataclass
class _Family:
    family_id: str
    client_id: str
    revoked: bool = False
    access_tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)


@dataclass
class _AccessToken:
    client_id: str
    family: str | None
    scope: str
    expires_at: float
    revoked: bool = False


@dataclass
class _RefreshToken:
    client_id: str
    family: str
    scope: str
    issued_at: float
    rotated_at: float | None = None
    replay: dict[str, Any] | None = None  # the answer that rotated it, for reuse_grace
    revoked: bool = False


@dataclass
class _AuthCode:
    client_id: str
    redirect_uri: str | None
    code_challenge: str | None
    scope: str
    expires_at: float
    used: bool = False
    family: str | None = None


@dataclass
class _DeviceGrant:
    client_id: str
    user_code: str
    scope: str
    expires_at: float
    approved: bool = False
    denied: bool = False
    used: bool = False


@dataclass
class _SessionToken:
    expires_at: float
    account: str
    session_id: str | None = None


@dataclass
class _Session:
    session_id: str
    token: str
    created_at: float
    last_seen: float
    account: str
    streaming: bool = False


@dataclass
class _Fault:
    name: str
    remaining: int
    retry_after: float | None
    delay: float | None


class Hold:
    """A stall placed by :meth:`Emulator.hold`: requests that reach it wait for `release()`."""

    def __init__(self, endpoint: str, stage: str, times: int) -> None:
        self.endpoint = endpoint
        self.stage = stage
        self.remaining = times
        #: Set when a request reaches the hold (it stays set).
        self.arrived = threading.Event()
        #: The User-Agent of each request that reached the hold, in order (who to act on).
        self.agents: list[str | None] = []
        #: Set when a client held at ``received`` went away (e.g. its process was killed):
        #: on release its request is abandoned, never processed, as the ``timeout`` fault does.
        self.client_gone = threading.Event()
        self._released = threading.Event()

    def wait(self, timeout: float = 10.0) -> None:
        """Block until a request has reached the hold (AssertionError after `timeout`)."""
        if not self.arrived.wait(timeout):
            raise AssertionError(f"no {self.endpoint} request reached the {self.stage} hold")

    def release(self) -> None:
        """Let held requests (and any later one reaching this hold) continue."""
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def __repr__(self) -> str:
        state = "released" if self.released else "arrived" if self.arrived.is_set() else "armed"
        return f"Hold({self.endpoint!r}, {self.stage!r}, {state})"


@dataclass
class _Reply:
    """A transport-free answer, so the state logic stays testable without HTTP."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _oauth_error(error: str, description: str, status: int = 400) -> _Reply:
    """MercadoLibre-shaped OAuth error (RFC 6749 fields plus status/cause)."""
    body = {"error": error, "error_description": description, "status": status, "cause": []}
    return _Reply(status, body)


def _invalid_request(param: str) -> _Reply:
    return _oauth_error("invalid_request", f"missing required parameter: {param}")


def _session_error(status: int, message: str) -> _Reply:
    return _Reply(status, {"error": message, "data": None})


class Emulator:
    """Provider state shared by the HTTP server thread and test code (one lock guards it all).

    Settings are plain attributes and may be changed at any time, also while requests are in
    flight. Time comes from :meth:`now`, which :meth:`advance` can move forward so tests can
    expire tokens without sleeping.
    """

    def __init__(self, **settings: Any) -> None:
        """`settings` are applied with :meth:`configure` (e.g. `Emulator(access_lifetime=2)`)."""
        self._lock = threading.Lock()
        # Settings.
        self.access_lifetime: float = 3600
        self.refresh_rotation: bool = True
        self.reuse_grace: float = 0.0
        self.revoke_family_on_reuse: bool = False
        self.refresh_lifetime: float | None = None
        self.latency: float = 0.0
        self.answer_latency: float = 0.0
        self.api_latency: float = 0.0
        self.www_authenticate: bool = False
        self.session_token_lifetime: float = 300
        self.session_idle_timeout: float = 120
        self.session_duration_limit: float = 600
        #: create_token tells the token's lifetime (`data.expires_in`); HeyGen does not.
        self.session_token_expires_in: bool = False
        #: Optional session calls this provider (or plan) has; the others answer 404.
        self.session_optional_calls: list[str] = ["start", "keep_alive", "interrupt"]
        #: Session calls accepted with the account's API key (`x-api-key`) instead of the
        #: session token (for a session of that account).
        self.session_api_key_calls: list[str] = ["stop"]
        #: Concurrent open sessions per account (API key); 0: no limit.
        self.session_concurrency: int = 0
        self.revoke_old_access_on_refresh: bool = False
        self.fault_delay: float = 10.0
        self.device_interval: int = 1
        self.user_id: int = 12345
        #: A careless provider: every refusal of the token and session-token endpoints repeats
        #: what it was sent (the form, the Authorization header, the API key) in its text.
        self.echo_secrets: bool = False
        # State.
        self._clock_offset = 0.0
        self._family_ids = itertools.count(1)
        self._clients: dict[str, _Client] = {}
        self._families: dict[str, _Family] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._codes: dict[str, _AuthCode] = {}
        self._devices: dict[str, _DeviceGrant] = {}
        self._user_codes: dict[str, str] = {}
        self._api_keys: set[str] = set()
        self._session_tokens: dict[str, _SessionToken] = {}
        self._sessions: dict[str, _Session] = {}
        self._faults: dict[str, deque[_Fault]] = {name: deque() for name in ENDPOINTS}
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._paths: dict[str, int] = {}
        self._refresh_log: list[dict[str, Any]] = []
        self._grant_log: list[dict[str, Any]] = []
        self._holds: dict[tuple[str, str], deque[Hold]] = {}
        if settings:
            self.configure(**settings)

    def __repr__(self) -> str:
        # Counts only: a repr ends up in logs and tracebacks, so no token or secret goes in it.
        return (
            f"Emulator(clients={len(self._clients)}, families={len(self._families)}, "
            f"sessions={len(self._sessions)})"
        )

    # ----------------------------------------------------------------- clock and settings

    def now(self) -> float:
        """Emulator time (monotonic seconds, plus whatever :meth:`advance` added)."""
        return time.monotonic() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move emulator time forward: expires tokens and idle sessions without sleeping."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._clock_offset += seconds

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change several settings at once, with type checks (used by the control endpoint)."""
        for name, value in settings.items():
            accepted = _SETTINGS.get(name)
            if accepted is None:
                raise ValueError(f"unknown setting: {name}")
            if isinstance(value, bool) and bool not in accepted:
                raise ValueError(f"setting {name} must be a number")
            if not isinstance(value, accepted):
                raise ValueError(f"bad type for setting {name}")
            if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                raise ValueError(f"setting {name} must be a list of strings")
        for name, value in settings.items():
            setattr(self, name, value)
        return self.settings()

    def settings(self) -> dict[str, Any]:
        """Current values of every run-time setting."""
        return {name: getattr(self, name) for name in _SETTINGS}

    # ----------------------------------------------------------------- counters

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of every counter, plus the ``sessions_open`` gauge."""
        with self._lock:
            self._reap_sessions()
            snapshot = dict(self._counters)
            snapshot["sessions_open"] = len(self._sessions)
        return snapshot

    @property
    def path_counts(self) -> dict[str, int]:
        """Requests seen per URL path (all methods together)."""
        with self._lock:
            return dict(self._paths)

    @property
    def refresh_log(self) -> list[dict[str, Any]]:
        """Successful refresh_token grants, oldest first; tokens appear only as fingerprints."""
        with self._lock:
            return [dict(entry) for entry in self._refresh_log]

    @property
    def grant_log(self) -> list[dict[str, Any]]:
        """Every refresh_token grant answered, oldest first, refused ones too: who sent it (its
        User-Agent, ``agent``), the token presented and any new one (fingerprints), and the
        ``outcome``: ``rotated`` (accepted), ``reused`` (already rotated), ``revoked``,
        ``expired``, ``unknown`` or ``grace_replay``. Lets a test tell which caller spent which
        refresh token without instrumenting the caller."""
        with self._lock:
            return [dict(entry) for entry in self._grant_log]

    def reset_counters(self) -> None:
        """Zero the counters, the per-path counts and the refresh and grant logs (state is
        kept)."""
        with self._lock:
            self._counters = dict.fromkeys(COUNTER_NAMES, 0)
            self._paths.clear()
            self._refresh_log.clear()
            self._grant_log.clear()

    def count(self, name: str, amount: int = 1) -> None:
        """Bump a counter (also used by the HTTP layer)."""
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + amount

    def count_path(self, path: str) -> None:
        with self._lock:
            self._paths[path] = self._paths.get(path, 0) + 1

    # ----------------------------------------------------------------- faults

    def inject(
        self,
        fault: str,
        *,
        times: int = 1,
        endpoint: str = "token",
        retry_after: float | None = None,
        delay: float | None = None,
    ) -> None:
        """Queue a fault for the next ``times`` requests to ``endpoint`` (token, api, session).

        Faults queued for one endpoint are consumed in order. ``retry_after`` sets the
        Retry-After header (429 defaults to 1); ``delay`` overrides :attr:`fault_delay`.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; use one of {sorted(ENDPOINTS)}")
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; use one of {sorted(FAULTS)}")
        if fault not in ENDPOINTS[endpoint]:
            raise ValueError(f"fault {fault!r} does not apply to endpoint {endpoint!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        if fault == "429" and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults[endpoint].append(_Fault(fault, times, retry_after, delay))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            for queue in self._faults.values():
                queue.clear()

    def pending_faults(self, endpoint: str = "token") -> list[tuple[str, int]]:
        """Queued faults for an endpoint as (name, remaining uses)."""
        with self._lock:
            return [(f.name, f.remaining) for f in self._faults[endpoint]]

    def take_fault(self, endpoint: str) -> _Fault | None:
        """Consume one use of the next queued fault for ``endpoint`` (HTTP layer)."""
        with self._lock:
            queue = self._faults[endpoint]
            if not queue:
                return None
            head = queue[0]
            head.remaining -= 1
            if head.remaining <= 0:
                queue.popleft()
            self._counters["faults_injected"] += 1
            return _Fault(head.name, 1, head.retry_after, head.delay)

    def hold(self, endpoint: str = "token", *, stage: str = "received", times: int = 1) -> Hold:
        """Stall the next ``times`` requests to ``endpoint`` at ``stage`` until released.

        ``stage`` is ``received`` (the request has arrived, nothing is processed yet) or
        ``answered`` (processed, e.g. a refresh token already rotated, the answer not yet sent).
        The returned :class:`Hold` tells the test when a request got there (``arrived``), so
        tests act at an exact instant of a request instead of sleeping; a server shutdown
        releases every hold.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; use one of {sorted(ENDPOINTS)}")
        if stage not in HOLD_STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {sorted(HOLD_STAGES)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        held = Hold(endpoint, stage, times)
        with self._lock:
            self._holds.setdefault((endpoint, stage), deque()).append(held)
        return held

    def take_hold(self, endpoint: str, stage: str) -> Hold | None:
        """Consume one use of the next hold at ``endpoint``/``stage`` (HTTP layer)."""
        with self._lock:
            queue = self._holds.get((endpoint, stage))
            if not queue:
                return None
            head = queue[0]
            head.remaining -= 1
            if head.remaining <= 0:
                queue.popleft()
            return head

    # ----------------------------------------------------------------- provisioning

    def add_client(
        self,
        client_id: str,
        client_secret: str | None,
        *,
        redirect_uris: list[str] | None = None,
    ) -> None:
        """Register an OAuth client; ``client_secret=None`` makes it a public client."""
        with self._lock:
            self._clients[client_id] = _Client(
                client_id, client_secret, list(redirect_uris) if redirect_uris else None
            )

    def add_api_key(self, key: str) -> None:
        """Accept ``key`` on the HeyGen-style ``streaming.create_token`` endpoint."""
        with self._lock:
            self._api_keys.add(key)

    def remove_api_key(self, key: str) -> None:
        """Stop accepting ``key`` (models a rotated or revoked vendor key)."""
        with self._lock:
            self._api_keys.discard(key)

    def issue_refresh_token(self, client_id: str, scope: str = DEFAULT_SCOPE) -> str:
        """Return a refresh token as if a user just logged in; it starts a new token family."""
        with self._lock:
            self._require_client(client_id)
            family = self._new_family(client_id)
            return self._new_refresh(client_id, family, scope)

    def issue_access_token(
        self, client_id: str, lifetime: float | None = None, scope: str = "read write"
    ) -> str:
        """Return a standalone access token (no family), valid for ``lifetime`` seconds."""
        with self._lock:
            self._require_client(client_id)
            life = self.access_lifetime if lifetime is None else lifetime
            return self._new_access(client_id, None, scope, life)

    def issue_session_token(self, api_key: str = "") -> str:
        """Mint a HeyGen-style session token directly, as create_token would."""
        with self._lock:
            return self._new_session_token(api_key)

    def expire_session_token(self, session_id: str) -> bool:
        """Make the token of one open session expired now (the session stays open upstream,
        as a session that outlives its token does). False when no such session is open."""
        with self._lock:
            session = self._sessions.get(session_id)
            record = self._session_tokens.get(session.token) if session else None
            if record is None:
                return False
            record.expires_at = min(record.expires_at, self.now())
            return True

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired (refresh tokens stay valid)."""
        with self._lock:
            now = self.now()
            for record in self._access.values():
                record.expires_at = min(record.expires_at, now)

    def revoke_access_tokens(self) -> int:
        """An administrator's revocation (a password change, "log out everywhere"): every
        access token issued so far stops working at once; refresh tokens stay valid, so a
        refresh yields a working token again. Returns how many were revoked."""
        with self._lock:
            live = [record for record in self._access.values() if not record.revoked]
            for record in live:
                record.revoked = True
            self._counters["admin_revocations"] += 1
            return len(live)

    def revoke(self, token: str) -> bool:
        """Revoke an access or refresh token (a refresh token takes its family along)."""
        with self._lock:
            return self._revoke(token)

    def approve_device(self, user_code: str, *, deny: bool = False) -> bool:
        """Play the person who enters ``user_code`` and approves (or denies) the device."""
        with self._lock:
            return self._approve_device(user_code, deny=deny)

    def is_access_token_valid(self, token: str) -> bool:
        with self._lock:
            return self._access_valid(token)

    def is_refresh_token_valid(self, token: str) -> bool:
        """True when ``token`` would be accepted by a refresh_token grant right now."""
        with self._lock:
            record = self._refresh.get(token)
            if record is None or record.revoked or record.rotated_at is not None:
                return False
            return not self._families[record.family].revoked and not self._refresh_expired(record)

    def open_sessions(self) -> list[str]:
        """Ids of HeyGen-style sessions still open (idle ones are closed first)."""
        with self._lock:
            self._reap_sessions()
            return list(self._sessions)

    # ----------------------------------------------------------------- internals (lock held)

    def _require_client(self, client_id: str) -> _Client:
        client = self._clients.get(client_id)
        if client is None:
            raise ValueError("unknown client_id")
        return client

    def _new_family(self, client_id: str) -> str:
        family_id = f"fam-{next(self._family_ids)}"
        self._families[family_id] = _Family(family_id, client_id)
        return family_id

    def _new_access(self, client_id: str, family: str | None, scope: str, lifetime: float) -> str:
        token = "APP_USR-" + secrets.token_urlsafe(24)
        self._access[token] = _AccessToken(client_id, family, scope, self.now() + lifetime)
        if family is not None:
            self._families[family].access_tokens.add(token)
        return token

    def _new_refresh(self, client_id: str, family: str, scope: str) -> str:
        token = "TG-" + secrets.token_urlsafe(24)
        self._refresh[token] = _RefreshToken(client_id, family, scope, self.now())
        self._families[family].refresh_tokens.add(token)
        return token

    def _new_session_token(self, api_key: str, prefix: str = "") -> str:
        token = prefix + secrets.token_urlsafe(32)
        life = self.session_token_lifetime
        self._session_tokens[token] = _SessionToken(self.now() + life, fingerprint(api_key))
        self._counters["session_tokens"] += 1
        return token

    def _access_valid(self, token: str) -> bool:
        record = self._access.get(token)
        if record is None or record.revoked or self.now() >= record.expires_at:
            return False
        return record.family is None or not self._families[record.family].revoked

    def _count_rejection(self, token: str) -> None:
        """Why an access token was refused: expired (by the provider's clock) or revoked."""
        record = self._access.get(token)
        if record is None:
            return
        if record.revoked or (record.family is not None and self._families[record.family].revoked):
            self._counters["api_401_revoked"] += 1
        elif self.now() >= record.expires_at:
            self._counters["api_401_expired"] += 1

    def _refresh_expired(self, record: _RefreshToken) -> bool:
        life = self.refresh_lifetime
        return life is not None and self.now() - record.issued_at > life

    def _revoke_family(self, family_id: str) -> None:
        family = self._families[family_id]
        if not family.revoked:
            family.revoked = True
            self._counters["families_revoked"] += 1
        for token in family.access_tokens:
            self._access[token].revoked = True
        for token in family.refresh_tokens:
            self._refresh[token].revoked = True

    def _revoke(self, token: str) -> bool:
        refresh = self._refresh.get(token)
        if refresh is not None:
            self._revoke_family(refresh.family)
            return True
        access = self._access.get(token)
        if access is not None:
            access.revoked = True
            return True
        return False

    def _approve_device(self, user_code: str, *, deny: bool) -> bool:
        normalized = user_code.strip().upper().replace(" ", "")
        device_code = self._user_codes.get(normalized)
        if device_code is None:
            return False
        grant = self._devices[device_code]
        if grant.used or self.now() >= grant.expires_at:
            return False
        grant.approved = not deny
        grant.denied = deny
        return True

    def _invalid_grant(self) -> _Reply:
        self._counters["invalid_grant"] += 1
        return _Reply(400, dict(INVALID_GRANT_BODY, cause=[]))

    def _token_body(self, access: str, refresh: str | None, scope: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": _seconds(self.access_lifetime),
            "scope": scope,
            "user_id": self.user_id,
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        return body

    def _issue_pair(self, client_id: str, scope: str) -> dict[str, Any]:
        """Start a family (a login) and answer with its first tokens."""
        family = self._new_family(client_id)
        access = self._new_access(client_id, family, scope, self.access_lifetime)
        # MercadoLibre only issues refresh tokens with the offline_access scope.
        refresh = self._new_refresh(client_id, family, scope) if _offline(scope) else None
        return self._token_body(access, refresh, scope)

    def _authenticate(
        self, params: Mapping[str, str], authorization: str | None
    ) -> tuple[_Client | None, _Reply | None]:
        """RFC 6749 2.3.1: HTTP Basic or client_id/client_secret in the body; both accepted."""
        basic = authorization is not None and authorization[:6].lower() == "basic "
        failure_headers = {"WWW-Authenticate": 'Basic realm="emulator"'} if basic else {}

        def fail() -> tuple[None, _Reply]:
            self._counters["invalid_client"] += 1
            reply = _oauth_error("invalid_client", "client authentication failed", 401)
            reply.headers.update(failure_headers)
            return None, reply

        client_id: str | None
        secret: str | None
        if basic:
            assert authorization is not None
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except ValueError:
                return fail()
            user, sep, password = raw.partition(":")
            if not sep:
                return fail()
            client_id, secret = unquote_plus(user), unquote_plus(password)
            if params.get("client_id") not in (None, "", client_id):
                return fail()
        else:
            client_id, secret = params.get("client_id"), params.get("client_secret")
        client = self._clients.get(client_id or "")
        if client is None:
            return fail()
        if client.client_secret is not None and not (
            secret and hmac.compare_digest(secret.encode(), client.client_secret.encode())
        ):
            return fail()
        return client, None

    # ----------------------------------------------------------------- endpoint logic

    def token_endpoint(
        self, params: Mapping[str, str], authorization: str | None, agent: str | None = None
    ) -> _Reply:
        """POST /oauth/token, already parsed: dispatch on grant_type (``agent``: the request's
        User-Agent, kept in :attr:`grant_log`)."""
        with self._lock:
            grant_type = params.get("grant_type")
            if not grant_type:
                return _invalid_request("grant_type")
            client, failure = self._authenticate(params, authorization)
            if failure is not None:
                return failure
            assert client is not None
            if grant_type == "refresh_token":
                return self._grant_refresh(client, params, agent)
            if grant_type == "client_credentials":
                return self._grant_client_credentials(client, params)
            if grant_type == "authorization_code":
                return self._grant_authorization_code(client, params)
            if grant_type == DEVICE_GRANT_TYPE:
                return self._grant_device(client, params)
            return _oauth_error("unsupported_grant_type", "grant_type is not supported")

    def _log_grant(
        self, agent: str | None, presented: str, outcome: str, family: str | None, new: str | None
    ) -> None:
        entry = {"time": time.time(), "clock": self.now(), "agent": agent, "outcome": outcome}
        entry |= {"presented": fingerprint(presented), "family": family}
        entry["new"] = None if new is None else fingerprint(new)
        self._grant_log.append(entry)

    def _refuse_refresh(
        self, agent: str | None, presented: str, record: _RefreshToken | None
    ) -> _Reply:
        """invalid_grant for `presented`, logged with the reason."""
        if record is None:
            outcome = "unknown"
        elif record.rotated_at is not None and not record.revoked:
            outcome = "reused"
        elif record.revoked or self._families[record.family].revoked:
            outcome = "revoked"
        else:
            outcome = "expired"
        family = None if record is None else record.family
        self._log_grant(agent, presented, outcome, family, None)
        return self._invalid_grant()

    def _grant_refresh(
        self, client: _Client, params: Mapping[str, str], agent: str | None = None
    ) -> _Reply:
        presented = params.get("refresh_token")
        if not presented:
            return _invalid_request("refresh_token")
        record = self._refresh.get(presented)
        if record is None or record.client_id != client.client_id:
            return self._refuse_refresh(agent, presented, None)
        family = self._families[record.family]
        if family.revoked or record.revoked or self._refresh_expired(record):
            return self._refuse_refresh(agent, presented, record)
        now = self.now()
        if record.rotated_at is not None:
            self._counters["refresh_reuse"] += 1
            if record.replay is not None and now - record.rotated_at <= self.reuse_grace:
                self._counters["refresh_grace_replays"] += 1
                replay = dict(record.replay)
                self._log_grant(agent, presented, "grace_replay", record.family, None)
                return _Reply(200, replay)
            refused = self._refuse_refresh(agent, presented, record)
            if self.revoke_family_on_reuse:
                self._revoke_family(record.family)
            return refused
        scope = record.scope
        requested = params.get("scope")
        if requested:
            if not set(requested.split()) <= set(record.scope.split()):
                return _oauth_error("invalid_scope", "requested scope exceeds the granted scope")
            scope = requested
        access = self._new_access(client.client_id, record.family, scope, self.access_lifetime)
        if self.revoke_old_access_on_refresh:
            for token in family.access_tokens:
                if token != access:
                    self._access[token].revoked = True
        if self.refresh_rotation:
            new_refresh = self._new_refresh(client.client_id, record.family, record.scope)
        else:
            new_refresh = presented
        body = self._token_body(access, new_refresh, scope)
        if self.refresh_rotation:
            record.rotated_at = now
            record.replay = dict(body)
        self._counters["refreshes"] += 1
        self._log_grant(agent, presented, "rotated", record.family, new_refresh)
        self._refresh_log.append(
            {
                "time": time.time(),
                "clock": now,
                "client_id": client.client_id,
                "family": record.family,
                "old": fingerprint(presented),
                "new": fingerprint(new_refresh),
                "access": fingerprint(access),
                "rotated": self.refresh_rotation,
            }
        )
        return _Reply(200, body)

    def _grant_client_credentials(self, client: _Client, params: Mapping[str, str]) -> _Reply:
        if client.client_secret is None:
            return _oauth_error("unauthorized_client", "public clients cannot use this grant")
        scope = params.get("scope") or "read write"
        access = self._new_access(client.client_id, None, scope, self.access_lifetime)
        body = self._token_body(access, None, scope)
        # Echo what was sent (never the secret) so tests can verify scope/audience/extras.
        body["params"] = {k: v for k, v in params.items() if k != "client_secret"}
        self._counters["client_credentials"] += 1
        return _Reply(200, body)

    def _grant_authorization_code(self, client: _Client, params: Mapping[str, str]) -> _Reply:
        code = params.get("code")
        if not code:
            return _invalid_request("code")
        record = self._codes.get(code)
        if record is None or record.client_id != client.client_id:
            return self._invalid_grant()
        if record.used:
            # RFC 6749 4.1.2: a code used twice revokes what it produced.
            if record.family is not None:
                self._revoke_family(record.family)
            return self._invalid_grant()
        if self.now() >= record.expires_at:
            return self._invalid_grant()
        if record.redirect_uri is not None and params.get("redirect_uri") != record.redirect_uri:
            return self._invalid_grant()
        verifier = params.get("code_verifier")
        if record.code_challenge is not None:
            if not verifier or not hmac.compare_digest(_pkce_s256(verifier), record.code_challenge):
                return self._invalid_grant()
        elif verifier:
            return self._invalid_grant()
        record.used = True
        body = self._issue_pair(client.client_id, record.scope)
        record.family = self._access[body["access_token"]].family
        self._counters["authorization_code"] += 1
        return _Reply(200, body)

    def _grant_device(self, client: _Client, params: Mapping[str, str]) -> _Reply:
        device_code = params.get("device_code")
        if not device_code:
            return _invalid_request("device_code")
        grant = self._devices.get(device_code)
        if grant is None or grant.client_id != client.client_id or grant.used:
            return self._invalid_grant()
        if self.now() >= grant.expires_at:
            return _oauth_error("expired_token", "the device code has expired")
        if grant.denied:
            return _oauth_error("access_denied", "the user denied the request")
        if not grant.approved:
            return _oauth_error("authorization_pending", "the user has not approved yet")
        grant.used = True
        self._counters["device_code"] += 1
        return _Reply(200, self._issue_pair(client.client_id, grant.scope))

    def authorize(self, params: Mapping[str, str]) -> _Reply:
        """GET /authorize: auto-approve and redirect back with a single-use code."""
        with self._lock:
            client = self._clients.get(params.get("client_id") or "")
            if client is None:
                return _oauth_error("invalid_client", "unknown client_id")
            redirect_uri = params.get("redirect_uri")
            if client.redirect_uris is not None:
                if redirect_uri is None and len(client.redirect_uris) == 1:
                    redirect_uri = client.redirect_uris[0]
                if redirect_uri not in client.redirect_uris:
                    return _oauth_error("invalid_request", "redirect_uri is not registered")
            if not redirect_uri:
                return _invalid_request("redirect_uri")
            target: str = redirect_uri
            state = params.get("state")

            def redirect(query: dict[str, str]) -> _Reply:
                if state is not None:
                    query["state"] = state
                joiner = "&" if "?" in target else "?"
                return _Reply(302, None, {"Location": target + joiner + urlencode(query)})

            if params.get("response_type") != "code":
                return redirect({"error": "unsupported_response_type"})
            challenge = params.get("code_challenge")
            method = params.get("code_challenge_method")
            if challenge and method != "S256":
                return redirect(
                    {"error": "invalid_request", "error_description": "only S256 is supported"}
                )
            code = "TG-" + secrets.token_urlsafe(16)
            self._codes[code] = _AuthCode(
                client.client_id,
                params.get("redirect_uri"),
                challenge or None,
                params.get("scope") or DEFAULT_SCOPE,
                self.now() + 600,
            )
            self._counters["authorizations"] += 1
            return redirect({"code": code})

    def device_authorization(
        self, params: Mapping[str, str], authorization: str | None, base_url: str
    ) -> _Reply:
        """POST /oauth/device/code (RFC 8628 3.1-3.2)."""
        with self._lock:
            client, failure = self._authenticate(params, authorization)
            if failure is not None:
                return failure
            assert client is not None
            device_code = secrets.token_urlsafe(32)
            alphabet = "BCDFGHJKLMNPQRSTVWXZ"
            letters = "".join(secrets.choice(alphabet) for _ in range(8))
            user_code = f"{letters[:4]}-{letters[4:]}"
            lifetime = 600
            self._devices[device_code] = _DeviceGrant(
                client.client_id,
                user_code,
                params.get("scope") or DEFAULT_SCOPE,
                self.now() + lifetime,
            )
            self._user_codes[user_code] = device_code
            self._counters["device_authorizations"] += 1
            verification_uri = base_url + "/device"
            complete = f"{verification_uri}?{urlencode({'user_code': user_code})}"
            body = {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": verification_uri,
                "verification_uri_complete": complete,
                "expires_in": lifetime,
                "interval": self.device_interval,
            }
            return _Reply(200, body)

    def revocation_endpoint(self, params: Mapping[str, str], authorization: str | None) -> _Reply:
        """POST /oauth/revoke (RFC 7009): 200 even for unknown tokens."""
        with self._lock:
            if authorization or params.get("client_id"):
                _client, failure = self._authenticate(params, authorization)
                if failure is not None:
                    return failure
            token = params.get("token")
            if not token:
                return _invalid_request("token")
            self._revoke(token)
            self._counters["revocations"] += 1
            return _Reply(200, None)

    def api_request(self, path: str, authorization: str | None) -> tuple[_Reply | None, str]:
        """Check the bearer token of a protected API call; ``None`` reply means allowed."""
        with self._lock:
            scheme, _, token = (authorization or "").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return _Reply(401, {"message": "authorization required"}), ""
            if not self._access_valid(token):
                self._count_rejection(token)
                headers = (
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                    if self.www_authenticate
                    else {}
                )
                return _Reply(401, dict(API_INVALID_TOKEN_BODY, cause=[]), headers), ""
            if path == "/api/scope-limited":
                body = {"message": "insufficient_scope", "error": "forbidden", "status": 403}
                headers = {"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="admin"'}
                return _Reply(403, {**body, "cause": []}, headers), ""
            return None, fingerprint(token)

    def create_session_token(self, api_key: str | None) -> _Reply:
        """POST /v1/streaming.create_token (HeyGen): API key in, single-session token out."""
        with self._lock:
            if not api_key or not any(
                hmac.compare_digest(api_key.encode(), known.encode()) for known in self._api_keys
            ):
                return _session_error(401, "invalid api key")
            data: dict[str, Any] = {"token": self._new_session_token(api_key)}
            if self.session_token_expires_in:
                data["expires_in"] = _seconds(self.session_token_lifetime)
            return _Reply(200, {"error": None, "data": data})

    def create_client_secret(self, authorization: str | None) -> _Reply:
        """POST /v1/realtime/client_secrets (OpenAI Realtime): the API key as a Bearer token
        in, an ephemeral key out, its expiry as a UNIX time."""
        with self._lock:
            key = _bearer(authorization)
            if not key or not any(
                hmac.compare_digest(key.encode(), known.encode()) for known in self._api_keys
            ):
                return _Reply(401, {"error": {"message": "Incorrect API key provided"}})
            token = self._new_session_token(key, "ek_")
            expires = time.time() + self.session_token_lifetime
            session = {"type": "realtime", "object": "realtime.session"}
            body = {"value": token, "expires_at": int(expires), "session": session}
            return _Reply(200, body)

    def create_liveavatar_token(self, api_key: str | None) -> _Reply:
        """POST /v1/sessions/token (LiveAvatar-style): the API key in X-API-KEY, a token for
        one session out (its session opens with POST /v1/sessions/start)."""
        answer = self.create_session_token(api_key)
        if answer.status != 200 or answer.body is None:
            return answer
        token = answer.body["data"]["token"]
        return _Reply(200, {"code": 1000, "data": {"session_token": token}})

    def _reap_sessions(self) -> None:
        """Close sessions idle for session_idle_timeout or older than session_duration_limit."""
        now = self.now()
        for session_id, session in list(self._sessions.items()):
            idle = now - session.last_seen > self.session_idle_timeout
            too_old = now - session.created_at > self.session_duration_limit
            if idle or too_old:
                self._close_session(session_id)
                self._counters["sessions_timed_out"] += 1

    def _close_session(self, session_id: str) -> None:
        session = self._sessions.pop(session_id)
        self._session_tokens.pop(session.token, None)

    def streaming_new(self, authorization: str | None, base_url: str) -> _Reply:
        """POST /v1/streaming.new: binds a fresh session token to a new session, once."""
        with self._lock:
            self._reap_sessions()
            token = _bearer(authorization)
            record = self._session_tokens.get(token) if token else None
            if record is None:
                return _session_error(401, "unauthorized")
            if record.session_id is not None:  # one token, one session
                self._counters["session_tokens_reused"] += 1
                return _session_error(401, "unauthorized")
            now = self.now()
            if now >= record.expires_at:
                self._counters["session_401_expired"] += 1
                return _session_error(401, "unauthorized")
            held = sum(1 for s in self._sessions.values() if s.account == record.account)
            if self.session_concurrency and held >= self.session_concurrency:
                self._counters["sessions_refused_quota"] += 1
                return _session_error(400, "concurrent session limit reached")
            session_id = secrets.token_hex(16)
            record.session_id = session_id
            self._sessions[session_id] = _Session(session_id, token, now, now, record.account)
            self._counters["sessions_started"] += 1
            ws_base = "ws" + base_url.removeprefix("http")
            data = {
                "session_id": session_id,
                "access_token": secrets.token_urlsafe(24),
                "url": f"{ws_base}/livekit",
                "session_duration_limit": _seconds(self.session_duration_limit),
                "is_paid": False,
            }
            return _Reply(200, {"code": 100, "message": "success", "data": data})

    def _session_caller(
        self, action: str, authorization: str | None, api_key: str | None, session_id: str
    ) -> _Session | _Reply:
        """The session a call may act on: by its own (unexpired) token, or by its account's
        API key where the provider accepts the key for this call."""
        session = self._sessions.get(session_id)
        if api_key and action in self.session_api_key_calls:
            known = any(hmac.compare_digest(api_key.encode(), k.encode()) for k in self._api_keys)
            if not known or session is None or session.account != fingerprint(api_key):
                return _session_error(401, "unauthorized")
            self._counters["session_api_key_calls"] += 1
            return session
        token = _bearer(authorization)
        record = self._session_tokens.get(token) if token else None
        if record is None or record.session_id is None:
            return _session_error(401, "unauthorized")
        if self.now() >= record.expires_at:
            self._counters["session_401_expired"] += 1
            return _session_error(401, "unauthorized")
        if session is None or session.token != token:
            return _session_error(401, "unauthorized")
        return session

    def streaming_call(
        self,
        action: str,
        authorization: str | None,
        payload: Mapping[str, Any],
        api_key: str | None = None,
    ) -> _Reply:
        """start / task / keep_alive / interrupt / stop on a session owned by the token (or,
        for the calls in `session_api_key_calls`, by the API key's account)."""
        with self._lock:
            self._reap_sessions()
            if action in ("start", "keep_alive", "interrupt") and (
                action not in self.session_optional_calls
            ):
                return _session_error(404, f"streaming.{action} is not available")
            session_id = payload.get("session_id")
            if not isinstance(session_id, str) or not session_id:
                if not _bearer(authorization) and not api_key:
                    return _session_error(401, "unauthorized")
                return _session_error(400, "session_id is required")
            found = self._session_caller(action, authorization, api_key, session_id)
            if isinstance(found, _Reply):
                return found
            session = found
            session.last_seen = self.now()
            data: dict[str, Any] | None = None
            if action == "start":
                session.streaming = True
                self._counters["streams_started"] += 1
            elif action == "task":
                text = payload.get("text")
                task_type = payload.get("task_type", "repeat")
                if not isinstance(text, str) or not text:
                    return _session_error(400, "text is required")
                if task_type not in ("repeat", "chat"):
                    return _session_error(400, "task_type must be repeat or chat")
                self._counters["tasks"] += 1
                duration = max(500, 80 * len(text.split()))
                data = {"task_id": secrets.token_hex(8), "duration_ms": duration}
            elif action == "keep_alive":
                self._counters["keepalives"] += 1
            elif action == "interrupt":
                self._counters["interrupts"] += 1
            elif action == "stop":
                self._close_session(session.session_id)
                self._counters["sessions_stopped"] += 1
            else:  # pragma: no cover - routes only pass known actions
                return _session_error(404, "unknown action")
            return _Reply(200, {"code": 100, "message": "success", "data": data})


def _offline(scope: str) -> bool:
    return "offline_access" in scope.split()


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


# ===================================================================== HTTP layer


class _PathCounter:
    """ASGI middleware: per-path request counts (cheap enough to keep on always)."""

    def __init__(self, app: ASGIApp, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.emulator.count_path(scope["path"])
        await self.app(scope, receive, send)


def _respond(reply: _Reply, *, no_store: bool = False) -> Response:
    headers = dict(reply.headers)
    if no_store:
        headers.setdefault("Cache-Control", "no-store")
        headers.setdefault("Pragma", "no-cache")
    if reply.body is None:
        return Response(b"", reply.status, headers)
    return JSONResponse(reply.body, reply.status, headers)


class _Handlers:
    """Starlette endpoints; thin wrappers that add faults and delays around Emulator logic."""

    def __init__(self, emulator: Emulator, closing: threading.Event) -> None:
        self.emu = emulator
        self.closing = closing

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server shuts down (keeps stop() fast)."""
        deadline = time.monotonic() + seconds
        while not self.closing.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.05))

    async def held(self, request: Request, endpoint: str, stage: str) -> bool:
        """Wait at a hold the test placed on this endpoint and stage, if any. False: the client
        went away while held before processing (the provider never got to its request)."""
        hold = self.emu.take_hold(endpoint, stage)
        if hold is None:
            return True
        hold.agents.append(request.headers.get("user-agent"))
        watch = stage == "received"
        if watch:
            await request.body()  # cache it: is_disconnected() below must not eat the body
        hold.arrived.set()
        while not hold.released and not self.closing.is_set():
            if watch and not hold.client_gone.is_set() and await request.is_disconnected():
                hold.client_gone.set()
            await asyncio.sleep(0.002)
        return not (watch and hold.client_gone.is_set())

    def fault_response(self, fault: _Fault, endpoint: str) -> Response | None:
        """Answer that replaces the real one, or None for delay-type faults."""
        name = fault.name
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(_seconds(fault.retry_after))
        if name in ("500", "503"):
            message = "internal_error" if name == "500" else "service_unavailable"
            body = {"message": message, "error": message, "status": int(name), "cause": []}
            return JSONResponse(body, int(name), headers)
        if name == "429":
            body = {"message": "local_rate_limited", "error": "too_many_requests", "status": 429}
            return JSONResponse({**body, "cause": []}, 429, headers)
        if name == "html":
            page = "<html><body><h1>502 Bad Gateway</h1><p>upstream error</p></body></html>"
            return HTMLResponse(page, 200)
        if name == "garbage":
            return Response(b"\x00\xffnot json{{", 200, media_type="application/json")
        if name == "no_access_token":
            if endpoint == "session":
                return JSONResponse({"error": None, "data": {}}, 200)
            body = {
                "token_type": "Bearer",
                "expires_in": _seconds(self.emu.access_lifetime),
                "scope": DEFAULT_SCOPE,
                "user_id": self.emu.user_id,
            }
            return JSONResponse(body, 200)
        if name == "invalid_grant":
            self.emu.count("invalid_grant")
            return JSONResponse(dict(INVALID_GRANT_BODY, cause=[]), 400)
        if name == "401":
            if endpoint == "session":
                return JSONResponse({"error": "invalid api key", "data": None}, 401)
            if self.emu.www_authenticate:
                headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return JSONResponse(dict(API_INVALID_TOKEN_BODY, cause=[]), 401, headers)
        return None

    async def run_with_faults(
        self,
        request: Request,
        endpoint: str,
        latency: float,
        work: Callable[[], Awaitable[_Reply]],
        *,
        no_store: bool = False,
    ) -> Response:
        """Common shape of a faultable endpoint: latency, fault, work, maybe a lost answer."""
        if not await self.held(request, endpoint, "received"):
            self.emu.count("abandoned_requests")
            return Response(b"", 504)
        if latency > 0:
            await self.sleep(latency)
        fault = self.emu.take_fault(endpoint)
        if fault is not None:
            replaced = self.fault_response(fault, endpoint)
            if replaced is not None:
                return replaced
        delay = self.emu.fault_delay if fault is None or fault.delay is None else fault.delay
        if fault is not None and fault.name == "timeout":
            await request.body()  # cache it: is_disconnected() below must not eat the body
            await self.sleep(delay)
            if await request.is_disconnected():
                # The client gave up before the provider got to it: nothing is processed.
                self.emu.count("abandoned_requests")
                return Response(b"", 504)
        try:
            reply: _Reply = await work()
        except ClientDisconnect:  # gone before its body arrived (a killed process): no answer
            return Response(b"", 499)
        await self.held(request, endpoint, "answered")
        if endpoint == "token" and self.emu.answer_latency > 0:
            # The token's lifetime already runs while its answer travels back.
            await self.sleep(self.emu.answer_latency)
        if fault is not None and fault.name == "drop_after_processing":
            # The work is done (a refresh token may have rotated); the answer comes too late.
            await self.sleep(delay)
        if fault is not None and fault.name == "negative_expires" and reply.status == 200:
            assert reply.body is not None
            reply.body["expires_in"] = -5
        if self.emu.echo_secrets and reply.status >= 400 and isinstance(reply.body, dict):
            await self._echo(request, reply.body)
        return _respond(reply, no_store=no_store)

    async def _echo(self, request: Request, body: dict[str, Any]) -> None:
        """`echo_secrets`: the refusal quotes the request (form, Authorization, API key)."""
        sent = (await request.body()).decode("utf-8", "replace")
        heard = [f"form: {sent}"] if sent else []
        for name in ("authorization", "x-api-key"):
            if name in request.headers:
                heard.append(f"{name}: {request.headers[name]}")
        quoted = "; ".join(heard)
        if "error_description" in body:  # OAuth: the description repeats the request
            body["error_description"] = f"{body['error_description']} (we got {quoted})"
        elif isinstance(body.get("error"), str):  # HeyGen: the error itself does
            body["error"] = f"{body['error']} (we got {quoted})"

    # --- OAuth

    async def token(self, request: Request) -> Response:
        self.emu.count("token_requests")

        async def work() -> _Reply:
            params, failure = await _read_form(request)
            if failure is not None:
                return failure
            headers = request.headers
            return self.emu.token_endpoint(
                params, headers.get("authorization"), headers.get("user-agent")
            )

        try:
            return await self.run_with_faults(
                request, "token", self.emu.latency, work, no_store=True
            )
        finally:
            # Beside `token_requests`: a test that killed a client waits until the two agree,
            # so a request the dead client left behind cannot rotate a token afterwards.
            self.emu.count("token_requests_finished")

    async def authorize(self, request: Request) -> Response:
        reply = self.emu.authorize(dict(request.query_params))
        return _respond(reply)

    async def device_code(self, request: Request) -> Response:
        params, failure = await _read_form(request)
        if failure is not None:
            return _respond(failure)
        base = _base_url(request)
        reply = self.emu.device_authorization(params, request.headers.get("authorization"), base)
        return _respond(reply, no_store=True)

    async def device_page(self, request: Request) -> Response:
        user_code = request.query_params.get("user_code", "")
        page = (
            "<html><body><form method='post' action='/device/approve'>"
            f"<input name='user_code' value='{_html_attr(user_code)}'>"
            "<button>Approve</button></form></body></html>"
        )
        return HTMLResponse(page)

    async def device_approve(self, request: Request) -> Response:
        params, failure = await _read_form(request)
        if failure is not None:
            return _respond(failure)
        user_code = params.get("user_code")
        if not user_code:
            return _respond(_invalid_request("user_code"))
        deny = params.get("action") == "deny"
        if not self.emu.approve_device(user_code, deny=deny):
            return JSONResponse({"error": "invalid_user_code"}, 400)
        return JSONResponse({"approved": not deny})

    async def revoke(self, request: Request) -> Response:
        params, failure = await _read_form(request)
        if failure is not None:
            return _respond(failure)
        return _respond(self.emu.revocation_endpoint(params, request.headers.get("authorization")))

    async def metadata(self, request: Request) -> Response:
        base = _base_url(request)
        body = {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "device_authorization_endpoint": f"{base}/oauth/device/code",
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "client_credentials",
                DEVICE_GRANT_TYPE,
            ],
            "response_types_supported": ["code"],
            "scopes_supported": ["offline_access", "read", "write"],
        }
        return JSONResponse(body)

    # --- protected API

    async def api(self, request: Request) -> Response:
        self.emu.count("api_calls")

        async def work() -> _Reply:
            path = request.url.path
            denied, token_fp = self.emu.api_request(path, request.headers.get("authorization"))
            if denied is not None:
                return denied
            raw = await request.body()
            text = raw.decode("utf-8", errors="replace")
            parsed: Any = None
            if raw:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
            body = {
                "ok": True,
                "method": request.method,
                "path": path,
                "query": dict(request.query_params),
                "body": text,
                "json": parsed,
                "token_fingerprint": token_fp,
            }
            return _Reply(200, body)

        response = await self.run_with_faults(request, "api", self.emu.api_latency, work)
        outcome = {200: "api_ok", 401: "api_401", 403: "api_403"}.get(response.status_code)
        if outcome is not None:
            self.emu.count(outcome)
        return response

    # --- HeyGen-style session tokens

    async def create_token(self, request: Request) -> Response:
        self.emu.count("session_token_requests")

        async def work() -> _Reply:
            return self.emu.create_session_token(request.headers.get("x-api-key"))

        return await self.run_with_faults(request, "session", self.emu.latency, work, no_store=True)

    async def client_secret(self, request: Request) -> Response:
        self.emu.count("session_token_requests")

        async def work() -> _Reply:
            return self.emu.create_client_secret(request.headers.get("authorization"))

        return await self.run_with_faults(request, "session", self.emu.latency, work, no_store=True)

    async def liveavatar_token(self, request: Request) -> Response:
        self.emu.count("session_token_requests")

        async def work() -> _Reply:
            return self.emu.create_liveavatar_token(request.headers.get("x-api-key"))

        return await self.run_with_faults(request, "session", self.emu.latency, work, no_store=True)

    async def streaming_new(self, request: Request) -> Response:
        base = _base_url(request)
        return _respond(self.emu.streaming_new(request.headers.get("authorization"), base))

    def streaming(self, action: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            payload, failure = await _read_json(request)
            if failure is not None:
                return _respond(failure)
            auth = request.headers.get("authorization")
            key = request.headers.get("x-api-key")
            if action != "stop":
                return _respond(self.emu.streaming_call(action, auth, payload, key))

            async def work() -> _Reply:
                return self.emu.streaming_call(action, auth, payload, key)

            return await self.run_with_faults(request, "stop", 0.0, work)

        return endpoint

    # --- control endpoints (loopback only)

    async def control(self, request: Request) -> Response:
        client = request.client
        if client is None or client.host not in _LOOPBACK:
            return JSONResponse({"error": "control endpoints are loopback-only"}, 403)
        action = request.path_params["action"]
        emu = self.emu
        if request.method == "GET":
            if action == "counters":
                return JSONResponse(emu.counters)
            if action == "refresh-log":
                return JSONResponse(emu.refresh_log)
            if action == "grant-log":
                return JSONResponse(emu.grant_log)
            if action == "config":
                return JSONResponse(emu.settings())
            if action == "sessions":
                return JSONResponse({"open": emu.open_sessions()})
            return JSONResponse({"error": "not found"}, 404)
        payload, failure = await _read_json(request)
        if failure is not None:
            return _respond(failure)
        try:
            return JSONResponse(self.control_post(action, payload))
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": str(exc)}, 400)

    def control_post(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        emu = self.emu
        if action == "reset-counters":
            emu.reset_counters()
            return {"ok": True}
        if action == "config":
            return emu.configure(**payload)
        if action == "clients":
            emu.add_client(
                str(payload["client_id"]),
                payload.get("client_secret"),
                redirect_uris=payload.get("redirect_uris"),
            )
            return {"ok": True}
        if action == "api-keys":
            emu.add_api_key(str(payload["key"]))
            return {"ok": True}
        if action == "refresh-tokens":
            scope = str(payload.get("scope") or DEFAULT_SCOPE)
            return {"refresh_token": emu.issue_refresh_token(str(payload["client_id"]), scope)}
        if action == "access-tokens":
            lifetime = payload.get("lifetime")
            token = emu.issue_access_token(
                str(payload["client_id"]), None if lifetime is None else float(lifetime)
            )
            return {"access_token": token}
        if action == "inject":
            retry_after = payload.get("retry_after")
            delay = payload.get("delay")
            emu.inject(
                str(payload["fault"]),
                times=int(payload.get("times", 1)),
                endpoint=str(payload.get("endpoint", "token")),
                retry_after=None if retry_after is None else float(retry_after),
                delay=None if delay is None else float(delay),
            )
            return {"ok": True}
        if action == "clear-faults":
            emu.clear_faults()
            return {"ok": True}
        if action == "advance":
            emu.advance(float(payload["seconds"]))
            return {"ok": True}
        if action == "expire-access-tokens":
            emu.expire_access_tokens()
            return {"ok": True}
        if action == "revoke-access-tokens":
            return {"revoked": emu.revoke_access_tokens()}
        raise ValueError(f"unknown control action: {action}")


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _html_attr(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("'", "&#39;")
        .replace('"', "&quot;")
        .replace("<", "&lt;")
    )


async def _read_form(request: Request) -> tuple[dict[str, str], _Reply | None]:
    """Parse an x-www-form-urlencoded body without python-multipart; repeats are errors."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != "application/x-www-form-urlencoded":
        reply = _oauth_error("invalid_request", "expected application/x-www-form-urlencoded")
        return {}, reply
    raw = await request.body()
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}, _oauth_error("invalid_request", "body is not valid UTF-8")
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:  # RFC 6749 3.2: parameters must not be repeated
            return {}, _oauth_error("invalid_request", f"parameter repeated: {key}")
        params[key] = value
    return params, None


async def _read_json(request: Request) -> tuple[dict[str, Any], _Reply | None]:
    raw = await request.body()
    if not raw.strip():
        return {}, None
    try:
        payload = json.loads(raw)
    except ValueError:
        return {}, _session_error(400, "body is not valid JSON")
    if not isinstance(payload, dict):
        return {}, _session_error(400, "body must be a JSON object")
    return payload, None


def create_app(emulator: Emulator, closing: threading.Event | None = None) -> Starlette:
    """Build the ASGI app for ``emulator``; ``closing`` set means "stop sleeping, answer now"."""
    h = _Handlers(emulator, closing if closing is not None else threading.Event())
    api_methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route("/oauth/token", h.token, methods=["POST"]),
        Route("/authorize", h.authorize, methods=["GET"]),
        Route("/oauth/device/code", h.device_code, methods=["POST"]),
        Route("/device", h.device_page, methods=["GET"]),
        Route("/device/approve", h.device_approve, methods=["POST"]),
        Route("/oauth/revoke", h.revoke, methods=["POST"]),
        Route("/.well-known/oauth-authorization-server", h.metadata, methods=["GET"]),
        Route("/.well-known/openid-configuration", h.metadata, methods=["GET"]),
        Route("/api/{path:path}", h.api, methods=api_methods),
        Route("/v1/streaming.create_token", h.create_token, methods=["POST"]),
        Route("/v1/streaming.new", h.streaming_new, methods=["POST"]),
        # The same provider behind OpenAI Realtime's and LiveAvatar's shapes.
        Route("/v1/realtime/client_secrets", h.client_secret, methods=["POST"]),
        Route("/v1/sessions/token", h.liveavatar_token, methods=["POST"]),
        Route("/v1/sessions/start", h.streaming_new, methods=["POST"]),
        Route("/v1/sessions/keep-alive", h.streaming("keep_alive"), methods=["POST"]),
        Route("/v1/sessions/stop", h.streaming("stop"), methods=["POST"]),
        Route("/_emulator/{action}", h.control, methods=["GET", "POST"]),
    ]
    for action in ("start", "task", "keep_alive", "interrupt", "stop"):
        routes.append(Route(f"/v1/streaming.{action}", h.streaming(action), methods=["POST"]))
    app = Starlette(routes=routes, middleware=[Middleware(_PathCounter, emulator=emulator)])
    app.state.emulator = emulator
    app.state.closing = h.closing
    return app
