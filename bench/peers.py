"""The ways of calling a protected API that the refresh storm and the soak compare.

Each peer is built in the process that uses it, from the provider's address and a starting
token (a dict: access_token, refresh_token, expires_at) or, for tokenward, a shared SQLite
store the parent seeded. `call(worker, seq)` is thread-safe (one HTTP client shared by all the
process's threads); `async_caller()` yields a coroutine function sharing one async client.
The request mix is the demo's (`demo._request_args`: three POSTs with a JSON body,
then a GET). Every peer is configured as its documentation suggests for auto-refresh, with an
early-expiry margin of 5 % of the lifetime where it has one (tokenward's default window).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from demo import ML_EXPIRY_RULE, NaiveApproach, _request_args

from .common import ProviderInfo

os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

KEY = "bench-storm"
TIMEOUT = 30.0
AsyncCall = Callable[[int, int], Awaitable[bool]]


class Peer:
    name = "?"
    supports_async = True

    def __init__(self, info: ProviderInfo, start: dict[str, Any], lifetime: float) -> None:
        self.info = info
        self.start = start
        self.leeway = 0.05 * lifetime

    def call(self, worker: int, seq: int) -> bool:
        raise NotImplementedError

    def async_caller(self) -> contextlib.AbstractAsyncContextManager[AsyncCall]:
        raise NotImplementedError

    def refresh_tokens(self) -> list[str | None]:
        """The refresh token(s) this peer holds at the end (one per copy it keeps)."""
        return []

    def close(self) -> None:
        pass


class TokenwardPeer(Peer):
    """`TokenAuth(manager)` on httpx2; the manager's store is the SQLite file the parent seeded,
    shared by every process of the run."""

    name = "tokenward"

    def __init__(self, info: ProviderInfo, start: dict[str, Any], lifetime: float) -> None:
        super().__init__(info, start, lifetime)
        import httpx2

        from tokenward.integrations.httpx import TokenAuth
        from tokenward.manager import TokenManager
        from tokenward.sources.oauth2 import RefreshTokenGrant
        from tokenward.stores.sqlite import SQLiteStore

        self.store = SQLiteStore(start["store"])
        source = RefreshTokenGrant(
            info.token_url, info.client_id, info.client_secret, client_auth="body"
        )
        self.manager = TokenManager(KEY, source, self.store, expiry_rule=ML_EXPIRY_RULE)
        self.auth = TokenAuth(self.manager)
        self.client = httpx2.Client(base_url=info.api_url, auth=self.auth, timeout=TIMEOUT)

    def call(self, worker: int, seq: int) -> bool:
        method, path, body = _request_args(worker, seq)
        return bool(self.client.request(method, path, json=body).status_code == 200)

    @contextlib.asynccontextmanager
    async def async_caller(self) -> AsyncIterator[AsyncCall]:
        import httpx2

        async with httpx2.AsyncClient(
            base_url=self.info.api_url, auth=self.auth, timeout=TIMEOUT
        ) as client:

            async def acall(worker: int, seq: int) -> bool:
                method, path, body = _request_args(worker, seq)
                response = await client.request(method, path, json=body)
                return bool(response.status_code == 200)

            yield acall

    def close(self) -> None:
        self.client.close()
        self.manager.close()
        self.store.close()


class _ShimServer:
    def __init__(self, info: ProviderInfo) -> None:
        self.token_url = info.token_url
        self.api_url = info.api_url


class _ShimProvider:
    """What `demo.NaiveApproach` needs from the demo's provider."""

    def __init__(self, info: ProviderInfo, refresh_token: str) -> None:
        self.server = _ShimServer(info)
        self.client_id = info.client_id
        self.client_secret = info.client_secret
        self._refresh_token = refresh_token

    def login(self) -> str:
        return self._refresh_token


