"""`TokenMiddleware`: aiohttp client middleware (aiohttp >= 3.12) with bearer auth and a replay
on an expired-token answer.

    async with aiohttp.ClientSession(middlewares=(TokenMiddleware(manager),)) as session:
        ...

The decision is the shared sans-I/O flow of `_replay.py`; this module only carries its steps out
with awaits (`manager.atoken()` / `ainvalidate()`), so the event loop is never blocked, and all
tasks share the manager's single-flight refresh. The replay goes through the same handler
chain and connector. aiohttp itself knows which bodies can be sent twice (bytes, strings, forms,
seekable files are reusable; an async generator is consumed): a consumed body is not replayed,
the first answer is returned and a `request.not_replayed` event says why.
"""

from __future__ import annotations

from typing import Any

from aiohttp import ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientHandlerType

from ..manager import TokenManager
from ..rules import ExpiryRule
from ..token import Token
from ._replay import INVALIDATE, READ, SEND, TOKEN, NotReplayable, replay_flow

__all__ = ["TokenMiddleware"]


class _AiohttpExchange:
    """How `aiohttp.ClientRequest` and `ClientResponse` look to the replay flow."""

    def authorize(self, request: ClientRequest, token: Token) -> None:
        request.headers["Authorization"] = token.authorization

    def status(self, response: ClientResponse) -> int:
        return response.status

    def headers(self, response: ClientResponse) -> Any:
        return response.headers

    def prepare_replay(self, request: ClientRequest) -> ClientRequest:
        if getattr(request.body, "consumed", False):
            raise NotReplayable("the request body is a stream that was consumed")
        return request


_EXCHANGE = _AiohttpExchange()


class TokenMiddleware:
    """Client middleware: `ClientSession(middlewares=(TokenMiddleware(manager),))`."""

    def __init__(self, manager: TokenManager, rule: ExpiryRule | None = None) -> None:
        self.manager = manager
        self.rule = rule or manager.expiry_rule

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        flow = replay_flow(self.manager.key, self.rule, _EXCHANGE, request)
        value: Any = None
        sent: ClientResponse | None = None
        while True:
            try:
                step, arg = flow.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if step == TOKEN:
                value = await self.manager.atoken()
            elif step == READ:
                value = await arg.read()
            elif step == INVALIDATE:
                value = await self.manager.ainvalidate(arg)
            else:
                assert step == SEND
                if sent is not None:
                    sent.release()  # the first answer's connection goes back to the pool
                value = sent = await handler(arg)

    def __repr__(self) -> str:
        return f"TokenMiddleware({self.manager.key!r})"
