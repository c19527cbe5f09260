"""The upstream lifecycle of a session: what starts, keeps alive and stops it at the provider.

`Sessions` (tokenward.sessions) mints a token per session; the hooks here turn that token into
an upstream session and end it. `SessionHooks` is the interface (override what a provider
needs); `SessionCalls` states a provider's calls as configuration (what the presets'
`session_*` keys fill in), with a stop retried on transient failures and sent with the API key
where the provider accepts it; `HeyGenStreaming` is HeyGen's streaming avatar.

    sessions = Sessions(source, base_url="https://api.heygen.com", hooks=HeyGenStreaming())

`SessionState` is what a hook sees of a session: it holds no reference to the session object,
so an abandoned session can be garbage-collected and its finalizer still stop it upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2

from . import events
from .errors import SessionExpired, StopFailed
from .jsonpath import MISSING, lookup
from .retry import RetryPolicy
from .rules import ExpiryRule
from .token import Token

__all__ = ["HeyGenStreaming", "SessionCalls", "SessionHooks", "SessionState"]


@dataclass
class SessionState:
    """What hooks see of a session. Holds no reference to the `Session` object itself, so an
    abandoned session can be garbage-collected and its finalizer still stop it upstream."""

    key: str
    token: Token
    client: Any  # httpx2.Client, or httpx2.AsyncClient in an async session
    base_url: str
    #: The upstream session id, set by `SessionHooks.start` (HeyGen: `session_id`).
    upstream_id: str | None = None
    #: Whatever else the start hook wants to keep (HeyGen: media url, access token, limits).
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    closed: bool = False
    #: When the provider ends the session whatever happens (its duration limit), if known.
    ends_at: float | None = None
    #: The provider no longer accepts the token (seen on an answer).
    expired: bool = False
    #: Headers carrying the API key, for the calls the provider accepts it on (`SessionCalls.
    #: api_key_calls`); empty when the source has no API key.
    api_key_headers: dict[str, str] = field(default_factory=dict, repr=False)
    #: Paths (relative to base_url) the provider accepts with the API key instead of the token.
    api_key_calls: frozenset[str] = frozenset()
    expiry_rule: ExpiryRule = field(default_factory=ExpiryRule)


class SessionHooks:
    """The upstream lifecycle of a session; override what the provider needs. Sync methods
    serve `with` sessions, async ones `async with` sessions; the finalizer of an abandoned
    session of either kind uses the sync `stop` (with a temporary client), as no event loop
    may be running by then."""

    #: Seconds between keep-alive calls while a session is open (None: no ticker).
    keep_alive_interval: float | None = None

    def start(self, state: SessionState) -> None:
        """Open the upstream session (called once the token is minted)."""

    def stop(self, state: SessionState) -> None:
        """Close the upstream session."""

    def keep_alive(self, state: SessionState) -> None:
        """Tell the provider the session is still in use."""

    async def astart(self, state: SessionState) -> None:
        """`start` for async sessions."""

    async def astop(self, state: SessionState) -> None:
        """`stop` for async sessions."""

    async def akeep_alive(self, state: SessionState) -> None:
        """`keep_alive` for async sessions."""


class SessionCalls(SessionHooks):
    """A provider's session lifecycle as configuration: which calls open, start, keep alive
    and stop an upstream session, and which of them the provider accepts with the API key
    instead of the session token (paths relative to the session's `base_url`; None: the
    provider has no such call). Presets fill these in (`session_new`, `session_start`, ...).

    The stop is retried with backoff on transient failures (network errors, 429, 5xx), within
    `stop_retry`'s deadline, and sent with the API key where the provider accepts it once the
    token is refused; a stop that still fails raises `StopFailed`, never passes silently.
    """

    def __init__(
        self,
        *,
        new: str | None = None,
        start: str | None = None,
        keep_alive: str | None = None,
        stop: str | None = None,
        new_body: Mapping[str, Any] | None = None,
        id_field: str = "session_id",
        id_path: str = "data.session_id",
        info_path: str | None = "data",
        limit_path: str | None = None,
        api_key_calls: tuple[str, ...] = (),
        keep_alive_interval: float | None = None,
        stop_retry: RetryPolicy | None = None,
    ) -> None:
        self.new = new or None
        self.start_path = start or None
        self.keep_alive_path = keep_alive or None
        self.stop_path = stop or None
        self.new_body = dict(new_body or {})
        self.id_field = id_field
        self.id_path = id_path
        self.info_path = info_path
        self.limit_path = limit_path
        self.api_key_calls = frozenset(api_key_calls)
        self.keep_alive_interval = keep_alive_interval
        self.stop_retry = stop_retry or RetryPolicy(initial=0.1, maximum=1.0, deadline=3.0)

    def start(self, state: SessionState) -> None:
        if self.new is not None:
            self._opened(state, _ok(state.client.post(self.new, json=self.new_body)))
        if self.start_path is not None:
            answer = _ok(state.client.post(self.start_path, json=self._start_body(state)))
            if self.new is None:  # the start call opens the session (LiveAvatar)
                self._opened(state, answer)

    async def astart(self, state: SessionState) -> None:
        if self.new is not None:
            self._opened(state, _ok(await state.client.post(self.new, json=self.new_body)))
        if self.start_path is not None:
            answer = _ok(await state.client.post(self.start_path, json=self._start_body(state)))
            if self.new is None:
                self._opened(state, answer)

    def stop(self, state: SessionState) -> None:
        if state.upstream_id is None or self.stop_path is None:
            return
        started = time.monotonic()
        for attempt in itertools.count(1):
            answer: httpx2.Response | None = None
            failure: Exception | None = None
            try:
                answer = state.client.post(self.stop_path, json=self._ref(state))
            except httpx2.TransportError as exc:
                failure = exc
            except SessionExpired:
                raise _unstoppable(state) from None
            wait = self._stop_outcome(state, answer, failure, attempt, started)
            if wait is None:
                return
            time.sleep(wait)

    async def astop(self, state: SessionState) -> None:
        if state.upstream_id is None or self.stop_path is None:
            return
        started = time.monotonic()
        for attempt in itertools.count(1):
            answer: httpx2.Response | None = None
            failure: Exception | None = None
            try:
                answer = await state.client.post(self.stop_path, json=self._ref(state))
            except httpx2.TransportError as exc:
                failure = exc
            except SessionExpired:
                raise _unstoppable(state) from None
            wait = self._stop_outcome(state, answer, failure, attempt, started)
            if wait is None:
                return
            await asyncio.sleep(wait)

    def keep_alive(self, state: SessionState) -> None:
        if self.keep_alive_path is not None and state.upstream_id is not None:
            _ok(state.client.post(self.keep_alive_path, json=self._ref(state)))

    async def akeep_alive(self, state: SessionState) -> None:
        if self.keep_alive_path is not None and state.upstream_id is not None:
            _ok(await state.client.post(self.keep_alive_path, json=self._ref(state)))

    def _ref(self, state: SessionState) -> dict[str, Any]:
        return {self.id_field: state.upstream_id}

    def _start_body(self, state: SessionState) -> dict[str, Any]:
        return self._ref(state) if self.new is not None else dict(self.new_body)

    def _opened(self, state: SessionState, answer: httpx2.Response) -> None:
        payload = answer.json()
        found = lookup(payload, self.id_path)
        state.upstream_id = str(found) if found is not MISSING and found is not None else None
        info = lookup(payload, self.info_path) if self.info_path else MISSING
        if isinstance(info, dict):
            state.info = {k: v for k, v in info.items() if k != self.id_field}
        limit = lookup(payload, self.limit_path) if self.limit_path else MISSING
        if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0:
            state.ends_at = time.time() + float(limit)

    def _stop_outcome(
        self,
        state: SessionState,
        answer: httpx2.Response | None,
        failure: Exception | None,
        attempt: int,
        started: float,
    ) -> float | None:
        """None when the stop is done; else the seconds to wait before the next attempt, or
        `StopFailed` when no attempt is left or none can help."""
        if answer is not None and answer.is_success:
            return None
        if answer is not None and answer.status_code not in _TRANSIENT:
            # The token was refused and the stop has no API-key alternative (else the session
            # auth would have retried with the key), or the provider refused the request.
            reason = f"the provider answered {answer.status_code}"
            raise StopFailed(state.key, reason, pending=False)
        retry_after = None
        if answer is not None:
            retry_after = _retry_after(answer)
        wait = self.stop_retry.delay(attempt, time.monotonic() - started, retry_after)
        if wait is None:
            shown = f"{answer.status_code}" if answer is not None else type(failure).__name__
            reason = f"still failing after {attempt} attempt(s) ({shown})"
            raise StopFailed(state.key, reason, pending=True)
        events.emit("session.stop_retry", state.key, attempt=attempt, retry_in=round(wait, 3))
        return wait


class HeyGenStreaming(SessionCalls):
    """HeyGen streaming avatar: `streaming.new` (+ `streaming.start`) on start,
    `streaming.keep_alive` on the ticker, `streaming.stop` on close, which HeyGen also accepts
    with the API key (so a session that outlived its token can still be stopped)."""

    def __init__(
        self,
        *,
        keep_alive_interval: float | None = 30.0,
        new_body: Mapping[str, Any] | None = None,
        start_stream: bool = True,
    ) -> None:
        super().__init__(
            new="/v1/streaming.new",
            start="/v1/streaming.start" if start_stream else None,
            keep_alive="/v1/streaming.keep_alive",
            stop="/v1/streaming.stop",
            new_body=new_body,
            limit_path="data.session_duration_limit",
            api_key_calls=("/v1/streaming.stop",),
            keep_alive_interval=keep_alive_interval,
        )
        self.start_stream = start_stream


def _unstoppable(state: SessionState) -> StopFailed:
    reason = "its token expired and the provider accepts no API key for the stop"
    return StopFailed(state.key, reason, pending=False)


#: Answers worth another stop attempt.
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})


def _retry_after(answer: httpx2.Response) -> float | None:
    try:
        return float(answer.headers.get("retry-after", ""))
    except ValueError:
        return None


def _ok(answer: httpx2.Response) -> httpx2.Response:
    answer.raise_for_status()
    return answer