class NaivePeer(Peer):
    """The demo's hand-made refresher (`demo.NaiveApproach`): shared globals, refresh
    on any 401, no lock, no proactive refresh. Each process keeps its own copy of the globals."""

    name = "hand-made"

    def __init__(self, info: ProviderInfo, start: dict[str, Any], lifetime: float) -> None:
        super().__init__(info, start, lifetime)
        self.approach = NaiveApproach(_ShimProvider(info, start["refresh_token"]))  # type: ignore[arg-type]
        self.approach.access_token = start["access_token"]

    def call(self, worker: int, seq: int) -> bool:
        return self.approach.call(worker, seq)

    def async_caller(self) -> contextlib.AbstractAsyncContextManager[AsyncCall]:
        return self.approach.async_caller()

    def refresh_tokens(self) -> list[str | None]:
        return [self.approach.refresh_token()]

    def close(self) -> None:
        self.approach.close()


def _authlib_token(start: dict[str, Any]) -> dict[str, Any]:
    return {
        "access_token": start["access_token"],
        "refresh_token": start["refresh_token"],
        "token_type": "Bearer",
        "expires_at": start["expires_at"],
    }


class AuthlibHttpxPeer(Peer):
    """Authlib's httpx integration, `OAuth2Client` / `AsyncOAuth2Client` (built on httpx2 when
    httpx2 is installed): refreshes inside `request()` when the token is expired (leeway),
    calling `update_token` with the new token."""

    name = "Authlib (httpx2)"

    def __init__(self, info: ProviderInfo, start: dict[str, Any], lifetime: float) -> None:
        super().__init__(info, start, lifetime)
        from authlib.integrations.httpx_client import OAuth2Client

        self._latest: dict[str, Any] = _authlib_token(start)
        self.client = OAuth2Client(**self._options(), timeout=TIMEOUT)

    def _options(self) -> dict[str, Any]:
        return {
            "client_id": self.info.client_id,
            "client_secret": self.info.client_secret,
            "token_endpoint_auth_method": "client_secret_post",
            "token": dict(self._latest),
            "token_endpoint": self.info.token_url,
            "update_token": self._update_token,
            "leeway": self.leeway,
            "base_url": self.info.api_url,
        }

    def _update_token(self, token: dict[str, Any], **_: Any) -> None:
        self._latest = dict(token)

    async def _aupdate_token(self, token: dict[str, Any], **_: Any) -> None:
        self._latest = dict(token)

    def call(self, worker: int, seq: int) -> bool:
        method, path, body = _request_args(worker, seq)
        return bool(self.client.request(method, path, json=body).status_code == 200)

    @contextlib.asynccontextmanager
    async def async_caller(self) -> AsyncIterator[AsyncCall]:
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        options = dict(self._options(), update_token=self._aupdate_token)
        async with AsyncOAuth2Client(**options, timeout=TIMEOUT) as client:

            async def acall(worker: int, seq: int) -> bool:
                method, path, body = _request_args(worker, seq)
                response = await client.request(method, path, json=body)
                return bool(response.status_code == 200)

            yield acall

    def refresh_tokens(self) -> list[str | None]:
        return [self._latest.get("refresh_token")]

    def close(self) -> None:
        self.client.close()


class AuthlibRequestsPeer(Peer):
    """Authlib's requests `OAuth2Session` (auto-refresh with `update_token`)."""

    name = "Authlib (requests)"
    supports_async = False

    def __init__(self, info: ProviderInfo, start: dict[str, Any], lifetime: float) -> None:
        super().__init__(info, start, lifetime)
        from authlib.integrations.requests_client import OAuth2Session

        self._latest: dict[str, Any] = _authlib_token(start)
        self.session = OAuth2Session(
            info.client_id,
            info.client_secret,
            token_endpoint_auth_method="client_secret_post",
            token=dict(self._latest),
            token_endpoint=info.token_url,
            update_token=self._update_token,
            leeway=self.leeway,
        )

    def _update_token(self, token: dict[str, Any], **_: Any) -> None:
        self._latest = dict(token)

    def call(self, worker: int, seq: int) -> bool:
        method, path, body = _request_args(worker, seq)
        url = self.info.api_url + path
        status = self.session.request(method, url, json=body, timeout=TIMEOUT).status_code
        return bool(status == 200)

    def refresh_tokens(self) -> list[str | None]:
        return [self._latest.get("refresh_token")]

    def close(self) -> None:
        self.session.close()


