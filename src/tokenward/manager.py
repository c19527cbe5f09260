"""`TokenManager`: hands out a valid token for one credential, refreshing it exactly once per
expiry however many threads, event loops and processes ask.

- Hot path: a token fresh beyond its refresh window is returned with no lock and no I/O.
- In the refresh window the still-valid token keeps being served while one background refresh
  runs; only a caller holding no usable token waits.
- Single-flight: in a process, one leader runs the refresh flow and everybody else waits on the
  leader's `concurrent.futures.Future`, which threads (`.result()`) and any event loop
  (`asyncio.wrap_future`) can both wait on. Across processes, the store lease does the same.
- `invalidate(token)` compares versions: a rejection of an old token adopts the current one.
- `close()` waits for a refresh in flight before it releases the HTTP client: the provider may
  already have rotated the refresh token, and only that request's answer carries the new one.

The protocol itself lives in `tokenward.flow` (its drivers in `tokenward.driver`); this module
only decides when to run it.

The module is longer than most (about 600 lines): the manager is the library's main object,
with a sync and an async twin of each public call around one shared decision each; the
refresh protocol itself lives in `flow.py` and its drivers in `driver.py`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx2

from . import events
from .driver import run, run_async
from .errors import ManagerClosed, SessionScoped
from .flow import FlowContext, refresh_flow
from .retry import RetryPolicy
from .rules import ExpiryRule
from .sources.authorization import OAuthClient
from .sources.base import Source
from .stored_grant import revoke_stored, seed_stored
from .stores.base import Record, Store
from .token import Token
from .transport import DEFAULT_TIMEOUT, longest_request

__all__ = ["RefreshPolicy", "TokenManager"]


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When a token is refreshed, scaled to its lifetime.

    The refresh window is `window_fraction` of the lifetime, at most `max_window` seconds: a
    6-hour token is refreshed 5 minutes before expiry, a 15-minute token 45 seconds before, a
    2-second token 0.1 seconds before. A token is no longer handed out once less than
    `leeway_fraction` of its lifetime (at most `max_leeway` seconds) is left.
    """

    window_fraction: float = 0.05
    max_window: float = 300.0
    leeway_fraction: float = 0.01
    max_leeway: float = 1.0
    #: Pause before a background refresh is tried again after a failure.
    failure_pause: float = 1.0

    def refresh_at(self, token: Token) -> float:
        """Wall-clock time from which a refresh is due (infinity when the expiry is unknown)."""
        if token.expires_at is None:
            return float("inf")
        lifetime = max(token.expires_at - token.obtained_at, 0.0)
        return token.expires_at - min(lifetime * self.window_fraction, self.max_window)

    def usable_until(self, token: Token) -> float:
        """Wall-clock time after which the token is too close to expiry to hand out."""
        if token.expires_at is None:
            return float("inf")
        lifetime = max(token.expires_at - token.obtained_at, 0.0)
        return token.expires_at - min(lifetime * self.leeway_fraction, self.max_leeway)


@dataclass(frozen=True, slots=True)
class _Hot:
    token: Token
    refresh_at: float
    usable_until: float


def _owner_prefix() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


