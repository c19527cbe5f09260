"""`ANY /v1/proxy/{credential}/{path}`: forward a request upstream with a fresh token.

The replay decision is `integrations._replay.replay_flow`, the same generator the httpx,
requests and aiohttp integrations drive: this module only describes httpx2 requests to it
(`_ProxyExchange`) and carries its steps out with awaits (`send_with_replay`). A body up to
`Limits.replay_buffer_bytes` is buffered, so the request can be replayed after an
expired-token answer; a larger one is streamed through, and then (as in the integrations) the
rejected token is retired but the request is not replayed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote_plus

import httpx2

from ..integrations._replay import INVALIDATE, READ, SEND, TOKEN, NotReplayable, replay_flow
from ..manager import TokenManager
from ..rules import ExpiryRule
from ..token import Token

__all__ = [
    "PROXY_METHODS",
    "BodyTooLarge",
    "ProxyResult",
    "method_override",
    "request_headers",
    "response_headers",
    "send_with_replay",
]

#: The methods the proxies relay (the credential proxy and the session-bound one; CORS
#: preflights allow the same).
PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: RFC 9110 section 7.6.1 hop-by-hop headers, plus what the broker must never pass on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Request headers that belong to the client's relation with the broker, not the upstream's:
#: its credentials and cookies, Host, its framing (httpx2 frames what it sends), what it claims
#: about addresses on the way (a client could pose as the upstream's trusted proxy), and
#: method or URL overrides some frameworks honour (they would bypass the client's policy).
_CLIENT_ONLY = frozenset(
    {"authorization", "cookie", "host", "origin", "referer", "content-length"}
    | {"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
    | {"x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server", "x-real-ip"}
    | {"x-client-ip", "true-client-ip", "cf-connecting-ip", "x-cluster-client-ip"}
    | {"x-http-method-override", "x-method-override", "x-http-method"}
    | {"x-original-url", "x-rewrite-url", "x-original-method"}
)
#: Query parameters that some frameworks read as the request's method.
_METHOD_PARAMS = frozenset({"_method", "x-http-method-override", "_httpmethod"})
#: Response headers the broker sets itself (Date, Server, CORS) or must not pass on to a
#: client (the upstream's cookies belong to the broker's relation with the upstream).
_UPSTREAM_ONLY = frozenset({"set-cookie", "set-cookie2", "date", "server"}) | {
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
}


#: The fixed parts of what `request_headers` and `response_headers` drop (built once).
_DROP_REQUEST = HOP_BY_HOP | _CLIENT_ONLY
_DROP_RESPONSE = HOP_BY_HOP | _UPSTREAM_ONLY
_DROP_DECODED = _DROP_RESPONSE | {"content-encoding", "content-length"}


class BodyTooLarge(Exception):
    """The request body exceeded `Limits.max_body_bytes` while it was being streamed."""


def _connection_named(headers: Iterable[tuple[str, str]]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(part.strip().lower() for part in value.split(","))
    return named


def request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers minus its own credentials, cookies, Host and hop-by-hop ones."""
    items = list(headers)
    named = _connection_named(items)
    drop = _DROP_REQUEST | named if named else _DROP_REQUEST
    return [(k, v) for k, v in items if k.lower() not in drop]


def response_headers(headers: Iterable[tuple[str, str]], *, decoded: bool) -> list[tuple[str, str]]:
    """The upstream's headers minus hop-by-hop ones, cookies and CORS (the broker's own).
    `decoded`: the body is sent decoded, so its encoding and length headers no longer hold."""
    items = list(headers)
    named = _connection_named(items)
    drop = _DROP_DECODED if decoded else _DROP_RESPONSE
    if named:
        drop = drop | named
    return [(k, v) for k, v in items if k.lower() not in drop]


def method_override(query: str) -> str | None:
    """The name of a method-override parameter in `query` (raw, percent-encoded), if any."""
    for part in query.split("&"):
        name = unquote_plus(part.partition("=")[0]).strip().lower()
        if name in _METHOD_PARAMS:
            return name
    return None


async def limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass `stream` on, raising `BodyTooLarge` once more than `limit` bytes went through."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge
        yield chunk


async def read_limited(stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, or `BodyTooLarge`."""
    return b"".join([chunk async for chunk in limited(stream, limit)])


class _ProxyExchange:
    """How an httpx2 request looks to `replay_flow`. A request whose body is buffered bytes
    can be sent again; a streamed one cannot."""

    def __init__(self, streamed: bool) -> None:
        self.streamed = streamed

    def authorize(self, request: httpx2.Request, token: Token) -> None:
        request.headers["Authorization"] = token.authorization

    def status(self, response: httpx2.Response) -> int:
        return response.status_code

    def headers(self, response: httpx2.Response) -> Any:
        return response.headers

    def prepare_replay(self, request: httpx2.Request) -> httpx2.Request:
        if self.streamed:
            raise NotReplayable("the request body is streamed (larger than the replay buffer)")
        return request


class ProxyResult:
    """The upstream answer to hand back, the token that got it, and whether its body was
    already read (and decoded) by the expiry check."""

    def __init__(self, response: httpx2.Response, token: Token | None, read: bool) -> None:
        self.response = response
        self.token = token
        self.read = read


async def send_with_replay(
    client: httpx2.AsyncClient,
    manager: TokenManager,
    rule: ExpiryRule,
    request: httpx2.Request,
    *,
    streamed: bool,
) -> ProxyResult:
    """Drive `replay_flow`: the answer's headers are in, its body is still streaming (unless
    the expiry check read it). Responses superseded by a replay are closed here."""
    flow = replay_flow(manager.key, rule, _ProxyExchange(streamed), request)
    opened: list[httpx2.Response] = []
    read: set[int] = set()
    token: Token | None = None
    value: Any = None
    try:
        while True:
            try:
                step, arg = flow.send(value)
            except StopIteration as stop:
                response: httpx2.Response = stop.value
                break
            if step == SEND:
                for earlier in opened:
                    await earlier.aclose()
                value = await client.send(arg, stream=True)
                opened.append(value)
            elif step == TOKEN:
                value = token = await manager.atoken()
            elif step == INVALIDATE:
                value = token = await manager.ainvalidate(arg)
            elif step == READ:
                value = await arg.aread()
                read.add(id(arg))
            else:  # pragma: no cover - replay_flow yields only the four steps
                raise RuntimeError(f"unknown replay step {step!r}")
    except BaseException:
        for earlier in opened:
            await earlier.aclose()
        raise
    return ProxyResult(response, token, id(response) in read)
