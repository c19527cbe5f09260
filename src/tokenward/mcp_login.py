"""`tokenward login <MCP server URL>`: log a person in to a remote MCP server and store the grant
under a credential name (`grant = "mcp"` in tokenward.toml), so that `tokenward status` shows
it and `McpOAuth` / `tokenward.credential(NAME)` refresh it.

The login is the `mcp` SDK's own flow, run by `McpOAuth.login()`: protected-resource metadata
(RFC 9728), authorization-server metadata (RFC 8414), dynamic client registration (RFC 7591)
and the PKCE authorization-code flow. This module only does the person's side: a loopback
listener for the redirect (`tokenward.login.CallbackListener`, bound first because its address
is registered with the client), the browser, and what to print. A re-login reuses the stored
registration and its redirect port. The device flow (RFC 8628) is refused with a clear error:
the SDK has no device flow and MCP authorization servers advertise none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .config import Config
from .errors import TokenwardError
from .login import CallbackListener, open_browser
from .sources.authorization import AuthorizationDenied
from .stores.base import Record, Store
from .token import fingerprint

if TYPE_CHECKING:
    from mcp.shared.auth import AuthorizationCodeResult

__all__ = ["is_server_url", "login", "mcp_target", "summary"]


def is_server_url(value: str) -> bool:
    """Whether `tokenward login`'s argument is an MCP server's URL rather than a name."""
    return value.startswith(("https://", "http://"))


def default_name(server_url: str) -> str:
    """A credential name for a server when `--name` is not given: `mcp-<host>`."""
    host = urlsplit(server_url).hostname or "server"
    return "mcp-" + host.replace(".", "-")


def mcp_target(argument: str, name: str | None, config: Config | None) -> tuple[str, str] | None:
    """(credential name, server URL) when `tokenward login ARGUMENT` is an MCP login: a URL, or
    the name of a credential with `grant = "mcp"`. None for any other credential."""
    if is_server_url(argument):
        return name or default_name(argument), argument
    settings = config.credentials.get(argument) if config is not None else None
    if settings is not None and settings.grant == "mcp":
        return argument, settings.require("mcp_server", "log in")
    return None


def _stored_port(record: Record | None) -> int:
    """The redirect port the stored registration was made with (0 when there is none)."""
    from .integrations.mcp import McpRegistration

    registration = McpRegistration.from_record(record)
    uris = registration.client.get("redirect_uris") if registration else None
    if isinstance(uris, list) and uris and isinstance(uris[0], str):
        port = urlsplit(uris[0]).port
        if urlsplit(uris[0]).hostname == "127.0.0.1" and port:
            return port
    return 0


def login(
    server_url: str,
    name: str,
    store: Store,
    *,
    say: Callable[[str], None],
    browser: bool = True,
    port: int | None = None,
    scope: str | None = None,
    timeout: float = 300.0,
) -> Record:
    """Log in to the MCP server at `server_url` and store the grant under `name` in `store`."""

    from .integrations.mcp import McpOAuth, default_client_metadata

    listener = CallbackListener(port if port is not None else _stored_port(store.load(name)))

    async def redirect_handler(url: str) -> None:
        say(f"Open this URL to authorize tokenward:\n{url}")
        if browser:
            open_browser(url)
        say(
            f"Waiting up to {timeout:.0f}s for the redirect to {listener.redirect_uri} "
            "(Ctrl-C cancels)."
        )

    async def callback_handler() -> AuthorizationCodeResult:
        return _code_result(await listener.await_callback(timeout))

    auth = McpOAuth(
        server_url,
        name,
        store,
        client_metadata=default_client_metadata(listener.redirect_uri, scope),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )

    async def run() -> Record:
        try:
            return await auth.login(timeout=timeout)
        finally:
            await auth.aclose()

    try:
        return asyncio.run(run())
    except TokenwardError:  # AuthorizationDenied included
        raise
    except Exception as exc:  # the SDK's OAuthFlowError & co: say what failed, no traceback
        # Only the SDK's summary: what follows its first ": " may quote the server's answer or
        # the state, which the console and logs must not show.
        what = str(exc).split(": ", 1)[0][:200]
        raise AuthorizationDenied(f"the MCP login failed: {type(exc).__name__}: {what}") from None
    finally:
        listener.close()


def _code_result(query: dict[str, str]) -> AuthorizationCodeResult:
    """The redirect's query as the SDK wants it; an error redirect raises `AuthorizationDenied`."""
    from mcp.shared.auth import AuthorizationCodeResult

    if query.get("error"):
        detail = query.get("error_description")
        raise AuthorizationDenied(
            f"the authorization server refused the login: {query['error']}"
            + (f" ({detail})" if detail else "")
        )
    return AuthorizationCodeResult(
        code=query.get("code", ""), state=query.get("state"), iss=query.get("iss")
    )


def summary(name: str, record: Record) -> str:
    """What `tokenward login` prints after an MCP login (no secret)."""
    from .integrations.mcp import McpRegistration

    registration = McpRegistration.from_record(record)
    client = registration.client_id if registration else None
    refresh = "with" if record.refresh_token else "WITHOUT"
    return (
        f"logged in {name}: token {fingerprint(record.access_token)} (version {record.version}), "
        f"{refresh} a refresh token; client {client}, token endpoint "
        f"{registration.token_endpoint if registration else '?'}"
    )
