"""The tokenward broker (use cases U2, U3, U4 in docs/architecture.md): an ASGI app that
proxies API calls with a fresh token injected server-side, vends tokens to trusted clients, and
hands out session-scoped tokens — so that the long-lived secret never leaves the server.

Needs the `broker` extra (FastAPI, uvicorn, prometheus-client); `tokenward serve` runs it.
`create_app` is imported lazily, so `tokenward.broker.config` works without FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
