"""Session-scoped tokens (the HeyGen pattern, use case U3 in docs/architecture.md).

Some providers hand out a short-lived token per session: HeyGen's `streaming.create_token`
token is valid for exactly one streaming session. Such a token must never come from a cache,
must stay bound to the session it was minted for, and must be forgotten when the session ends.

    sessions = Sessions(source, base_url="https://api.heygen.com", hooks=HeyGenStreaming())
    with sessions.session() as s:            # or: async with sessions.session() as s:
        s.client.post("/v1/streaming.task", json={"session_id": s.id, "text": "hi"})
        browser_gets(s.token.access_token)

Every session mints its own token straight from the source (no manager, no store: nothing to
reuse), gets an httpx2 client bound to it, and runs the optional `SessionHooks` to start the
upstream session, keep it alive on a ticker, and stop it. A session that raises inside its block
is stopped on the way out; one that is abandoned (never closed, then garbage-collected or left
at interpreter exit) is stopped by a finalizer, within `stop_timeout`, so upstream sessions
(which count against a concurrency quota) never leak.

The hooks (`SessionHooks`, `SessionCalls`, `HeyGenStreaming`, `SessionState`) live in
`tokenward.session_hooks` and are re-exported here. The module is a little over ~500 lines:
sessions sync and async, their token auth, keep-alive ticker, stop and finalizer belong to one
session lifecycle, which splitting would only scatter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import httpx2

from . import events
from .driver import run, run_async
from .errors import SessionClosed, SessionExpired, StopFailed, TokenReused
from .flow import mint_flow
from .retry import RetryPolicy
from .rules import ExpiryRule
from .session_hooks import HeyGenStreaming, SessionCalls, SessionHooks, SessionState
from .sources.base import Source
from .token import Token
from .transport import DEFAULT_TIMEOUT, longest_request

__all__ = [
    "AsyncSession",
    "HeyGenStreaming",
    "Session",
    "SessionCalls",
    "SessionClosed",
    "SessionExpired",
    "SessionHooks",
    "SessionState",
    "Sessions",
    "StopFailed",
    "TokenReused",
    "amint",
    "mint",
]


class _SessionAuth(httpx2.Auth):
    """Sends the session's token; when the provider refuses it (the credential's expiry rule),
    sends the same call again with the API key if the provider accepts the key for it, else
    raises `SessionExpired`: a session that outlived its token never answers with silent
    401s. Shared by the library's sessions and the broker's session-bound proxy."""

    requires_request_body = True
    requires_response_body = True

    def __init__(self, state: SessionState, base_path: str) -> None:
        self._state = state
        self._base_path = base_path

    def auth_flow(self, request: httpx2.Request) -> Any:
        state = self._state
        call = request.url.path.removeprefix(self._base_path) or "/"
        with_key = call in state.api_key_calls and bool(state.api_key_headers)
        if not state.expired:
            request.headers["Authorization"] = state.token.authorization
            response = yield request
            rule = state.expiry_rule
            if not rule.matches(response.status_code, response.headers, response.content):
                return
            state.expired = True
            events.emit(
                "session.token_expired", state.key, fingerprint=state.token.fingerprint, call=call
            )
        if not with_key:
            events.emit(
                "session.expired", state.key, fingerprint=state.token.fingerprint, call=call
            )
            raise SessionExpired(state.key, call)
        request.headers.pop("Authorization", None)
        request.headers.update(state.api_key_headers)
        yield request


# -- keep-alive tickers -------------------------------------------------------------------------
class _Ticker:
    """Calls the keep-alive hook every `interval` seconds until stopped, in a daemon thread
    (sync sessions) or a task (async sessions). Failures are events, never exceptions: a missed
    keep-alive must not break the caller's work."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start_thread(self, hooks: SessionHooks, state: SessionState, interval: float) -> None:
        def tick() -> None:
            while not self._stop.wait(interval):
                _quietly(state.key, "keep_alive", lambda: hooks.keep_alive(state))

        threading.Thread(target=tick, name=f"tokenward-session-{state.key}", daemon=True).start()

    def start_task(self, hooks: SessionHooks, state: SessionState, interval: float) -> None:
        async def tick() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await hooks.akeep_alive(state)
                except Exception as exc:
                    _failed(state.key, "keep_alive", exc)

        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(tick())

    def stop(self) -> None:
        """Thread-safe: a finalizer may run on any thread, after the loop has closed."""
        self._stop.set()
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)


