"""Replay for vendor SDK calls: the SDK does its own HTTP and raises its own exception on a
401, so there is no response to inspect, only an exception to recognise.

    guard = ExpiryGuard(manager, on=VendorAuthError, param="access_token")

    @guard                                   # sync or async functions alike
    def list_items(access_token: str) -> list[Item]:
        return Vendor(access_token).items()

    guard.call(fn, *args)  /  await guard.acall(afn, *args)

    for attempt in guard.attempts():         # a block rather than a function
        with attempt:
            Vendor(attempt.token.access_token).items()

The call runs with the current token (as the keyword argument `param`, and always through
`current_token()`); if it raises one of the named exceptions (or one `when` accepts), the token
is invalidated through the manager (its single-flight and invalidate-by-version, so many
failing threads cause one refresh) and the call runs again with the newer token. It runs a
further time only under the shared rule of `_replay.replay_allowed` (a token strictly newer than
the one the replay failed with, at most `MAX_REPLAYS` replays); otherwise the failure
propagates as it is.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from .. import events
from ..manager import TokenManager
from ..token import Token
from ._replay import MAX_REPLAYS, replay_allowed

__all__ = ["Attempt", "ExpiryGuard", "current_token"]

P = ParamSpec("P")
R = TypeVar("R")

_CURRENT: contextvars.ContextVar[Token] = contextvars.ContextVar("tokenward_sdk_token")


def current_token() -> Token:
    """The token of the guarded call running in this context (raises `LookupError` outside)."""
    return _CURRENT.get()


class ExpiryGuard:
    """Runs SDK calls with the current token and replays them on an expiry exception."""

    def __init__(
        self,
        manager: TokenManager,
        *,
        on: type[BaseException] | tuple[type[BaseException], ...] = (),
        when: Callable[[BaseException], bool] | None = None,
        param: str | None = None,
    ) -> None:
        if not on and when is None:
            raise ValueError("name the SDK's expiry exception type(s) with on=, or give when=")
        self.manager = manager
        self._types = on if isinstance(on, tuple) else (on,)
        self._when = when
        self.param = param

    def is_expiry(self, exc: BaseException) -> bool:
        """Whether `exc` means "the token was rejected" (type match and predicate, if given)."""
        if not isinstance(exc, self._types or Exception):
            return False  # with only a predicate, KeyboardInterrupt & co. are never expiry
        return self._when is None or self._when(exc)

    # -- functions ------------------------------------------------------------------------------
    def __call__(self, fn: Callable[P, R]) -> Callable[..., R]:
        """Decorate a sync or async function.

        The wrapper is typed `Callable[..., R]`, not `Callable[P, R]`: with `param=` the guard
        supplies that argument, so callers leave out a parameter the function requires."""
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(afn, *args, **kwargs)

            return cast(Callable[..., R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            return self.call(fn, *args, **kwargs)

        return wrapper

    def call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """`fn(*args, **kwargs)` with the current token; again after an expiry exception."""
        token = self.manager.token()
        replays = 0
        while True:
            try:
                return self._run(fn, token, args, kwargs)
            except Exception as exc:
                if not self.is_expiry(exc) or replays >= MAX_REPLAYS:
                    raise
                self._expired(token, exc)
                fresh = self.manager.invalidate(token)
                if not replay_allowed(replays, token, fresh):
                    raise
            replays += 1
            token = fresh
            self._replayed(fresh, replays)

    async def acall(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """`call()` for coroutine functions; never blocks the event loop."""
        token = await self.manager.atoken()
        replays = 0
        while True:
            try:
                return await self._arun(fn, token, args, kwargs)
            except Exception as exc:
                if not self.is_expiry(exc) or replays >= MAX_REPLAYS:
                    raise
                self._expired(token, exc)
                fresh = await self.manager.ainvalidate(token)
                if not replay_allowed(replays, token, fresh):
                    raise
            replays += 1
            token = fresh
            self._replayed(fresh, replays)

    # -- blocks ---------------------------------------------------------------------------------
    def attempts(self) -> Iterator[Attempt]:
        """Attempts at a `with attempt:` block: one, and more only after an expiry exception
        (as many as `call()` makes). An attempt that may not be repeated re-raises it."""
        attempt = Attempt(self, self.manager.token(), last=False)
        yield attempt
        replays = 0
        while (failed := attempt.failed) is not None:
            fresh = self.manager.invalidate(attempt.token)
            if not replay_allowed(replays, attempt.token, fresh):
                raise failed
            replays += 1
            self._replayed(fresh, replays)
            attempt = Attempt(self, fresh, last=replays == MAX_REPLAYS)
            yield attempt

    async def aattempts(self) -> AsyncIterator[Attempt]:
        """`attempts()` for `async for`: tokens come from `atoken()` / `ainvalidate()`."""
        attempt = Attempt(self, await self.manager.atoken(), last=False)
        yield attempt
        replays = 0
        while (failed := attempt.failed) is not None:
            fresh = await self.manager.ainvalidate(attempt.token)
            if not replay_allowed(replays, attempt.token, fresh):
                raise failed
            replays += 1
            self._replayed(fresh, replays)
            attempt = Attempt(self, fresh, last=replays == MAX_REPLAYS)
            yield attempt

    # -- internals ------------------------------------------------------------------------------
    def _bind(self, token: Token, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, self.param: token.access_token} if self.param else kwargs

    def _run(self, fn: Callable[..., R], token: Token, args: Any, kwargs: Any) -> R:
        reset = _CURRENT.set(token)
        try:
            return fn(*args, **self._bind(token, kwargs))
        finally:
            _CURRENT.reset(reset)

    async def _arun(
        self, fn: Callable[..., Awaitable[R]], token: Token, args: Any, kwargs: Any
    ) -> R:
        reset = _CURRENT.set(token)
        try:
            return await fn(*args, **self._bind(token, kwargs))
        finally:
            _CURRENT.reset(reset)

    def _expired(self, token: Token, exc: BaseException) -> None:
        events.emit(
            "token.expired_answer",
            self.manager.key,
            fingerprint=token.fingerprint,
            version=token.version,
            error=type(exc).__name__,  # the type only: an SDK message may quote the token
        )

    def _replayed(self, fresh: Token, replay: int) -> None:
        events.emit(
            "request.replayed",
            self.manager.key,
            fingerprint=fresh.fingerprint,
            version=fresh.version,
            replay=replay,
        )

    def __repr__(self) -> str:
        return f"ExpiryGuard({self.manager.key!r})"


class Attempt:
    """One run of a guarded block: `with attempt:` swallows an expiry exception (so the loop
    runs the block again with a newer token, or re-raises it when the replay rule says no) and
    lets anything else, or any exception on the last attempt, propagate."""

    def __init__(self, guard: ExpiryGuard, token: Token, *, last: bool) -> None:
        self.guard = guard
        self.token = token
        self.last = last
        self.failed: BaseException | None = None
        self._reset: contextvars.Token[Token] | None = None

    def __enter__(self) -> Attempt:
        self._reset = _CURRENT.set(self.token)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._reset is not None:
            _CURRENT.reset(self._reset)
        if exc is None or self.last or not self.guard.is_expiry(exc):
            return False
        self.failed = exc
        self.guard._expired(self.token, exc)
        return True
