"""The replay decision, shared by every HTTP integration (httpx, requests, aiohttp).

`replay_flow` is a sans-I/O generator: it decides when to ask for a token, when to read a body,
whether an answer means "expired" (the credential's `ExpiryRule`), whether the request can be
sent again, and when to invalidate. It yields steps (`TOKEN`, `SEND`, `READ`, `INVALIDATE`) that
a client-specific driver carries out with blocking calls or awaits. Each client only describes
its request and response objects through an `Exchange`; no integration carries its own refresh
or replay logic (DESIGN.md invariant 3: replay at most once, with a newer token).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol

from .. import events
from ..rules import ExpiryRule
from ..token import Token

__all__ = ["INVALIDATE", "READ", "SEND", "TOKEN", "Exchange", "NotReplayable", "replay_flow"]

# The steps the flow asks its driver to carry out. The driver answers:
#   TOKEN -> a Token (manager.token / atoken)         SEND(request) -> the response
#   READ(response) -> the body as bytes               INVALIDATE(token) -> a newer Token
TOKEN, SEND, READ, INVALIDATE = "token", "send", "read", "invalidate"
Step = tuple[str, Any]


class NotReplayable(Exception):
    """Raised by `Exchange.prepare_replay` when a request cannot be sent twice; the message
    (never a secret) becomes the `reason` of the `request.not_replayed` event."""


class Exchange(Protocol):
    """How one HTTP client exposes its request and response objects to `replay_flow`."""

    def authorize(self, request: Any, token: Token) -> None:
        """Put `token` into the request's Authorization header."""

    def status(self, response: Any) -> int:
        """The response's status code."""

    def headers(self, response: Any) -> Any:
        """The response's headers (anything with a case-insensitive `get`)."""

    def prepare_replay(self, request: Any) -> Any:
        """The request to send again (the same object, or a copy with its body rewound), or
        raise `NotReplayable`."""


def replay_flow(
    key: str, rule: ExpiryRule, exchange: Exchange, request: Any
) -> Generator[Step, Any, Any]:
    """Send `request` with the current token; replay it once with a newer token when the answer
    means "expired". Returns the response the caller should see."""
    token: Token = yield TOKEN, None
    exchange.authorize(request, token)
    response = yield SEND, request
    status, headers = exchange.status(response), exchange.headers(response)
    if not rule.may_match(status, headers):
        return response  # the hot path: nothing to inspect
    body = (yield READ, response) if rule.needs_body(status) else None
    if not rule.matches(status, headers, body):
        return response
    events.emit(
        "token.expired_answer",
        key,
        fingerprint=token.fingerprint,
        version=token.version,
        status=status,
    )
    try:
        replay = exchange.prepare_replay(request)
    except NotReplayable as exc:
        events.emit("request.not_replayed", key, reason=str(exc))
        # Still retire the rejected token, so that the caller's next request gets a newer one.
        yield INVALIDATE, token
        return response
    fresh: Token = yield INVALIDATE, token
    exchange.authorize(replay, fresh)
    events.emit("request.replayed", key, fingerprint=fresh.fingerprint, version=fresh.version)
    return (yield SEND, replay)
