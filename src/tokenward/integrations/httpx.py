"""`TokenAuth`: an `Auth` for `httpx2` clients, and for legacy `httpx` clients as well.

One object serves both packages: it subclasses `httpx2.Auth` and, when the `httpx` package is
installed, `httpx.Auth` too, so `credential.auth` plugs into whichever client a program uses.
The logic is one sans-I/O generator (`_flow`, shared with the other integrations in
`_replay.py`); `sync_auth_flow` and `async_auth_flow` only carry out its steps, with blocking
calls or awaits respectively.

On an answer the credential's `ExpiryRule` calls "expired", the request is replayed, body
included, with a token newer than the one that failed (how often: `_replay.replay_allowed`). A
streaming body cannot be sent twice: then the first answer is returned and a
`request.not_replayed` event says why.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx2

from ..manager import TokenManager
from ..rules import ExpiryRule
from ..token import Token
from ._replay import INVALIDATE, SEND, TOKEN, NotReplayable, Step, replay_flow

try:
    import httpx as _legacy
except ImportError:  # pragma: no cover - the legacy package is optional
    _legacy = None  # type: ignore[assignment]

__all__ = ["TokenAuth"]

_LEGACY_BASES: tuple[type, ...] = (_legacy.Auth,) if _legacy is not None else ()
_NOT_READ: tuple[type[Exception], ...] = (httpx2.RequestNotRead,) + (
    (_legacy.RequestNotRead,) if _legacy is not None else ()
)


def _replayable(request: Any) -> bool:
    """A request whose body is in memory (or empty) can be sent again; a stream cannot."""
    try:
        request.content  # noqa: B018 - raises when the body is an unread stream
    except _NOT_READ:
        return False
    return True


class _HttpxExchange:
    """How httpx2 / httpx requests and responses look to the shared replay flow."""

    def authorize(self, request: Any, token: Token) -> None:
        request.headers["Authorization"] = token.authorization

    def status(self, response: Any) -> int:
        return int(response.status_code)

    def headers(self, response: Any) -> Any:
        return response.headers

    def prepare_replay(self, request: Any) -> Any:
        if not _replayable(request):
            raise NotReplayable("the request body is a stream")
        return request


_EXCHANGE = _HttpxExchange()


class TokenAuth(httpx2.Auth, *_LEGACY_BASES):  # type: ignore[misc]
    """Bearer auth from a `TokenManager`, with a replay on an expired-token answer.

    >>> client = httpx2.Client(auth=TokenAuth(manager))
    """

    def __init__(self, manager: TokenManager, rule: ExpiryRule | None = None) -> None:
        self.manager = manager
        self.rule = rule or manager.expiry_rule

    def _flow(self, request: Any) -> Generator[Step, Any, Any]:
        return replay_flow(self.manager.key, self.rule, _EXCHANGE, request)

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        flow = self._flow(request)
        value: Any = None
        while True:
            try:
                step, arg = flow.send(value)
            except StopIteration:
                return
            if step == SEND:
                value = yield arg
            elif step == TOKEN:
                value = self.manager.token()
            elif step == INVALIDATE:
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
            if step == SEND:
                value = yield arg
            elif step == TOKEN:
                value = await self.manager.atoken()
            elif step == INVALIDATE:
                value = await self.manager.ainvalidate(arg)
            else:
                value = await arg.aread()

    def __repr__(self) -> str:
        return f"TokenAuth({self.manager.key!r})"
