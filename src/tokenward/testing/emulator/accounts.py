"""Accounts: registered clients and API keys, token families, access and refresh tokens, client
authentication and revocation by the client (RFC 7009)."""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import unquote_plus

from .shapes import DEFAULT_SCOPE, Reply, fingerprint, oauth_error
from .state import AccessToken, Client, Family, ProviderState, RefreshToken, SessionToken


class AccountsModel(ProviderState):
    """Provisioning (what a test sets up) and the token records behind every grant."""

    def add_client(
        self,
        client_id: str,
        client_secret: str | None,
        *,
        redirect_uris: list[str] | None = None,
    ) -> None:
        """Register an OAuth client; ``client_secret=None`` makes it a public client."""
        with self._lock:
            self._clients[client_id] = Client(
                client_id, client_secret, list(redirect_uris) if redirect_uris else None
            )

    def add_api_key(self, key: str) -> None:
        """Accept ``key`` on the HeyGen-style ``streaming.create_token`` endpoint."""
        with self._lock:
            self._api_keys.add(key)

    def remove_api_key(self, key: str) -> None:
        """Stop accepting ``key`` (models a rotated or revoked vendor key)."""
        with self._lock:
            self._api_keys.discard(key)

    def issue_refresh_token(self, client_id: str, scope: str = DEFAULT_SCOPE) -> str:
        """Return a refresh token as if a user just logged in; it starts a new token family."""
        with self._lock:
            self._require_client(client_id)
            family = self._new_family(client_id)
            return self._new_refresh(client_id, family, scope)

    def issue_access_token(
        self, client_id: str, lifetime: float | None = None, scope: str = "read write"
    ) -> str:
        """Return a standalone access token (no family), valid for ``lifetime`` seconds."""
        with self._lock:
            self._require_client(client_id)
            life = self.access_lifetime if lifetime is None else lifetime
            return self._new_access(client_id, None, scope, life)

    def issue_session_token(self, api_key: str = "") -> str:
        """Mint a HeyGen-style session token directly, as create_token would."""
        with self._lock:
            return self._new_session_token(api_key)

    def revoke(self, token: str) -> bool:
        """Revoke an access or refresh token (a refresh token takes its family along)."""
        with self._lock:
            return self._revoke(token)

    def is_access_token_valid(self, token: str) -> bool:
        with self._lock:
            return self._access_valid(token)

    def is_refresh_token_valid(self, token: str) -> bool:
        """True when ``token`` would be accepted by a refresh_token grant right now."""
        with self._lock:
            record = self._refresh.get(token)
            if record is None or record.revoked or record.rotated_at is not None:
                return False
            return not self._families[record.family].revoked and not self._refresh_expired(record)

    # ----------------------------------------------------------------- internals (lock held)

    def _require_client(self, client_id: str) -> Client:
        client = self._clients.get(client_id)
        if client is None:
            raise ValueError("unknown client_id")
        return client

    def _new_family(self, client_id: str) -> str:
        family_id = f"fam-{next(self._family_ids)}"
        self._families[family_id] = Family(family_id, client_id)
        return family_id

    def _new_access(self, client_id: str, family: str | None, scope: str, lifetime: float) -> str:
        token = "APP_USR-" + secrets.token_urlsafe(24)
        self._access[token] = AccessToken(client_id, family, scope, self.now() + lifetime)
        if family is not None:
            self._families[family].access_tokens.add(token)
        return token

    def _new_refresh(self, client_id: str, family: str, scope: str) -> str:
        token = "TG-" + secrets.token_urlsafe(24)
        self._refresh[token] = RefreshToken(client_id, family, scope, self.now())
        self._families[family].refresh_tokens.add(token)
        return token

    def _new_session_token(self, api_key: str, prefix: str = "") -> str:
        token = prefix + secrets.token_urlsafe(32)
        life = self.session_token_lifetime
        self._session_tokens[token] = SessionToken(self.now() + life, fingerprint(api_key))
        self._counters["session_tokens"] += 1
        return token

    def _access_valid(self, token: str) -> bool:
        record = self._access.get(token)
        if record is None or record.revoked or self.now() >= record.expires_at:
            return False
        return record.family is None or not self._families[record.family].revoked

    def _count_rejection(self, token: str) -> None:
        """Why an access token was refused: expired (by the provider's clock) or revoked."""
        record = self._access.get(token)
        if record is None:
            return
        if record.revoked or (record.family is not None and self._families[record.family].revoked):
            self._counters["api_401_revoked"] += 1
        elif self.now() >= record.expires_at:
            self._counters["api_401_expired"] += 1

    def _refresh_expired(self, record: RefreshToken) -> bool:
        life = self.refresh_lifetime
        return life is not None and self.now() - record.issued_at > life

    def _revoke_family(self, family_id: str) -> None:
        family = self._families[family_id]
        if not family.revoked:
            family.revoked = True
            self._counters["families_revoked"] += 1
        for token in family.access_tokens:
            self._access[token].revoked = True
        for token in family.refresh_tokens:
            self._refresh[token].revoked = True

    def _revoke(self, token: str) -> bool:
        refresh = self._refresh.get(token)
        if refresh is not None:
            self._revoke_family(refresh.family)
            return True
        access = self._access.get(token)
        if access is not None:
            access.revoked = True
            return True
        return False

    def _authenticate(
        self, params: Mapping[str, str], authorization: str | None
    ) -> tuple[Client | None, Reply | None]:
        """RFC 6749 2.3.1: HTTP Basic or client_id/client_secret in the body; both accepted."""
        basic = authorization is not None and authorization[:6].lower() == "basic "
        failure_headers = {"WWW-Authenticate": 'Basic realm="emulator"'} if basic else {}

        def fail() -> tuple[None, Reply]:
            self._counters["invalid_client"] += 1
            reply = oauth_error("invalid_client", "client authentication failed", 401)
            reply.headers.update(failure_headers)
            return None, reply

        client_id: str | None
        secret: str | None
        if basic:
            assert authorization is not None
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except ValueError:
                return fail()
            user, sep, password = raw.partition(":")
            if not sep:
                return fail()
            client_id, secret = unquote_plus(user), unquote_plus(password)
            if params.get("client_id") not in (None, "", client_id):
                return fail()
        else:
            client_id, secret = params.get("client_id"), params.get("client_secret")
        client = self._clients.get(client_id or "")
        if client is None:
            return fail()
        if client.client_secret is not None and not (
            secret and hmac.compare_digest(secret.encode(), client.client_secret.encode())
        ):
            return fail()
        return client, None
