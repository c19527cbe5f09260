"""The drivers of the refresh protocol: they carry out the operations `tokenward.flow` yields.

`run` does it with blocking calls (threads), `run_async` with awaits; neither decides anything.
Every operation maps to one store call, one HTTP request, one sleep, a clock read (`Now`) or one
event (`Notify`, through `tokenward.events.emit`); a failure is thrown back into the flow, which
decides. Beside them lives the lease keeper: while a token request is in flight, its lease is
renewed every third of its TTL (one scheduler thread per process with a small pool, replaced in
a forked child; a task under asyncio).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2

from . import events
from .flow import (
    Acquire,
    Begin,
    ClearInFlight,
    Finish,
    Flow,
    Holder,
    Http,
    Inspect,
    Invoke,
    Load,
    MarkInFlight,
    Notify,
    Now,
    Op,
    Release,
    Renew,
    Save,
    Sleep,
    TakeOver,
)
from .sources.function import FunctionSource, atimed, timed
from .stores.base import Store
from .token import Token
from .transport import send, send_async

__all__ = ["run", "run_async"]


def _call_async_function(source: FunctionSource, current: Token | None) -> Any:
    """Run an async token function from sync code (in a helper thread if a loop is running)."""

    async def call() -> Any:
        return await source.fn(current)  # type: ignore[misc]

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(call())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, call()).result()


def _need(store: Store | None) -> Store:
    if store is None:
        raise TypeError("this flow needs a store, and the driver was given none")
    return store


class _LeaseKeeper:
    """Renews the leases of HTTP requests in flight, every third of their TTL.

    One scheduler thread per process (started on first use) instead of a thread per request:
    most token requests finish long before their first renewal is due, and a refresher doing
    hundreds of refreshes a second would otherwise start as many threads. The renewals run on
    a small pool, so a store that hangs delays only its own leases' renewals.
    """

    def __init__(self) -> None:
        self._due: list[tuple[float, int, _Kept]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def keep(self, store: Store, lease: Renew) -> _Kept:
        kept = _Kept(store, lease)
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    4, thread_name_prefix="tokenward-lease"
                )
                self._thread = threading.Thread(
                    target=self._run, name="tokenward-lease-keeper", daemon=True
                )
                self._thread.start()
            self._schedule(kept)
            if self._due[0][2] is kept:  # due before anything else: the keeper must wake sooner
                self._wake.notify()
        return kept

    def _schedule(self, kept: _Kept) -> None:
        """File `kept`'s next renewal, a third of its TTL from now (caller holds `_wake`)."""
        heapq.heappush(self._due, (time.monotonic() + kept.lease.ttl / 3, next(self._seq), kept))

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, kept = heapq.heappop(self._due)
                if kept.done:
                    continue
                self._schedule(kept)
            try:
                assert self._pool is not None
                self._pool.submit(kept.renew)
            except RuntimeError:  # the interpreter is shutting down: no new pool work
                kept.renew()


@dataclass(slots=True)
class _Kept:
    store: Store
    lease: Renew
    done: bool = False

    def renew(self) -> None:
        # Best effort: if the lease is lost or the store fails, the commit's compare-and-set
        # still guards the record, and the request's own outcome is what counts.
        if self.done:
            return
        try:
            if not self.store.renew_lease(self.lease.key, self.lease.owner, self.lease.ttl):
                self.done = True
        except Exception:
            self.done = True


_KEEPER = _LeaseKeeper()


def _new_keeper_after_fork() -> None:
    """A forked child has no keeper thread (and maybe a lock a parent thread held)."""
    global _KEEPER
    _KEEPER = _LeaseKeeper()


os.register_at_fork(after_in_child=_new_keeper_after_fork)


@contextlib.contextmanager
def _renewing(store: Store, lease: Renew) -> Iterator[None]:
    """Keep `lease` renewed (every third of its TTL) while the body runs."""
    kept = _KEEPER.keep(store, lease)
    try:
        yield
    finally:
        kept.done = True


