"""Logging a person in: the authorization-code flow with PKCE and the device flow (RFC 8628),
then the grant stored for a configured credential.

Why a library module: a setup script, a notebook or a web front end needs the same first login
as `tokenward login`, which only parses its options and prints what these functions report.

- `CallbackListener`: the loopback listener that receives the provider's redirect. It binds
  when it is created, so its redirect URI is known before anything is sent (an MCP login
  registers that URI with the authorization server first: `tokenward.mcp_login`).
- `authorization_code()`: a browser login (authorization code + PKCE, RFC 6749 4.1 / RFC 7636).
- `device_code()`: a headless login (a code entered on another device, RFC 8628).
- `login()`: one of the two for a configured credential, the grant stored with
  `TokenManager.seed` (a new login clears `needs_reauth`).
- `revoke()`: the reverse for a configured credential (`TokenManager.revoke`, or with
  `local=True` only the stored tokens forgotten).

    from tokenward.login import login

    record = login("ml", on_url=lambda url, redirect_uri: print("open", url))

The sans-I/O halves (URLs, request bodies, answers) live in `tokenward.sources.authorization`;
this module does the I/O: the listener, the browser, the token requests and the polling.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
import webbrowser
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2

from ._compat import renamed_keyword
from .config import Config, ConfigError, CredentialConfig, load_config
from .sources.authorization import (
    AuthorizationDenied,
    DeviceAuthorization,
    OAuthClient,
    Pkce,
    authorization_url,
    parse_callback,
    parse_device_authorization,
    parse_device_poll,
)
from .sources.oauth2 import parse_token_response
from .stored_grant import revoke_stored
from .stores.base import Record, Store
from .token import Grant
from .transport import DEFAULT_TIMEOUT, HttpRequest, HttpResponse, send

__all__ = [
    "CallbackListener",
    "authorization_code",
    "device_code",
    "login",
    "open_browser",
    "revoke",
]

#: What a login reports while it waits: (URL to open, redirect URI) for a browser login.
OnUrl = Callable[[str, str], None]
#: What a device login reports: the code to enter and where.
OnDevice = Callable[[DeviceAuthorization], None]


class _Handler(BaseHTTPRequestHandler):
    """Answers the one redirect of a login (the query holds the code: never logged)."""

    server: _Server

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/callback":
            self.send_error(404)
            return
        if self.server.result is None:  # the first redirect counts; a reload changes nothing
            self.server.result = dict(parse_qsl(parts.query))
        body = b"<html><body>tokenward: login complete, you can close this tab.</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.done.set()

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(HTTPServer):
    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.result: dict[str, str] | None = None
        self.done = threading.Event()


class CallbackListener:
    """A one-shot HTTP listener on 127.0.0.1 for an OAuth redirect to `/callback`.

    Bound on creation (`port=0`: a free port), so `redirect_uri` can be put in the
    authorization URL, or registered with a client, before the person is sent anywhere; it
    serves from a daemon thread until `close()`. `wait()` returns the redirect's query.
    """

    def __init__(self, port: int = 0) -> None:
        self._server = _Server(port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="tokenward-login-callback",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/callback"

    def wait(self, timeout: float) -> dict[str, str]:
        """The redirect's query parameters; `AuthorizationDenied` after `timeout` seconds."""
        if not self._server.done.wait(timeout):
            raise AuthorizationDenied(
                f"no login callback within {timeout:.0f}s; run `tokenward login` again"
            )
        return dict(self._server.result or {})

    async def await_callback(self, timeout: float) -> dict[str, str]:
        """`wait()` for asyncio code (the MCP SDK's callback handler)."""
        return await asyncio.to_thread(self.wait, timeout)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CallbackListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_browser(url: str) -> None:
    """Open `url` in the person's browser without waiting for it (a console browser such as
    lynx would otherwise block the login until it exits)."""
    threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()


def _http(request: HttpRequest) -> HttpResponse:
    with httpx2.Client(timeout=DEFAULT_TIMEOUT) as client:
        return send(client, request)


def authorization_code(
    client: OAuthClient,
    authorize_url: str,
    *,
    on_url: OnUrl,
    scope: str | None = None,
    extra: Mapping[str, str] | None = None,
    port: int = 0,
    browser: bool = True,
    timeout: float = 300.0,
    credential: str = "login",
) -> Grant:
    """A browser login: `on_url(url, redirect_uri)` is told the URL to open (and it is opened
    in a browser when `browser`), the redirect is awaited for `timeout` seconds on a loopback
    listener at `port`, its `state` checked and its code exchanged (with the PKCE verifier).
    `credential` names the credential in errors."""
    pkce, state = Pkce.new(), secrets.token_urlsafe(24)
    with CallbackListener(port) as listener:
        url = authorization_url(
            authorize_url,
            client.client_id,
            listener.redirect_uri,
            state=state,
            pkce=pkce,
            scope=scope,
            extra=extra,
        )
        on_url(url, listener.redirect_uri)
        if browser:
            open_browser(url)
        query = listener.wait(timeout)
    code = parse_callback(query, state)
    response = _http(client.code_request(code, listener.redirect_uri, pkce))
    return parse_token_response(response, credential)


