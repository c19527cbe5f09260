"""The example pages (`[broker] examples = true`): a session opened, kept alive and closed
from the browser, and examples/browser-session (a streaming frontend's start and stop)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from ..auth import BrokerError

__all__ = ["router"]

#: The files of examples/browser-session, served under /examples/browser-session/ ("" is the
#: page itself); anything else answers 404.
_EXAMPLE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "session.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

router = APIRouter(tags=["examples"])


@router.get("/examples/session", response_class=HTMLResponse)
async def example_session() -> HTMLResponse:
    """A page that opens, keeps alive and closes a session from the browser."""
    page = resources.files("tokenward.broker").joinpath("examples/session.html")
    return HTMLResponse(page.read_text(encoding="utf-8"))


@router.get("/examples/browser-session/{name:path}", include_in_schema=False)
async def example_browser_session(name: str) -> Response:
    """examples/browser-session: start and stop sessions as a streaming frontend does."""
    name = name or "index.html"
    kind = _EXAMPLE_FILES.get(name)
    if kind is None:
        raise BrokerError(404, "not_found", f"no example file {name!r}")
    folder = resources.files("tokenward.broker").joinpath("examples/browser-session")
    text = folder.joinpath(name).read_text(encoding="utf-8")
    return Response(text, media_type=kind, headers={"Cache-Control": "no-store"})
