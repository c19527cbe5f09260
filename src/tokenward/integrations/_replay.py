"""The replay decision, shared by every HTTP integration (httpx, requests, aiohttp).

`replay_flow` is a sans-I/O generator: it decides when to ask for a token, when to read a body,
whether an answer means "expired" (the credential's `ExpiryRule`), whether the request can be
sent again, and when to invalidate. It yields steps (`TOKEN`, `SEND`, `READ`, `INVALIDATE`) that
a client-specific driver carries out with blocking calls or awaits. Each client only describes
its request and response objects through an `Exchange`; no integration carries its own refresh
or replay logic. `replay_allowed` is the rule itself, shared with the SDK guard (`sdk.py`).

The rule (invariant 3 in docs/architecture.md): a request that meets an expired-token
answer is replayed with the token `invalidate()` returns (a newer one another caller already
has, else one refresh shared by every caller that saw the same token rejected). If the replay
is rejected too, the request is replayed again only when the token `invalidate()` then returns
is strictly newer than the one the replay failed with (a higher version and a different
value), and at most `MAX_REPLAYS` times in all. That serves a provider that revoked every
access token (an administrator, a password change) just after a natural refresh, whose fresh
token therefore fails too, while an API that rejects every token costs a bounded number of
refreshes per request, never a loop.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Final, Protocol

from .. import events
from ..rules import ExpiryRule
from ..token import Token

__all__ = [
    "INVALIDATE",
    "MAX_REPLAYS",
    "READ",
    "SEND",
    "TOKEN",
    "Exchange",
    "NotReplayable",
    "replay_allowed",
    "replay_flow",
]

#: How many times one request is sent again after expired-token answers (see the rule above).
MAX_REPLAYS: Final = 2

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


def replay_allowed(replays: int, failed: Token, fresh: Token) -> bool:
    """Whether a request whose answer said `failed` expired is sent again with `fresh` (what
    `invalidate(failed)` returned), after `replays` replays so far. The first replay always
    is; a further one only with a token strictly newer than `failed`, up to `MAX_REPLAYS`."""
    if replays == 0:
        return True
    return (
        replays < MAX_REPLAYS
        and fresh.version > failed.version
        and fresh.access_token != failed.access_token
    )


def _expired(
    key: str, rule: ExpiryRule, exchange: Exchange, response: Any, token: Token
) -> Generator[Step, Any, bool]:
    """Whether `response` (to a request sent with `token`) means "expired"; reads the body
    only when the rule needs it for this status."""
    status, headers = exchange.status(response), exchange.headers(response)
    if not rule.may_match(status, headers):
        return False  # the hot path: nothing to inspect
    body = (yield READ, response) if rule.needs_body(status) else None
    if not rule.matches(status, headers, body):
        return False
    events.emit(
        "token.expired_answer",
        key,
        fingerprint=token.fingerprint,
        version=token.version,
        status=status,
    )
    return True


def replay_flow(
    key: str, rule: ExpiryRule, exchange: Exchange, request: Any
) -> Generator[Step, Any, Any]:
    """Send `request` with the current token; replay it with a newer token when the answer
    means "expired" (`replay_allowed` decides how often). Returns the response the caller
    should see."""
    token: Token = yield TOKEN, None
    exchange.authorize(request, token)
    response = yield SEND, request
    replays = 0
    while (yield from _expired(key, rule, exchange, response, token)):
        if replays >= MAX_REPLAYS:
            events.emit("request.not_replayed", key, reason=f"replayed {replays} times already")
            return response
        try:
            replay = exchange.prepare_replay(request)
        except NotReplayable as exc:
            events.emit("request.not_replayed", key, reason=str(exc))
            # Still retire the rejected token, so that the caller's next request gets a newer one.
            yield INVALIDATE, token
            return response
        fresh: Token = yield INVALIDATE, token
        if not replay_allowed(replays, token, fresh):
            events.emit(
                "request.not_replayed",
                key,
                reason="no token newer than the one the replay was rejected with",
            )
            return response
        replays += 1
        token, request = fresh, replay
        exchange.authorize(request, token)
        events.emit(
            "request.replayed",
            key,
            fingerprint=token.fingerprint,
            version=token.version,
            replay=replays,
        )
        response = yield SEND, request
    return response
