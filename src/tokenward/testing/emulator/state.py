"""The provider's state: the records it keeps (clients, token families, tokens, codes, device
grants, sessions), its run-time settings and its clock. The model's other parts (accounts, grants,
sessions, faults, counters) are mixins over `ProviderState`; one lock guards it all."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .holds import Fault, Hold
from .shapes import COUNTER_NAMES, ENDPOINTS, SETTINGS


@dataclass
class Client:
    client_id: str
    client_secret: str | None
    redirect_uris: list[str] | None


@dataclass
class Family:
    family_id: str
    client_id: str
    revoked: bool = False
    access_tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)


@dataclass
class AccessToken:
    client_id: str
    family: str | None
    scope: str
    expires_at: float
    revoked: bool = False


@dataclass
class RefreshToken:
    client_id: str
    family: str
    scope: str
    issued_at: float
    rotated_at: float | None = None
    replay: dict[str, Any] | None = None  # the answer that rotated it, for reuse_grace
    revoked: bool = False


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str | None
    code_challenge: str | None
    scope: str
    expires_at: float
    used: bool = False
    family: str | None = None


@dataclass
class DeviceGrant:
    client_id: str
    user_code: str
    scope: str
    expires_at: float
    approved: bool = False
    denied: bool = False
    used: bool = False


@dataclass
class SessionToken:
    expires_at: float
    account: str
    session_id: str | None = None


@dataclass
class Session:
    session_id: str
    token: str
    created_at: float
    last_seen: float
    account: str
    streaming: bool = False


class ProviderState:
    """Settings, records and clock of the emulated provider (see :class:`Emulator`)."""

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
        self._clients: dict[str, Client] = {}
        self._families: dict[str, Family] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._codes: dict[str, AuthCode] = {}
        self._devices: dict[str, DeviceGrant] = {}
        self._user_codes: dict[str, str] = {}
        self._api_keys: set[str] = set()
        self._session_tokens: dict[str, SessionToken] = {}
        self._sessions: dict[str, Session] = {}
        self._faults: dict[str, deque[Fault]] = {name: deque() for name in ENDPOINTS}
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
            accepted = SETTINGS.get(name)
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
        return {name: getattr(self, name) for name in SETTINGS}
