"""What every router shares: the client the guard authenticated, the broker's state, and the
one way of registering a proxy route per method.

The client key was checked by the guard (`broker.guard`) before any body was read; the
`Client` dependency only takes the client from the scope, and declares the bearer scheme in the
OpenAPI document. The proxies skip dependencies altogether (the hot path: no dependency
resolution) and declare the same scheme through `openapi_extra`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..config import ClientEntry
from ..guard import client_of
from ..proxy import PROXY_METHODS
from ..state import Broker

__all__ = ["Client", "State", "add_proxy_routes", "broker_of"]

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