@contextlib.asynccontextmanager
async def _arenewing(store: Store, lease: Renew) -> AsyncIterator[None]:
    """`_renewing` for asyncio: while the body runs, renew the lease every third of its TTL.

    A timer, not a task per request: most token requests end long before their first renewal
    is due, and a refresher makes hundreds a second; a renewal task starts only if one is."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    async def beat() -> None:
        with contextlib.suppress(Exception):
            while await store.arenew_lease(lease.key, lease.owner, lease.ttl):
                await asyncio.sleep(lease.ttl / 3)

    timer = loop.call_later(lease.ttl / 3, lambda: tasks.append(loop.create_task(beat())))
    try:
        yield
    finally:
        timer.cancel()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _execute(op: Op, store: Store | None, client: httpx2.Client) -> Any:
    match op:
        case Now(wall):
            return time.time() if wall else time.monotonic()
        case Load(key):
            return _need(store).load(key)
        case Save(record, expected):
            return _need(store).compare_and_set(record, expected)
        case Acquire(key, owner, ttl):
            return _need(store).acquire_lease(key, owner, ttl)
        case Renew(key, owner, ttl):
            return _need(store).renew_lease(key, owner, ttl)
        case Release(key, owner):
            return _need(store).release_lease(key, owner)
        case Sleep(seconds):
            time.sleep(seconds)
            return None
        case Http(request, None):
            return send(client, request)
        case Http(request, Renew() as lease):
            with _renewing(_need(store), lease):
                return send(client, request)
        case Invoke(source, current):
            if source.is_async:
                return timed(lambda: _call_async_function(source, current))
            return timed(lambda: source.fn(current))
        case Inspect(key, in_flight):
            store = _need(store)
            claim = store.in_flight(key) if in_flight else store.lease_holder(key)
            return None if claim is None else Holder(claim, store.holder_alive(claim.holder))
        case TakeOver(key, dead_owner, owner, ttl):
            return _need(store).take_over_lease(key, dead_owner, owner, ttl)
        case MarkInFlight(key, owner, spent, ttl):
            return _need(store).mark_in_flight(key, owner, spent, ttl)
        case ClearInFlight(key, owner):
            return _need(store).clear_in_flight(key, owner)
        case Begin(key, owner, ttl, mark):
            return _need(store).begin_refresh(key, owner, ttl, mark)
        case Finish(record, expected, owner):
            return _need(store).finish_refresh(record, expected, owner)
        case Notify(event, key, fields):
            return events.emit(event, key, **fields)
    raise TypeError(f"unknown operation {op!r}")


async def _aexecute(op: Op, store: Store | None, client: httpx2.AsyncClient) -> Any:
    match op:
        case Now(wall):
            return time.time() if wall else time.monotonic()
        case Load(key):
            return await _need(store).aload(key)
        case Save(record, expected):
            return await _need(store).acompare_and_set(record, expected)
        case Acquire(key, owner, ttl):
            return await _need(store).aacquire_lease(key, owner, ttl)
        case Renew(key, owner, ttl):
            return await _need(store).arenew_lease(key, owner, ttl)
        case Release(key, owner):
            return await _need(store).arelease_lease(key, owner)
        case Sleep(seconds):
            await asyncio.sleep(seconds)
            return None
        case Http(request, None):
            return await send_async(client, request)
        case Http(request, Renew() as lease):
            async with _arenewing(_need(store), lease):
                return await send_async(client, request)
        case Invoke(source, current):
            if source.is_async:
                return await atimed(lambda: source.fn(current))  # type: ignore[arg-type,return-value]
            return await atimed(lambda: asyncio.to_thread(source.fn, current))
        case Inspect(key, in_flight):
            store = _need(store)
            claim = await (store.ain_flight(key) if in_flight else store.alease_holder(key))
            if claim is None:
                return None
            return Holder(claim, await store.aholder_alive(claim.holder))
        case TakeOver(key, dead_owner, owner, ttl):
            return await _need(store).atake_over_lease(key, dead_owner, owner, ttl)
        case MarkInFlight(key, owner, spent, ttl):
            return await _need(store).amark_in_flight(key, owner, spent, ttl)
        case ClearInFlight(key, owner):
            return await _need(store).aclear_in_flight(key, owner)
        case Begin(key, owner, ttl, mark):
            return await _need(store).abegin_refresh(key, owner, ttl, mark)
        case Finish(record, expected, owner):
            return await _need(store).afinish_refresh(record, expected, owner)
        case Notify(event, key, fields):
            return events.emit(event, key, **fields)
    raise TypeError(f"unknown operation {op!r}")


def run(flow: Flow, store: Store | None, client: httpx2.Client) -> Token:
    """Drive `flow` with blocking I/O. Failures of an operation are thrown into the flow (so
    its `finally` releases the lease) and surface from here if the flow does not handle them."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            value = _execute(op, store, client)
        except BaseException as exc:  # handed to the flow, which re-raises
            error = exc


async def run_async(flow: Flow, store: Store | None, client: httpx2.AsyncClient) -> Token:
    """Drive `flow` with asyncio; the same contract as `run`."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            value = await _aexecute(op, store, client)
        except BaseException as exc:  # handed to the flow, which re-raises
            error = exc
