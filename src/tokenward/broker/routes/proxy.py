"""`ANY /v1/proxy/{credential}/{path}`: the credential proxy's route.

A request is forwarded to the credential's `base_url` with a fresh token injected here, and
replayed once after an expired-token answer (`broker.proxy.send_with_replay`). A
session-scoped credential is refused (each of its tokens serves one session: the
session-bound proxy, `routes.session_proxy`). The upstream's answer goes back as it is,
streamed when it was not read already.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ...errors import TokenwardError
from ..auth import BrokerError
from ..errors import credential_error
from ..guard import PROXY_PREFIX, client_of
from ..models import PROXIED
from ..proxy import (
    BodyTooLarge,
    ProxyResult,
    limited,
    read_limited,
    request_headers,
    response_headers,
    send_with_replay,
)
from ..runtime import BrokerCredential
from ..state import Broker, audit_logger
from .deps import add_proxy_routes, broker_of, upstream_target

__all__ = ["PROXY_ROUTE", "router"]

PROXY_ROUTE = PROXY_PREFIX + "{credential}/{path:path}"

router = APIRouter(tags=["proxy"])


async def proxy(credential: str, path: str, request: Request) -> Response:
    """Forward to the credential's base URL with a fresh token; one replay on expiry."""
    # The guard checked the client key; no `Client` dependency here (the hot path: no
    # dependency resolution); `add_proxy_routes` declares the same bearer scheme.
    client = client_of(request.scope)
    state = broker_of(request)
    started = time.monotonic()
    try:
        cred = state.credential(client, credential)
        if cred.config.session_scoped:
            raise BrokerError(
                400,
                "session_required",
                f"credential {credential!r} is session-scoped: each token serves one "
                "session. Open one with POST /v1/sessions, then send its calls to "
                "/v1/sessions/{session_id}/proxy/{path}",
            )
        prefix = f"{PROXY_PREFIX}{cred.name}/"
        target, shown = upstream_target(request, cred, client, prefix, "credential name")
        response = await _forward(state, cred, request, target, client.name, shown)
    except BrokerError as exc:
        state.audit(
            client.name,
            credential,
            "proxy",
            exc.status,
            method=request.method,
            error=exc.error,
        )
        raise
    state.metrics.proxy_histogram(credential, response.status_code).observe(
        time.monotonic() - started
    )
    return response


# One route per method, so that each gets its own OpenAPI operation id.
add_proxy_routes(router, PROXY_ROUTE, proxy, "proxy", PROXIED)


async def _forward(
    state: Broker,
    cred: BrokerCredential,
    request: Request,
    url: httpx2.URL,
    client: str,
    path: str,
) -> Response:
    """Send the request upstream (one replay on expiry), audit it, relay the answer."""
    assert state.http is not None
    # The guard checked the framing (one valid Content-Length, or chunked, never both) and
    # refused a Content-Length above max_body_bytes.
    length_header = request.headers.get("content-length")
    length = int(length_header) if length_header is not None else None
    try:
        result = await _send(state, cred, request, url, length)
    except BodyTooLarge:
        raise _too_large(state) from None
    except httpx2.TimeoutException:
        timeout = state.limits.upstream_timeout
        raise BrokerError(
            504,
            "upstream_timeout",
            f"{cred.name}: the upstream did not answer within {timeout:g} s",
        ) from None
    except httpx2.HTTPError as exc:
        if isinstance(exc.__context__, BodyTooLarge):
            raise _too_large(state) from None
        raise BrokerError(
            502, "upstream_unreachable", f"{cred.name}: upstream error ({type(exc).__name__})"
        ) from None
    except TokenwardError as exc:
        raise credential_error(cred.name, exc, api_key=cred.api_key) from None
    except Exception as exc:  # anything else: a clean 502 naming it, never a 500 traceback
        audit_logger.warning("proxy %s: %s upstream", cred.name, type(exc).__name__)
        raise BrokerError(
            502,
            "upstream_failed",
            f"{cred.name}: the upstream request failed ({type(exc).__name__})",
        ) from None
    answer = result.response
    state.audit(
        client,
        cred.name,
        "proxy",
        answer.status_code,
        result.token,
        method=request.method,
        path=path,
    )
    return await _relayed(result)


async def _send(
    state: Broker, cred: BrokerCredential, request: Request, url: httpx2.URL, length: int | None
) -> ProxyResult:
    """The request upstream, its body buffered (replayable) or streamed (too large for the
    replay buffer, or of unknown length)."""
    limits = state.limits
    assert state.http is not None
    has_body = length is not None or "transfer-encoding" in request.headers
    streamed = has_body and (length is None or length > limits.replay_buffer_bytes)
    content: Any
    if not has_body:
        content = None
    elif streamed:
        content = limited(request.stream(), limits.max_body_bytes)
    else:
        content = await read_limited(request.stream(), limits.max_body_bytes)
    # A plain Request, not `client.build_request`: no default headers of the broker's
    # (Accept-Encoding, User-Agent, cookies), so an encoded body streamed back raw is one
    # the client asked for, and no cookie jar links one client's calls to another's.
    # The client's framing headers are never forwarded: httpx2 frames what it sends
    # (Content-Length of buffered bytes, chunked for a stream of unknown length).
    headers = request_headers(request.headers.items())
    if streamed and length is not None:
        headers.append(("Content-Length", str(length)))
    upstream = httpx2.Request(
        request.method,
        url,
        headers=headers,
        content=content,
        extensions={"timeout": dict(state.upstream_timeout)},
    )
    return await send_with_replay(
        state.http, cred.manager, cred.manager.expiry_rule, upstream, streamed=streamed
    )


def _too_large(state: Broker) -> BrokerError:
    limit = state.limits.max_body_bytes
    return BrokerError(413, "body_too_large", f"the body exceeds {limit} bytes")


async def _relayed(result: ProxyResult) -> Response:
    """The upstream's answer for the client: as read, or streamed as it arrives."""
    answer = result.response
    if result.read or answer.is_stream_consumed:  # read by the expiry check (or a transport)
        await answer.aclose()
        out = Response(answer.content, answer.status_code)
        out.raw_headers.extend(_raw(response_headers(answer.headers.multi_items(), decoded=True)))
        return out
    streaming = StreamingResponse(_relay(answer), answer.status_code)
    streaming.raw_headers = _raw(response_headers(answer.headers.multi_items(), decoded=False))
    return streaming


async def _relay(answer: httpx2.Response) -> AsyncIterator[bytes]:
    """The upstream body as it arrives (still encoded); the upstream connection is released
    however the relay ends (done, client gone, error)."""
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    finally:
        await answer.aclose()


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
