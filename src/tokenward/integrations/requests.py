"""`TokenAuth` for `requests`: bearer auth with a replay on an expired-token answer.

It works like requests' own `HTTPDigestAuth`: `__call__` sets the Authorization header and
registers a response hook; when the credential's `ExpiryRule` calls the answer "expired", the
hook invalidates the token, copies the request with the newer token and sends it again
through the same connection adapter (so the same pool, proxies, TLS and timeout settings), and
returns the last answer with the earlier ones in `response.history` (how often a request is
replayed: `_replay.replay_allowed`).

The decision itself is the shared sans-I/O flow of `_replay.py`. Bodies: bytes and strings are
replayed as they are; a file-like body is rewound to where it started when it is seekable; a
generator or a non-seekable stream cannot be sent twice, so then the first answer is returned
and a `request.not_replayed` event says why.

Thread-safe: all per-request state lives in a closure bound to that request, so one
`requests.Session` can be shared by many threads; the manager's single-flight makes them all
wait on one refresh.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import requests
from requests.cookies import extract_cookies_to_jar

from ..manager import TokenManager
from ..rules import ExpiryRule
from ..token import Token
from ._replay import INVALIDATE, READ, SEND, TOKEN, NotReplayable, Step, replay_flow

__all__ = ["TokenAuth"]

_POSITION = "_tokenward_body_position"


class _RequestsExchange:
    """How `requests.PreparedRequest` and `requests.Response` look to the replay flow."""

    def authorize(self, request: requests.PreparedRequest, token: Token) -> None:
        request.headers["Authorization"] = token.authorization

    def status(self, response: requests.Response) -> int:
        return response.status_code

    def headers(self, response: requests.Response) -> Any:
        return response.headers

    def prepare_replay(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body: Any = request.body
        if body is not None and not isinstance(body, bytes | str):
            _rewind(body, getattr(request, _POSITION, None))
        return request.copy()


def _rewind(body: Any, position: int | None) -> None:
    """Seek a file-like body back to where the first send started, or refuse."""
    seekable = getattr(body, "seekable", None)
    if position is None or not callable(getattr(body, "seek", None)):
        raise NotReplayable("the request body is a stream that cannot be rewound")
    if callable(seekable) and not seekable():
        raise NotReplayable("the request body is a stream that cannot be rewound")
    try:
        body.seek(position)
    except OSError:
        raise NotReplayable("the request body could not be rewound") from None


def _start_position(body: Any) -> int | None:
    tell = getattr(body, "tell", None)
    if body is None or isinstance(body, bytes | str) or not callable(tell):
        return None
    try:
        return int(tell())
    except (OSError, ValueError):
        return None


_EXCHANGE = _RequestsExchange()


class TokenAuth(requests.auth.AuthBase):
    """Bearer auth from a `TokenManager` for `requests`, with a replay on expiry.

    >>> session = requests.Session()
    >>> session.auth = TokenAuth(manager)
    """

    def __init__(self, manager: TokenManager, rule: ExpiryRule | None = None) -> None:
        self.manager = manager
        self.rule = rule or manager.expiry_rule

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        flow = replay_flow(self.manager.key, self.rule, _EXCHANGE, request)
        step, _ = next(flow)
        assert step == TOKEN
        step, _ = flow.send(self.manager.token())  # sets the header, then asks to send
        assert step == SEND
        setattr(request, _POSITION, _start_position(request.body))
        request.register_hook("response", self._hook(flow))  # type: ignore[no-untyped-call]
        return request

    def _hook(self, flow: Generator[Step, Any, Any]) -> Any:
        """The response hook carrying on `flow` for this one request (a no-op afterwards, e.g.
        on a redirect that copied the hook along)."""

        pending = [flow]

        def on_response(response: requests.Response, **send_kwargs: Any) -> Any:
            if not pending:
                return None  # already driven: keep the answer as it is
            return self._drive(pending.pop(), response, send_kwargs)

        return on_response

    def _drive(
        self, flow: Generator[Step, Any, Any], response: requests.Response, kwargs: Any
    ) -> requests.Response:
        value: Any = response
        latest = response
        while True:
            try:
                step, arg = flow.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if step == READ:
                value = arg.content
            elif step == INVALIDATE:
                value = self.manager.invalidate(arg)
            else:
                value = latest = _send_again(latest, arg, kwargs)

    def __repr__(self) -> str:
        return f"TokenAuth({self.manager.key!r})"


def _send_again(
    first: requests.Response, request: requests.PreparedRequest, kwargs: Any
) -> requests.Response:
    """Send `request` through the adapter that served `first`, as `HTTPDigestAuth` does; the
    answer's `history` lists every earlier answer, oldest first."""
    first.content  # noqa: B018 - consume the body so the connection goes back to the pool
    first.close()
    cookies = getattr(request, "_cookies", None)
    if cookies is not None:
        extract_cookies_to_jar(cookies, first.request, first.raw)  # type: ignore[no-untyped-call]
        request.prepare_cookies(cookies)
    connection = first.connection
    second: requests.Response = connection.send(request, **kwargs)
    second.history.extend([*first.history, first])
    second.request = request
    return second
