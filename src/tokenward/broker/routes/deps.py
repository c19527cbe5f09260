"""What every router shares: the client the guard authenticated, the broker's state, and the
one way of registering a proxy route per method and of finding where a proxied call goes.

The client key was checked by the guard (`broker.guard`) before any body was read; the
`Client` dependency only takes the client from the scope, and declares the bearer scheme in the
OpenAPI document. The proxies skip dependencies altogether (the hot path: no dependency
resolution) and declare the same scheme through `openapi_extra`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, cast

import httpx2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..auth import BrokerError
from ..config import ClientEntry
from ..guard import client_of
from ..paths import UnsafePath, plain_query, upstream_path, upstream_url
from ..proxy import PROXY_METHODS, method_override
from ..runtime import BrokerCredential
from ..state import Broker

__all__ = ["Client", "State", "add_proxy_routes", "broker_of", "upstream_target"]

_bearer = HTTPBearer(auto_error=False, description="A broker client key: twk_...")


async def _client(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ClientEntry:
    """The client the guard authenticated (`broker.guard`: before any body was read); as a
    dependency, it declares the bearer scheme in the OpenAPI document."""
    return client_of(request.scope)


def broker_of(request: Request) -> Broker:
    """The broker state of the app serving `request` (`create_app` keeps it on `app.state`)."""
    return cast(Broker, request.app.state.broker)


async def _state(request: Request) -> Broker:
    return broker_of(request)


Client = Annotated[ClientEntry, Depends(_client)]
State = Annotated[Broker, Depends(_state)]


def add_proxy_routes(
    router: APIRouter,
    path: str,
    endpoint: Callable[..., Any],
    operation_prefix: str,
    responses: dict[int | str, dict[str, Any]],
) -> None:
    """Register `endpoint` on `path` once per proxied method, so that each method gets its own
    OpenAPI operation (`{operation_prefix}_{method}`); the answer is the endpoint's own
    `Response` (the upstream's, as it is)."""
    for method in PROXY_METHODS:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            operation_id=f"{operation_prefix}_{method.lower()}",
            response_class=Response,
            responses=responses,
            openapi_extra={"security": [{_bearer.scheme_name: []}]},
        )


def upstream_target(
    request: Request, cred: BrokerCredential, client: ClientEntry, prefix: str, plain: str
) -> tuple[httpx2.URL, str]:
    """Where a proxied call goes (base_url + the normalized path after `prefix` + the checked
    query) and the path the client's policies saw, for both proxies.

    The path is read as received, before percent-decoding, and must start with `prefix` as
    spelled (`plain` names what it holds: an encoded credential name or session id would let
    one path mean two things). Refused (400): an unsafe path or query, and a method-override
    parameter, which an upstream framework would read as the method the client's policy did
    not allow; then (403) a method or path the client's policy does not allow."""
    if not cred.base_url:
        raise BrokerError(400, "no_base_url", f"credential {cred.name!r} has no base_url")
    raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    raw_text = raw.decode("latin-1")
    if not raw_text.startswith(prefix):
        raise BrokerError(400, "bad_path", f"the {plain} must be plain (not encoded)")
    try:
        path = upstream_path(raw_text[len(prefix) :])
        query = plain_query(request.scope.get("query_string", b"").decode("latin-1"))
        if override := method_override(query):
            reason = f"the query parameter {override!r} would override the method upstream"
            raise BrokerError(400, "method_override", f"{reason}; send the method itself")
        url = upstream_url(cred.base_url, path, query, cred.origin)
    except UnsafePath as exc:
        raise BrokerError(400, "unsafe_path", str(exc)) from None
    if not client.policy.allows_method(request.method):
        raise BrokerError(403, "forbidden", f"client {client.name!r} may not {request.method}")
    if not client.policy.allows_path(path):
        raise BrokerError(403, "forbidden", f"client {client.name!r} may not proxy {path}")
    return url, path
