"""The broker's ASGI app (FastAPI): proxy, token vending, sessions, admin, health, metrics.

    app = create_app(load_config())          # or create_app("tokenward.toml")
    uvicorn.run(app, host="127.0.0.1", port=8421)

Every route but `/healthz`, `/readyz`, `/metrics` and the OpenAPI document needs a client key
(`Authorization: Bearer twk_...`) and stays within the client's policy. Errors are JSON
`{"error": code, "reason": text}`; no answer, header or log line carries a secret other than
a vended token in the body of the vending and session answers. Each action writes one line on
the `tokenward.audit` logger (client, credential, action, status, token fingerprint).

This module only assembles the parts: the shared state (`broker.state`), the routers by
resource (`broker.routes`), the error shape (`broker.errors`), the exact OpenAPI document
(`broker.openapi`), the guard (`broker.guard`) and CORS (`broker.cors`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI

from ..config import Config
from . import errors
from .config import BrokerConfig, load_broker
from .cors import Cors
from .guard import Guard, is_public
from .openapi import exact_openapi
from .proxy import PROXY_METHODS
from .routes import credentials, examples, ops, proxy, session_proxy, sessions, tokens
from .state import Broker

__all__ = ["PROXY_METHODS", "create_app"]


def create_app(
    config: Config | str | os.PathLike[str] | None = None, broker: BrokerConfig | None = None
) -> FastAPI:
    """The broker app. `config`: a loaded `Config` (then `broker` gives the `[broker]`
    settings, default: no clients), or a configuration file path (or None: found as usual),
    whose `[broker]` table is read."""
    if not isinstance(config, Config):
        config, broker = load_broker(config)
    state = Broker(config, broker or BrokerConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="tokenward broker",
        version="1",
        summary="Proxy, token vending and session tokens for API credentials kept alive.",
        lifespan=lifespan,
    )
    app.state.broker = state
    errors.install(app)
    _add_routes(app, with_examples=state.settings.examples)
    exact_openapi(app, state.credentials, is_public)
    # The guard inside CORS: its refusals (401, 429, ...) carry CORS headers, so a page can
    # read them; preflights are answered before the guard (they carry no key).
    app.add_middleware(
        Guard,
        clients=state.clients,
        limits=state.limits,
        respond=errors.respond,
        audit=state.refused,
        on_auth_failure=state.metrics.auth_failure,
    )
    app.add_middleware(Cors, clients=state.clients)
    return app


def _add_routes(app: FastAPI, *, with_examples: bool) -> None:
    """The routers' routes on the app's own router, in the order of the OpenAPI document's paths.

    Their routes are added, not `include_router`ed: FastAPI (0.165) keeps an included router as
    one wrapper route that checks the router's version and matches through a second router on
    every request, about 3 % of a proxied request's instructions. The routers carry no prefix,
    dependency or include option, so their routes serve the same on the app's router.
    """
    # The proxy is the hot path: its routes are tried first (before FastAPI's own document
    # routes). No other route's path starts with /v1/proxy/, so the order decides nothing but
    # how many patterns a proxied request tries.
    app.router.routes[:0] = proxy.router.routes
    modules = [examples] if with_examples else []
    for module in [*modules, ops, credentials, tokens, sessions, session_proxy]:
        app.router.routes.extend(module.router.routes)