class TokenManager:
    """Keeps one credential's token valid. Thread-safe and usable from any event loop.

    >>> manager = TokenManager("ml", RefreshTokenGrant(token_url, client_id, secret), store)
    >>> manager.token()            # or: await manager.atoken()
    """

    def __init__(
        self,
        key: str,
        source: Source,
        store: Store | None = None,
        *,
        policy: RefreshPolicy | None = None,
        retry: RetryPolicy | None = None,
        expiry_rule: ExpiryRule | None = None,
        lease_ttl: float = 30.0,
        lease_wait: float = 60.0,
        timeout: httpx2.Timeout | float = DEFAULT_TIMEOUT,
        http_client: httpx2.Client | None = None,
        session_scoped: bool = False,
    ) -> None:
        """`http_client`: a client to send token requests with (shared by many managers, e.g.
        one per credential in `tokenward.refresher`); it stays the caller's to close.
        `session_scoped`: the source mints one-session tokens (HeyGen): this manager then
        refuses to fetch, cache or store any (`SessionScoped`); use `tokenward.sessions`."""
        if store is None:
            from .stores.default import default_store

            store = default_store()
        self.key = key
        self.source = source
        self.store = store
        self.policy = policy or RefreshPolicy()
        self.expiry_rule = expiry_rule or ExpiryRule()
        self._retry = retry or RetryPolicy()
        self._lease_ttl = lease_ttl
        self._lease_wait = lease_wait
        self._timeout = timeout
        self._owner_prefix = _owner_prefix()
        self._hot: _Hot | None = None
        self._lock = threading.Lock()
        self._flight: concurrent.futures.Future[Token] | None = None
        #: The loop whose task leads the flight (non-rotating async refreshes), else None.
        self._flight_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._released = False
        self._background_pending = False
        self._retry_not_before = 0.0
        self._client: httpx2.Client | None = http_client
        self._own_client = http_client is None
        self._ssl_context: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: threading.Thread | None = None
        self._refresher_task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self.session_scoped = session_scoped

    # -- public API -----------------------------------------------------------------------------
    def token(self) -> Token:
        """A valid token, refreshing first only when the current one is unusable."""
        hot = self._hot
        if hot is not None and time.time() < hot.refresh_at:
            return hot.token
        if (served := self._serve_while_refreshing(hot)) is not None:
            return served
        return self._refresh(hot.token if hot else None, force=False)

    async def atoken(self) -> Token:
        """`token()` for asyncio code: never blocks the event loop."""
        hot = self._hot
        if hot is not None and time.time() < hot.refresh_at:
            return hot.token
        if (served := self._serve_while_refreshing(hot)) is not None:
            return served
        return await self._arefresh(hot.token if hot else None, force=False)

    def invalidate(self, token: Token) -> Token:
        """The provider rejected `token`: return a newer one (invariant 4: refresh only if no
        newer token exists already; a rejection of an old token just adopts the current one)."""
        return self._newer_than(token) or self._refresh(token, force=True)

    async def ainvalidate(self, token: Token) -> Token:
        """`invalidate()` for asyncio code."""
        return self._newer_than(token) or await self._arefresh(token, force=True)

    def refresh(self) -> Token:
        """Refresh now, whatever the current token's expiry (still one refresh per flight)."""
        current = self._hot.token if self._hot else self._current_stored()
        return self._refresh(current, force=True)

    async def arefresh(self) -> Token:
        """`refresh()` for asyncio code."""
        current = self._hot.token if self._hot else await self._acurrent_stored()
        return await self._arefresh(current, force=True)

    def seed(
        self,
        *,
        refresh_token: str | None = None,
        access_token: str | None = None,
        expires_in: float | None = None,
        token_type: str = "Bearer",
        scope: str | None = None,
    ) -> Record:
        """Store a fresh grant obtained elsewhere (a login, an imported `.env`) and clear any
        `needs_reauth` state. The next `token()` uses it."""
        if self.session_scoped:
            raise SessionScoped(self.key)
        new = seed_stored(
            self.store,
            self.key,
            refresh_token=refresh_token,
            access_token=access_token,
            expires_in=expires_in,
            token_type=token_type,
            scope=scope,
        )
        self._hot = None
        return new

    def revoke(self, client: OAuthClient | None = None, *, via: str = "") -> Record | None:
        """Revoke the stored grant at the provider with `client` (its `revocation_url`, RFC
        7009; None: only forget the tokens here) and store the record without tokens, state
        `needs_reauth`; the next `token()` raises `ReauthorizationRequired` until a new login.
        A refresh that lands meanwhile has its new tokens revoked too, by compare-and-set
        (`tokenward.stored_grant`). Returns the stored record, or None when nothing was stored."""
        flight = self._flight
        if flight is not None and not self._led_on_this_loop():
            # A refresh in flight here lands first, so the hot token is not set after this.
            concurrent.futures.wait([flight], timeout=self._drain_bound())
        client_http = self._sync_client() if client is not None else None
        record = revoke_stored(self.store, self.key, client, http_client=client_http, via=via)
        self._hot = None
        return record

    async def arevoke(self, client: OAuthClient | None = None, *, via: str = "") -> Record | None:
        """`revoke()` for asyncio code (the same steps, on a worker thread)."""
        return await asyncio.to_thread(self.revoke, client, via=via)

    def status(self) -> dict[str, Any]:
        """A secret-free summary: state, expiry, refresh count, last error."""
        rec = self.store.load(self.key)
        summary = rec.describe() if rec else {"key": self.key, "state": "empty", "version": 0}
        summary["source"] = self.source.describe()
        return summary

    # -- background refresher -------------------------------------------------------------------
    def start(self) -> None:
        """Refresh in a daemon thread ahead of the refresh window, so requests never wait."""
        self._check_open()
        if self._refresher is None or not self._refresher.is_alive():
            self._stop.clear()
            self._refresher = threading.Thread(
                target=self._refresher_loop, name=f"tokenward-{self.key}", daemon=True
            )
            self._refresher.start()

    async def astart(self) -> None:
        """Refresh in an asyncio task on the running loop (the async twin of `start()`)."""
        self._check_open()
        if self._refresher_task is None or self._refresher_task.done():
            self._stop.clear()
            self._refresher_task = asyncio.get_running_loop().create_task(self._arefresher_loop())

    def stop(self) -> None:
        """Stop the background refresher (thread or task)."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
            self._refresher = None
        if self._refresher_task is not None:
            self._refresher_task.cancel()
            self._refresher_task = None

    def close(self) -> None:
        """Stop the refresher, wait for a refresh in flight, then release the HTTP client (the
        store is the caller's: close it after this returns).

        A refresh in flight may already have rotated the refresh token at the provider; only
        its answer carries the new one, so it is allowed to land in the store first (for at
        most as long as the refresh itself may take: `_drain_bound`). Afterwards no refresh is
        started: one that would be needed raises `ManagerClosed`, while a token still fresh is
        still served. From a coroutine, prefer `await aclose()`, which does not block the loop.
        """
        flight = self._shut()
        self.stop()
        if flight is not None and not self._led_on_this_loop():
            self._drained(concurrent.futures.wait([flight], timeout=self._drain_bound())[0])
        self._release_client()

    async def aclose(self) -> None:
        """`close()` for asyncio code: awaits the refresh in flight without blocking the loop."""
        flight = self._shut()
        self._stop.set()
        if self._refresher_task is not None:
            self._refresher_task.cancel()
            self._refresher_task = None
        if flight is not None:
            done, _ = await asyncio.wait([asyncio.wrap_future(flight)], timeout=self._drain_bound())
            self._drained(done)
        if self._refresher is not None:
            await asyncio.to_thread(self.stop)
        self._release_client()

    def __enter__(self) -> TokenManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> TokenManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once `close()` / `aclose()` has begun: no new refresh starts."""
        return self._closed

    def __repr__(self) -> str:
        hot = self._hot
        current = hot.token.fingerprint if hot else "-"
        return f"TokenManager({self.key!r}, token={current!r}, store={self.store!r})"

    # -- internals ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.session_scoped:
            raise SessionScoped(self.key)
        if self._closed:
            raise ManagerClosed(self.key)

    def _shut(self) -> concurrent.futures.Future[Token] | None:
        """Refuse new refreshes from now on; the refresh in flight, if any, to wait for."""
        with self._lock:
            self._closed = True
            return self._flight

    def _led_on_this_loop(self) -> bool:
        """The flight is led by a task of the loop running in this thread: blocking on it would
        deadlock. Such a flight uses its own HTTP client, so closing ours cannot harm it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self._flight_loop is running

    def _drain_bound(self) -> float:
        """How long closing waits for a refresh in flight: as long as that refresh may take (its
        wait for another process's lease, its retry deadline, one more request), so only a
        refresh that is stuck beyond its own limits is abandoned."""
        request = longest_request(self._timeout)
        return self._lease_wait + self._retry.deadline + 2 * request

    def _drained(self, done: set[Any]) -> None:
        if not done:
            events.emit("manager.close_timeout", self.key, waited=round(self._drain_bound(), 1))

    def _release_client(self) -> None:
        self._released = True
        if self._client is not None and self._own_client:
            self._client.close()
        if self._own_client:
            self._client = None

    @property
    def _owner(self) -> str:
        # The pid is read each time so that a forked child never shares its parent's leases.
        return f"{self._owner_prefix}:{os.getpid()}"

    def _context(self) -> FlowContext:
        policy = self.policy
        return FlowContext(
            key=self.key,
            source=self.source,
            store=self.store,
            owner=self._owner,
            fresh=lambda token: time.time() < policy.refresh_at(token),
            retry=self._retry,
            lease_ttl=self._lease_ttl,
            lease_wait=self._lease_wait,
            request_deadline=self._request_deadline(),
        )

    def _request_deadline(self) -> float:
        """How long a token request of ours can take (its client's timeouts, all phases), plus
        a second of slack: how long its in-flight record keeps other processes from
        presenting the same refresh token."""
        client = self._client
        timeout = client.timeout if client is not None and not self._own_client else self._timeout
        return longest_request(timeout) + 1.0

    def _current_stored(self) -> Token | None:
        rec = self.store.load(self.key)
        return rec.token() if rec else None

    async def _acurrent_stored(self) -> Token | None:
        rec = await self.store.aload(self.key)
        return rec.token() if rec else None

    def _newer_than(self, token: Token) -> Token | None:
        hot = self._hot
        if (
            hot is not None
            and hot.token.version > token.version
            and hot.token.access_token != token.access_token
            and time.time() < hot.usable_until
        ):
            events.emit(
                "token.adopted",
                self.key,
                fingerprint=hot.token.fingerprint,
                version=hot.token.version,
            )
            return hot.token
        return None

    def _serve_while_refreshing(self, hot: _Hot | None) -> Token | None:
        """In the refresh window: start one background refresh and keep serving `hot`."""
        if hot is None or time.time() >= hot.usable_until:
            return None
        if self._flight is None and not self._closed and time.time() >= self._retry_not_before:
            with self._lock:
                start = not self._background_pending
                self._background_pending = True
            if start:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    # Not a daemon: a program that exits while this refresh is in flight waits
                    # for it, instead of dying after the provider rotated the refresh token and
                    # before the new one was stored (which would need a new login).
                    threading.Thread(
                        target=self._background_refresh, args=(hot.token,), daemon=False
                    ).start()
                else:
                    self._spawn(loop, self._abackground_refresh(hot.token))
        return hot.token

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    def _background_refresh(self, seen: Token) -> None:
        try:
            self._refresh(seen, force=False)
        except Exception:  # already reported as an event; callers still hold a valid token
            self._retry_not_before = time.time() + self.policy.failure_pause
        finally:
            self._background_pending = False

    async def _abackground_refresh(self, seen: Token) -> None:
        try:
            await self._arefresh(seen, force=False)
        except Exception:  # already reported as an event; callers still hold a valid token
            self._retry_not_before = time.time() + self.policy.failure_pause
        finally:
            self._background_pending = False

    def _join(self) -> tuple[concurrent.futures.Future[Token], bool]:
        """The refresh in flight (as a follower), or a new one that the caller must lead."""
        with self._lock:
            if self._flight is not None:
                return self._flight, False
            if self._closed:
                raise ManagerClosed(self.key)
            flight: concurrent.futures.Future[Token] = concurrent.futures.Future()
            flight.set_running_or_notify_cancel()  # a waiter's cancellation cannot cancel it
            self._flight = flight
            return flight, True

    def _land(
        self,
        flight: concurrent.futures.Future[Token],
        token: Token | None,
        error: BaseException | None,
    ) -> None:
        """Publish the leader's outcome: the new token first, then wake the followers."""
        with self._lock:
            if token is not None:
                self._hot = _Hot(
                    token, self.policy.refresh_at(token), self.policy.usable_until(token)
                )
            self._flight = None
            self._flight_loop = None
        if error is not None:
            flight.set_exception(error)
        else:
            assert token is not None
            flight.set_result(token)

    def _accepts(self, token: Token, seen: Token | None, force: bool) -> bool:
        """A joined flight's result answers our request unless we needed something newer than
        `seen`. The result of a flight we led always does: the source was asked on our behalf,
        and a provider may well hand out the same access token again."""
        return not force or seen is None or token.access_token != seen.access_token

    def _ssl(self) -> ssl.SSLContext:
        """One TLS context for every client: building one costs ~50 ms of CPU (the CA bundle)."""
        if self._ssl_context is None:
            self._ssl_context = httpx2.create_ssl_context()
        return self._ssl_context

    def _sync_client(self) -> httpx2.Client:
        if self._client is None:
            if self._released:
                # Only a refresh abandoned by close() (past its own limits) gets here.
                raise ManagerClosed(self.key)
            self._client = httpx2.Client(timeout=self._timeout, verify=self._ssl())
        return self._client

    def _refresh(self, seen: Token | None, force: bool) -> Token:
        if self.session_scoped:  # never fetched, cached or stored here (one token, one session)
            raise SessionScoped(self.key)
        for _ in range(3):
            flight, leader = self._join()
            if leader:
                self._lead(flight, seen, force)
            token = flight.result()
            if leader or self._accepts(token, seen, force):
                return token
        return token

    def _lead(
        self, flight: concurrent.futures.Future[Token], seen: Token | None, force: bool
    ) -> None:
        try:
            token = run(refresh_flow(self._context(), seen, force), self.store, self._sync_client())
        except BaseException as exc:
            self._land(flight, None, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._land(flight, token, None)

    async def _arefresh(self, seen: Token | None, force: bool) -> Token:
        if self.session_scoped:
            raise SessionScoped(self.key)
        for _ in range(3):
            flight, leader = self._join()
            if leader:
                loop = asyncio.get_running_loop()
                if not self.source.rotating:
                    self._flight_loop = loop  # see _led_on_this_loop
                self._spawn(loop, self._alead(flight, seen, force))
            token = await asyncio.shield(asyncio.wrap_future(flight))
            if leader or self._accepts(token, seen, force):
                return token
        return token

    async def _alead(
        self, flight: concurrent.futures.Future[Token], seen: Token | None, force: bool
    ) -> None:
        if self.source.rotating:
            # A rotated refresh token must be stored even if this event loop shuts down mid-
            # refresh (asyncio.run cancels every task, which would drop the provider's answer):
            # lead on a worker thread, which runs to completion and which asyncio.run joins.
            await asyncio.to_thread(self._lead, flight, seen, force)
            return
        try:
            async with httpx2.AsyncClient(timeout=self._timeout, verify=self._ssl()) as client:
                flow = refresh_flow(self._context(), seen, force)
                token = await run_async(flow, self.store, client)
        except BaseException as exc:
            self._land(flight, None, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._land(flight, token, None)

    def _next_wake(self) -> float:
        """Seconds until the background refresher should look again."""
        now = time.time()
        pause = max(self._retry_not_before - now, 0.0)
        hot = self._hot
        return pause if hot is None else max(hot.refresh_at - now, pause)

    def _refresher_loop(self) -> None:
        while not self._stop.wait(min(self._next_wake(), 60.0)):
            if self._next_wake() > 0:
                continue
            # The loop is a daemon thread (it never ends by itself); each refresh runs in a
            # non-daemon thread so that interpreter exit waits for one in flight (see
            # `_serve_while_refreshing`).
            worker = threading.Thread(
                target=self._refresh_or_pause,
                args=(self._hot.token if self._hot else None,),
                name=f"tokenward-{self.key}-refresh",
                daemon=False,  # explicit: a thread started by a daemon thread inherits it
            )
            try:
                worker.start()
            except RuntimeError:  # the interpreter is shutting down
                return
            worker.join()

    def _refresh_or_pause(self, seen: Token | None) -> None:
        try:
            self._refresh(seen, force=False)
        except Exception:  # reported as an event; try again after a pause
            self._retry_not_before = time.time() + self.policy.failure_pause

    async def _arefresher_loop(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(min(self._next_wake(), 60.0))
            if self._next_wake() > 0:
                continue
            try:
                await self._arefresh(self._hot.token if self._hot else None, force=False)
            except Exception:  # reported as an event; try again after a pause
                self._retry_not_before = time.time() + self.policy.failure_pause