class RequestsOAuthlibPeer(Peer):
    """requests-oauthlib `OAuth2Session` with `auto_refresh_url` and `token_updater` (it has no
    early-expiry setting: it refreshes when oauthlib finds the token expired)."""

    name = "requests-oauthlib"
    supports_async = False

    def __init__(self, info: ProviderInfo, start: dict[str, Any], lifetime: float) -> None:
        super().__init__(info, start, lifetime)
        from requests_oauthlib import OAuth2Session

        self._latest: dict[str, Any] = _authlib_token(start)
        self._latest["expires_in"] = max(start["expires_at"] - time.time(), 0)
        self.session = OAuth2Session(
            info.client_id,
            token=dict(self._latest),
            auto_refresh_url=info.token_url,
            auto_refresh_kwargs={"client_id": info.client_id, "client_secret": info.client_secret},
            token_updater=self._update_token,
        )

    def _update_token(self, token: dict[str, Any]) -> None:
        self._latest = dict(token)

    def call(self, worker: int, seq: int) -> bool:
        method, path, body = _request_args(worker, seq)
        url = self.info.api_url + path
        status = self.session.request(method, url, json=body, timeout=TIMEOUT).status_code
        return bool(status == 200)

    def refresh_tokens(self) -> list[str | None]:
        return [self._latest.get("refresh_token")]

    def close(self) -> None:
        self.session.close()


class HttpxAuthPeer(Peer):
    """httpx-auth `OAuth2AuthorizationCode`, its token cache seeded with the starting token (as
    after a browser login): it refreshes with the cached refresh token once the access token is
    within `early_expiry` of its expiry. It has an async-compatible flow on `httpx.AsyncClient`
    (its token requests stay blocking)."""

    name = "httpx-auth"

    def __init__(self, info: ProviderInfo, start: dict[str, Any], lifetime: float) -> None:
        super().__init__(info, start, lifetime)
        import logging

        import httpx
        from httpx_auth import OAuth2, OAuth2AuthorizationCode

        # Its failed browser fallback logs a traceback per attempt: counted, not printed.
        logging.getLogger("httpx_auth").setLevel(logging.CRITICAL)

        self.cache = OAuth2.token_cache
        self.auth = OAuth2AuthorizationCode(
            info.url + "/authorize",
            info.token_url,
            client_id=info.client_id,
            client_secret=info.client_secret,
            early_expiry=self.leeway,
            # Its timeout covers token requests and, when no refresh token works, the fallback
            # browser login (no browser here): 0.5 s instead of the default 60 s (the token
            # endpoint answers in 25 ms).
            timeout=0.5,
        )
        self.cache._add_token(
            self.auth.state, start["access_token"], start["expires_at"], start["refresh_token"]
        )
        self.client = httpx.Client(base_url=info.api_url, auth=self.auth, timeout=TIMEOUT)

    def call(self, worker: int, seq: int) -> bool:
        method, path, body = _request_args(worker, seq)
        return bool(self.client.request(method, path, json=body).status_code == 200)

    @contextlib.asynccontextmanager
    async def async_caller(self) -> AsyncIterator[AsyncCall]:
        import httpx

        async with httpx.AsyncClient(
            base_url=self.info.api_url, auth=self.auth, timeout=TIMEOUT
        ) as client:

            async def acall(worker: int, seq: int) -> bool:
                method, path, body = _request_args(worker, seq)
                response = await client.request(method, path, json=body)
                return bool(response.status_code == 200)

            yield acall

    def refresh_tokens(self) -> list[str | None]:
        entry = self.cache.tokens.get(self.auth.state)
        return [entry[2] if entry and len(entry) > 2 else None]

    def close(self) -> None:
        self.client.close()
        self.cache.clear()


PEERS: dict[str, type[Peer]] = {
    peer.name: peer
    for peer in (
        TokenwardPeer,
        NaivePeer,
        AuthlibHttpxPeer,
        AuthlibRequestsPeer,
        RequestsOAuthlibPeer,
        HttpxAuthPeer,
    )
}
