"""Plain request/response values for the token endpoints, and the two drivers that send them.

Sources build an `HttpRequest` and parse an `HttpResponse` without doing I/O; only this module
talks to the network (through httpx2), once for sync callers and once for async callers. Network
failures become `TransientError`, marked `sent=True` when the provider may have processed the
request (the answer was lost on the way back).

Each answer carries the moment its request was sent (`sent_at`): a provider counts a token's
`expires_in` from when it issued the token, which is after the send, so expiry computed from
the send is never later than the provider's (computed from receipt, it would be late by the
token request's own latency, and proactive refresh with it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx2

from .errors import TransientError

__all__ = [
    "DEFAULT_TIMEOUT",
    "HttpRequest",
    "HttpResponse",
    "longest_request",
    "send",
    "send_async",
]

DEFAULT_TIMEOUT = httpx2.Timeout(10.0, connect=5.0)


def longest_request(timeout: httpx2.Timeout | float) -> float:
    """The longest one request can take under `timeout` (all of its phases together)."""
    if isinstance(timeout, httpx2.Timeout):
        parts = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        return sum(part for part in parts if part is not None)
    return float(timeout)


# The request never left this machine: retrying cannot double-spend a refresh token.
_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.WriteError)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    body: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str] = field(repr=False)  # lower-cased names
    body: bytes = field(repr=False)
    received_at: float
    #: Wall-clock time the request was sent (None: unknown, e.g. an answer built by hand).
    sent_at: float | None = None
    #: The request this answers (its secrets are scrubbed from the provider's error text).
    request: HttpRequest | None = field(default=None, repr=False, compare=False)

    @property
    def lifetime_start(self) -> float:
        """The earliest moment the answer's token can have been issued: `expires_in` counts
        from here. The send time when known (receipt would add the request's latency to the
        token's life), else the receipt time."""
        return self.received_at if self.sent_at is None else self.sent_at

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def _to_response(response: httpx2.Response, sent_at: float, request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        body=response.content,
        received_at=time.time(),
        sent_at=sent_at,
        request=request,
    )


def _transient(exc: httpx2.HTTPError, request: HttpRequest) -> TransientError:
    sent = not isinstance(exc, _NOT_SENT)
    what = type(exc).__name__
    where = httpx2.URL(request.url).copy_with(query=None)
    return TransientError(f"{what} talking to {where}", sent=sent)


def send(client: httpx2.Client, request: HttpRequest) -> HttpResponse:
    """Send with a sync client; network failures become `TransientError`."""
    sent_at = time.time()
    try:
        response = client.request(
            request.method, request.url, headers=request.headers, content=request.body
        )
    except httpx2.TransportError as exc:
        raise _transient(exc, request) from None
    return _to_response(response, sent_at, request)


async def send_async(client: httpx2.AsyncClient, request: HttpRequest) -> HttpResponse:
    """Send with an async client; network failures become `TransientError`."""
    sent_at = time.time()
    try:
        response = await client.request(
            request.method, request.url, headers=request.headers, content=request.body
        )
    except httpx2.TransportError as exc:
        raise _transient(exc, request) from None
    return _to_response(response, sent_at, request)