def device_code(
    client: OAuthClient,
    *,
    on_device: OnDevice,
    scope: str | None = None,
    timeout: float = 300.0,
    credential: str = "login",
) -> Grant:
    """A device login: `on_device(device)` is told the code to enter and where, then the token
    endpoint is polled at the provider's interval (slower when it says `slow_down`) until the
    person approves, refuses (`AuthorizationDenied`) or `timeout` seconds pass."""
    device = parse_device_authorization(_http(client.device_request(scope)), credential)
    on_device(device)
    interval = device.interval
    deadline = time.monotonic() + min(timeout, device.expires_in)
    while time.monotonic() < deadline:
        time.sleep(max(interval, 0.1))  # the provider's poll interval (RFC 8628 3.5)
        answer = parse_device_poll(_http(client.device_poll_request(device)), credential)
        if isinstance(answer, Grant):
            return answer
        if answer == "slow_down":
            interval += 5
    raise AuthorizationDenied("the device code was not approved in time; run the login again")


def _ignore_url(url: str, redirect_uri: str) -> None:
    return


def _ignore_device(device: DeviceAuthorization) -> None:
    return


def login(
    key: str | None = None,
    config: str | os.PathLike[str] | Config | None = None,
    *,
    device: bool = False,
    port: int | None = None,
    browser: bool = True,
    timeout: float = 300.0,
    on_url: OnUrl = _ignore_url,
    on_device: OnDevice = _ignore_device,
    store: Store | None = None,
    **deprecated: Any,
) -> Record:
    """Log in to the configured credential `key` and store the grant; returns the stored
    record (`fingerprint(record.access_token)` names the token without showing it). `name=` is
    the deprecated spelling of `key=`.

    The browser flow listens on `port` (default: the credential's `redirect_port`, else a free
    port); `device=True` uses the device flow (needs `device_authorization_url`). `store`
    defaults to the credential's store from the configuration."""
    key = renamed_keyword(key, deprecated, old="name", new="key", call="tokenward.login.login")
    loaded = config if isinstance(config, Config) else load_config(config)
    settings = loaded.credential_config(key)
    fresh = _obtain(settings, device, port, browser, timeout, on_url, on_device)
    with settings.manager(store if store is not None else loaded.store_for(settings)) as manager:
        return manager.seed(
            refresh_token=fresh.refresh_token,
            access_token=fresh.access_token,
            expires_in=fresh.expires_in(),
            token_type=fresh.token_type,
            scope=fresh.scope,
        )


def _obtain(
    settings: CredentialConfig,
    device: bool,
    port: int | None,
    browser: bool,
    timeout: float,
    on_url: OnUrl,
    on_device: OnDevice,
) -> Grant:
    """A fresh grant from the provider by the flow chosen (nothing stored yet)."""
    client = settings.oauth_client()
    scope = settings.provider.scope
    if device:
        if not client.device_authorization_url:
            raise ConfigError(
                f"{settings.where}: device_authorization_url is required for --device"
            )
        return device_code(
            client, on_device=on_device, scope=scope, timeout=timeout, credential=settings.name
        )
    return authorization_code(
        client,
        settings.require("authorize_url", "log in with a browser (or use --device)"),
        on_url=on_url,
        scope=scope,
        extra=settings.provider.authorize_params,
        port=port if port is not None else settings.provider.redirect_port,
        browser=browser,
        timeout=timeout,
        credential=settings.name,
    )


def revoke(
    key: str | None = None,
    config: str | os.PathLike[str] | Config | None = None,
    *,
    local: bool = False,
    via: str = "",
    store: Store | None = None,
    **deprecated: Any,
) -> Record | None:
    """Revoke the configured credential `key`'s grant at the provider (`TokenManager.revoke`
    with the credential's `revocation_url`), or with `local=True` only forget the stored tokens
    (no client secret needed: the provider keeps them valid until they expire). The record is
    left without tokens, in state `needs_reauth`; None when nothing was stored. A credential
    without `revocation_url` raises `ConfigError` saying what the provider offers instead.
    `name=` is the deprecated spelling of `key=`."""
    key = renamed_keyword(key, deprecated, old="name", new="key", call="tokenward.login.revoke")
    loaded = config if isinstance(config, Config) else load_config(config)
    settings = loaded.credential_config(key)
    if not local and not settings.get("revocation_url"):
        raise ConfigError(_no_revocation_endpoint(settings))
    chosen = store if store is not None else loaded.store_for(settings)
    if local:
        return revoke_stored(chosen, key, None, via=via)
    with settings.manager(chosen) as manager:
        return manager.revoke(settings.oauth_client(), via=via)


def _no_revocation_endpoint(settings: CredentialConfig) -> str:
    """Why the provider cannot be asked, what it offers instead, and the fixes."""
    preset = settings.preset
    note = settings.provider.revocation_note
    origin = f"the {preset} preset" if preset else "it"
    text = f"{settings.where} has no revocation_url, so tokenward cannot revoke at the provider"
    if note:
        text += f" ({origin}: {note})"
    return (
        f"{text}. Run `tokenward revoke {settings.name} --local` to forget the stored tokens "
        f'here, or set revocation_url = "https://..." in [credentials.{settings.name}] if '
        "the provider has an RFC 7009 endpoint."
    )