def _failed(key: str, what: str, exc: BaseException) -> None:
    # The exception type only: a provider's error text may quote a token.
    events.emit("session.hook_failed", key, hook=what, error=type(exc).__name__)


def _quietly(key: str, what: str, call: Callable[[], Any]) -> None:
    try:
        call()
    except Exception as exc:
        _failed(key, what, exc)


def _stop_within(hooks: SessionHooks, state: SessionState, timeout: float) -> StopFailed | None:
    """Run the sync stop hook in a helper thread, waiting at most `timeout` seconds (a
    finalizer must never hang the garbage collector or interpreter exit). Returns why the
    stop failed, if it did: a stop that did not happen is never reported as done."""
    failures: list[StopFailed] = []

    def work() -> None:
        try:
            hooks.stop(state)
        except StopFailed as exc:
            failures.append(exc)
        except Exception as exc:
            _failed(state.key, "stop", exc)
            failures.append(StopFailed(state.key, type(exc).__name__, pending=True))

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        events.emit("session.hook_failed", state.key, hook="stop", error="timeout")
        return StopFailed(state.key, f"no answer within {timeout:g} s", pending=True)
    return failures[0] if failures else None


def _stop_failed(state: SessionState, failure: StopFailed) -> None:
    events.emit(
        "session.stop_failed",
        state.key,
        fingerprint=state.token.fingerprint,
        pending=failure.pending,
        reason=failure.reason,
    )


def _finalize(
    hooks: SessionHooks, state: SessionState, ticker: _Ticker, timeout: float, abandoned: bool
) -> StopFailed | None:
    """End a session: stop the ticker and the upstream session, forget the token. Called by
    `Session.close()`, or by the garbage collector / at exit for an abandoned session.
    Returns the `StopFailed` of a stop that did not happen; a pending one keeps the session
    (token and client) for another attempt, unless it was abandoned."""
    ticker.stop()
    if abandoned:
        events.emit("session.abandoned", state.key, fingerprint=state.token.fingerprint)
    if isinstance(state.client, httpx2.Client) and not state.client.is_closed:
        failure = _stop_within(hooks, state, timeout)
        if failure is not None:
            _stop_failed(state, failure)
            if failure.pending and not abandoned:
                return failure
        state.client.close()
    else:  # an async session without a loop: stop through a temporary sync client
        stand_in = dataclasses.replace(state, client=None)
        base_path = httpx2.URL(state.base_url).path.rstrip("/")
        with _bound_client(httpx2.Client, state.base_url, timeout) as client:
            client.auth = _SessionAuth(stand_in, base_path)
            stand_in.client = client
            failure = _stop_within(hooks, stand_in, timeout)
        if failure is not None:
            _stop_failed(state, failure)
    _forget(state)
    return failure


def _forget(state: SessionState) -> None:
    if not state.closed:
        state.closed = True
        state.client = None
        events.emit("session.closed", state.key, fingerprint=state.token.fingerprint)


def _bound_client(kind: Any, base_url: str, timeout: Any, transport: Any = None) -> Any:
    return kind(base_url=base_url, timeout=timeout, transport=transport)


class _SharedTransport(httpx2.BaseTransport):
    """One connection pool for all sync sessions: creating a client with its own pool costs
    tens of milliseconds (TLS context), too much per session. Closing a session's client must
    not close the pool, so `close` is a no-op here (`Sessions.close()` closes the pool)."""

    def __init__(self) -> None:
        self.pool = httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self.pool.handle_request(request)

    def close(self) -> None:
        pass


