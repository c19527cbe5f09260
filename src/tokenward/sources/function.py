"""A source backed by user code: any sync or async callable that returns a token.

Useful for providers with exotic flows (signed JWT assertions, vendor SDK logins). The callable
receives the current grant (a `Grant`, which is a `Token` that also carries the stored refresh
token, or None) and returns a `Token` (a `Grant` to hand back a refresh token), a token string,
or a mapping shaped like an OAuth2 token response (`access_token`, `expires_in`,
`refresh_token`, ...).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import MalformedTokenResponse
from ..token import Grant, Token
from .base import Source, check_expires_in

__all__ = ["Called", "FunctionSource", "TokenFunction", "atimed", "timed"]

TokenFunction = Callable[[Token | None], Token | str | Mapping[str, Any] | Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Called:
    """What a token function returned, and when it was called: a token's `expires_in` counts
    from its issue, which is no earlier than the call (counting from the return would make the
    token seem to live longer than it does by the function's own run time)."""

    value: Any
    started_at: float


def timed(call: Callable[[], Any]) -> Called:
    """Run `call` and note when it started (for the drivers, which do the flow's I/O)."""
    started = time.time()
    return Called(call(), started)


async def atimed(call: Callable[[], Awaitable[Any]]) -> Called:
    """`timed` for a coroutine."""
    started = time.time()
    return Called(await call(), started)


class FunctionSource(Source):
    """Wraps `fn(current_token) -> Token | str | dict` (or an `async def` doing the same)."""

    def __init__(self, fn: TokenFunction, *, rotating: bool = False) -> None:
        self.fn = fn
        self.rotating = rotating
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - async callable objects too
        )

    def parse_result(self, value: Any, credential: str, received_at: float | None = None) -> Grant:
        """Normalize what the function returned into a `Grant`."""
        received = time.time() if received_at is None else received_at
        if isinstance(value, Token):
            return Grant.of(value)
        if isinstance(value, str) and value:
            return Grant.from_response(value, received_at=received)
        if isinstance(value, Mapping):
            access = value.get("access_token")
            if not isinstance(access, str) or not access:
                raise MalformedTokenResponse(credential, "access_token", "missing or empty")
            extra = {k: v for k, v in value.items() if k not in _FIELDS}
            return Grant.from_response(
                access,
                expires_in=check_expires_in(value.get("expires_in"), credential),
                received_at=received,
                token_type=str(value.get("token_type") or "Bearer"),
                refresh_token=value.get("refresh_token"),
                scope=value.get("scope"),
                extra=extra,
            )
        got = type(value).__name__
        raise MalformedTokenResponse(
            credential, "return value", f"expected a Token, str or mapping, got {got}"
        )

    def describe(self) -> str:
        return f"FunctionSource({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"

    def __repr__(self) -> str:
        return self.describe()


_FIELDS = {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
