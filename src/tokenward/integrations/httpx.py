"""`TokenAuth`: an `Auth` for `httpx2` clients, and for legacy `httpx` clients as well.

One object serves both packages: it subclasses `httpx2.Auth` and, when the `httpx` package is
installed, `httpx.Auth` too, so `credential.auth` plugs into whichever client a program uses.
The logic is one sans-I/O generator (`_flow`); `sync_auth_flow` and `async_auth_flow` only
carry out its steps, with blocking calls or awaits respectively.

On an answer the credential's `ExpiryRule` calls "expired", the request is replayed once, body
included, with a token newer than the one that failed (DESIGN.md invariant 3). A streaming body
cannot be sent twice: then the first answer is returned and a `request.not_replayed` event says
why.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx2

from .. import events
from ..manager import TokenManager
from ..rules import ExpiryRule
from ..token import Token

try:
    import httpx as _legacy
except ImportError:  # pragma: no cover - the legacy package is optional
    _legacy = None  # type: ignore[assignment]

__all__ = ["TokenAuth"]

_LEGACY_BASES: tuple[type, ...] = (_legacy.Auth,) if _legacy is not None else ()
_NOT_READ: tuple[type[Exception], ...] = (httpx2.RequestNotRead,) + (
    (_legacy.RequestNotRead,) if _legacy is not None else ()
)

# The steps the flow asks its driver to carry out.
_TOKEN, _SEND, _READ, _INVALIDATE = "token", "send", "read", "invalidate"
Step = tuple[str, Any]


def _replayable(request: Any) -> bool:
    """A request whose body is in memory (or empty) can be sent again; a stream cannot."""
    try:
        request.content  # noqa: B018 - raises when the body is an unread stream
    except _NOT_READ:
        return False
    return True


class TokenAuth(httpx2.Auth, *_LEGACY_BASES):  # type: ignore[misc]
    """Bearer auth from a `TokenManager`, with one replay on an expired-token answer.

    >>> client = httpx2.Client(auth=TokenAuth(manager))
    """

    def __init__(self, manager: TokenManager, rule: ExpiryRule | None = None) -> None:
        self.manager = manager
        self.rule = rule or manager.expiry_rule

    def _flow(self, request: Any) -> Generator[Step, Any, None]:
        token: Token = yield _TOKEN, None
        request.headers["Authorization"] = token.authorization
        response = yield _SEND, request
        status = response.status_code
        rule = self.rule
        if status not in rule.statuses and "www-authenticate" not in response.headers:
            return  # the hot path: nothing to inspect
        body = None
        if rule.needs_body(status):
            yield _READ, response
            body = response.content
        if not rule.matches(status, response.headers, body):
            return
        key = self.manager.key
        events.emit(
            "token.expired_answer",
            key,
            fingerprint=token.fingerprint,
            version=token.version,
            status=status,
        )
        if not _replayable(request):
            events.emit("request.not_replayed", key, reason="the request body is a stream")
            return
        fresh: Token = yield _INVALIDATE, token
        request.headers["Authorization"] = fresh.authorization
        events.emit("request.replayed", key, fingerprint=fresh.fingerprint, version=fresh.version)
        yield _SEND, request

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        flow = self._flow(request)
        value: Any = None
        while True:
            try:
                step, arg = flow.send(value)
            except StopIteration:
                return
            if step == _SEND:
                value = yield arg
            elif step == _TOKEN:
                value = self.manager.token()
            elif step == _INVALIDATE:
                value = self.manager.invalidate(arg)
            else:
                value = arg.read()

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        flow = self._flow(request)
        value: Any = None
        while True:
            try:
                step, arg = flow.send(value)
            except StopIteration:
                return
            if step == _SEND:
                value = yield arg
            elif step == _TOKEN:
                value = await self.manager.atoken()
            elif step == _INVALIDATE:
                value = await self.manager.ainvalidate(arg)
            else:
                value = await arg.aread()

    def __repr__(self) -> str:
        return f"TokenAuth({self.manager.key!r})"