class _SharedAsyncTransport(httpx2.AsyncBaseTransport):
    """`_SharedTransport` for async sessions: one pool per event loop."""

    def __init__(self) -> None:
        self.pool = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self.pool.handle_async_request(request)

    async def aclose(self) -> None:
        pass


# -- sessions -----------------------------------------------------------------------------------
class _BaseSession:
    """What sync and async sessions share. The finalizer is registered on the session object
    but holds only its state, hooks and ticker, so dropping the session triggers it."""

    def __init__(self, state: SessionState, hooks: SessionHooks, timeout: float) -> None:
        self._state = state
        self._hooks = hooks
        self._ticker = _Ticker()
        self._stop_timeout = timeout
        self._finalizer = weakref.finalize(
            self, _finalize, hooks, state, self._ticker, timeout, True
        )

    @property
    def token(self) -> Token:
        """This session's token (never handed to another session)."""
        if self._state.closed:
            raise SessionClosed(f"session of {self._state.key!r} is closed; its token is gone")
        return self._state.token

    @property
    def id(self) -> str | None:
        """The upstream session id, if the start hook set one."""
        return self._state.upstream_id

    @property
    def info(self) -> dict[str, Any]:
        return self._state.info

    @property
    def closed(self) -> bool:
        return self._state.closed

    def __repr__(self) -> str:
        state = self._state
        shown = "closed" if state.closed else state.token.fingerprint
        return f"{type(self).__name__}({state.key!r}, token={shown!r})"


class Session(_BaseSession):
    """A sync session: `token`, `client` (an `httpx2.Client` bound to the token), `id`."""

    @property
    def client(self) -> httpx2.Client:
        if self._state.closed:
            raise SessionClosed(f"session of {self._state.key!r} is closed")
        return self._state.client  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the keep-alive ticker and the upstream session; forget the token. Idempotent.

        Raises `StopFailed` when the upstream session could not be stopped; when `pending`,
        the session is kept and `close()` may be called again to retry."""
        self._finalizer.detach()
        if not self._state.closed:
            failure = _finalize(self._hooks, self._state, self._ticker, self._stop_timeout, False)
            if failure is not None:
                raise failure


class AsyncSession(_BaseSession):
    """An async session: `token`, `client` (an `httpx2.AsyncClient` bound to it), `id`."""

    @property
    def client(self) -> httpx2.AsyncClient:
        if self._state.closed:
            raise SessionClosed(f"session of {self._state.key!r} is closed")
        return self._state.client  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """`close()` for async sessions: the stop hook is awaited, within the stop timeout.
        Raises `StopFailed` as `close()` does (a pending one keeps the session for a retry)."""
        self._finalizer.detach()
        state = self._state
        if state.closed:
            return
        self._ticker.stop()
        failure: StopFailed | None = None
        try:
            await asyncio.wait_for(self._hooks.astop(state), self._stop_timeout)
        except StopFailed as exc:
            failure = exc
        except TimeoutError:
            reason = f"no answer within {self._stop_timeout:g} s"
            failure = StopFailed(state.key, reason, pending=True)
        except Exception as exc:
            _failed(state.key, "stop", exc)
            failure = StopFailed(state.key, type(exc).__name__, pending=True)
        if failure is not None:
            _stop_failed(state, failure)
            if failure.pending:
                raise failure
        await state.client.aclose()
        _forget(state)
        if failure is not None:
            raise failure


_S = TypeVar("_S", Session, AsyncSession)


def mint(
    source: Source,
    key: str = "session",
    *,
    retry: RetryPolicy | None = None,
    timeout: httpx2.Timeout | float = DEFAULT_TIMEOUT,
) -> Token:
    """A brand-new token straight from `source`: no manager, no cache, no store (a
    session-scoped token must serve one session; `tokenward token` on such a credential)."""
    with httpx2.Client(timeout=timeout) as client:
        return run(mint_flow(source, key, retry or RetryPolicy()), None, client)


async def amint(
    source: Source,
    key: str = "session",
    *,
    client: httpx2.AsyncClient,
    retry: RetryPolicy | None = None,
) -> Token:
    """`mint()` for asyncio code, through the caller's client."""
    return await run_async(mint_flow(source, key, retry or RetryPolicy()), None, client)


class Sessions:
    """Opens session-scoped credentials: a freshly minted token per session.

    `source` is how a token is minted (e.g. `ApiKeyExchange` for HeyGen); `base_url` is where
    the session's client points; `hooks` start, keep alive and stop the upstream session
    (`SessionCalls`: from a preset's `session_*` keys). A call the provider answers as
    expired raises `SessionExpired`, or goes again with the API key where the hooks say the
    provider accepts it (`SessionCalls.api_key_calls`).
    """

    def __init__(
        self,
        source: Source,
        *,
        key: str = "session",
        base_url: str = "",
        hooks: SessionHooks | None = None,
        retry: RetryPolicy | None = None,
        stop_timeout: float = 5.0,
        timeout: httpx2.Timeout | float = DEFAULT_TIMEOUT,
        remember: int = 100_000,
        expiry_rule: ExpiryRule | None = None,
    ) -> None:
        self.source = source
        self.key = key
        self.base_url = base_url
        self.hooks = hooks or SessionHooks()
        #: What an answer refusing the session's token looks like (default: any 401).
        self.expiry_rule = expiry_rule or ExpiryRule()
        self._retry = retry or RetryPolicy()
        self._stop_timeout = stop_timeout
        self._timeout = timeout
        self._remember = remember
        self._issued: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._transport = _SharedTransport()
        self._atransports: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, _SharedAsyncTransport
        ] = weakref.WeakKeyDictionary()
        #: Sessions being opened (token minted, start hook running); close() waits for them.
        self._opening = 0
        self._idle = threading.Condition()
        self._closed = False

    def session(self) -> _Scope:
        """`with sessions.session() as s:` or `async with sessions.session() as s:`."""
        return _Scope(self)

    def open(self) -> Session:
        """Mint a token and start a session; the caller must `close()` it (or a finalizer will
        stop it when it is garbage-collected)."""
        with self._open_one():
            client = _bound_client(httpx2.Client, self.base_url, self._timeout, self._transport)
            try:
                flow = mint_flow(self.source, self.key, self._retry)
                token = self._fresh(run(flow, None, client))
            except BaseException:
                client.close()
                raise
            session = self._new(Session, token, client)
            self._started(session, lambda state: self.hooks.start(state))
            return session

    async def aopen(self) -> AsyncSession:
        """`open()` for asyncio code."""
        with self._open_one():
            client = _bound_client(
                httpx2.AsyncClient, self.base_url, self._timeout, self._atransport()
            )
            try:
                token = await self.amint(client)
            except BaseException:
                await client.aclose()
                raise
            session = self._new(AsyncSession, token, client)
            try:
                await self.hooks.astart(session._state)
            except BaseException:
                with contextlib.suppress(StopFailed):  # the start failure says more
                    await session.aclose()  # a half-opened upstream session is stopped too
                raise
            self._tick(session, async_=True)
            return session

    async def amint(self, client: httpx2.AsyncClient) -> Token:
        """A brand-new token, through `client`, for a session its caller runs itself (the
        broker hands it to a client that talks to the provider directly): never cached or
        stored, and refused (`TokenReused`) when an earlier session or mint already had it."""
        flow = mint_flow(self.source, self.key, self._retry)
        return self._fresh(await run_async(flow, None, client))

    def close(self) -> None:
        """Refuse new sessions, wait for those being opened (their token is minted and their
        upstream session starting: dropping them half-way would leak an upstream session),
        then close the shared sync connection pool. Open sessions stay open until closed."""
        self._drain()
        self._transport.pool.close()

    async def aclose(self) -> None:
        """`close()` for asyncio code: waits without blocking the event loop, and also closes
        this loop's shared async pool."""
        await asyncio.to_thread(self._drain)
        self._transport.pool.close()
        transport = self._atransports.pop(asyncio.get_running_loop(), None)
        if transport is not None:
            await transport.pool.aclose()

    # -- internals ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _open_one(self) -> Iterator[None]:
        with self._idle:
            if self._closed:
                raise SessionClosed(
                    f"sessions of {self.key!r} are closed (Sessions.close() was called): no new "
                    "session is opened. Create a new Sessions object to open more."
                )
            self._opening += 1
        try:
            yield
        finally:
            with self._idle:
                self._opening -= 1
                self._idle.notify_all()

    def _drain(self) -> None:
        """Close to new sessions and wait (bounded) for the ones being opened."""
        bound = self._retry.deadline + self._stop_timeout + 2 * longest_request(self._timeout)
        with self._idle:
            self._closed = True
            if not self._idle.wait_for(lambda: self._opening == 0, timeout=bound):
                events.emit("sessions.close_timeout", self.key, opening=self._opening)

    def _atransport(self) -> _SharedAsyncTransport:
        loop = asyncio.get_running_loop()
        with self._lock:
            transport = self._atransports.get(loop)
            if transport is None:
                transport = self._atransports[loop] = _SharedAsyncTransport()
        return transport

    def _fresh(self, token: Token) -> Token:
        """Refuse a token an earlier session already had (a source bug or a replayed answer)."""
        with self._lock:
            if token.fingerprint in self._issued:
                events.emit("session.token_reused", self.key, fingerprint=token.fingerprint)
                raise TokenReused(f"{self.key!r}: the source returned a token already used")
            self._issued[token.fingerprint] = None
            while len(self._issued) > self._remember:
                self._issued.popitem(last=False)
        return token

    def _new(self, kind: type[_S], token: Token, client: Any) -> _S:
        calls: frozenset[str] = getattr(self.hooks, "api_key_calls", frozenset())
        key_headers = getattr(self.source, "key_headers", None)
        state = SessionState(
            self.key,
            token,
            client,
            self.base_url,
            api_key_headers=dict(key_headers()) if calls and key_headers else {},
            api_key_calls=frozenset(calls),
            expiry_rule=self.expiry_rule,
        )
        client.auth = _SessionAuth(state, httpx2.URL(self.base_url).path.rstrip("/"))
        session = kind(state, self.hooks, self._stop_timeout)
        events.emit("session.opened", self.key, fingerprint=token.fingerprint)
        return session

    def _started(self, session: Session, start: Callable[[SessionState], None]) -> None:
        try:
            start(session._state)
        except BaseException:
            with contextlib.suppress(StopFailed):  # the start failure says more
                session.close()  # a half-opened upstream session is stopped too
            raise
        self._tick(session, async_=False)

    def _tick(self, session: _BaseSession, *, async_: bool) -> None:
        interval = self.hooks.keep_alive_interval
        if interval is None or interval <= 0:
            return
        if async_:
            session._ticker.start_task(self.hooks, session._state, interval)
        else:
            session._ticker.start_thread(self.hooks, session._state, interval)

    def __repr__(self) -> str:
        return f"Sessions({self.key!r}, source={self.source.describe()})"


class _Scope:
    """The object `Sessions.session()` returns: a sync and an async context manager."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions
        self._sync: Session | None = None
        self._async: AsyncSession | None = None

    def __enter__(self) -> Session:
        self._sync = self._sessions.open()
        return self._sync

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if self._sync is not None:
            try:
                self._sync.close()
            except StopFailed:
                if exc is None:  # else the block's own exception says more (the event has it)
                    raise

    async def __aenter__(self) -> AsyncSession:
        self._async = await self._sessions.aopen()
        return self._async

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._async is not None:
            try:
                await self._async.aclose()
            except StopFailed:
                if exc is None:
                    raise
