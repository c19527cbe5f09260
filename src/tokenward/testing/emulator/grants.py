"""The OAuth endpoints' logic, transport-free: the token endpoint (refresh with rotation, reuse
detection and grace, client credentials, authorization code with PKCE, device code), authorize,
device authorization, revocation, and the protected API's bearer check."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from .accounts import AccountsModel
from .shapes import (
    API_INVALID_TOKEN_BODY,
    DEFAULT_SCOPE,
    DEVICE_GRANT_TYPE,
    INVALID_GRANT_BODY,
    Reply,
    fingerprint,
    invalid_request,
    json_seconds,
    oauth_error,
    offline_scope,
    pkce_s256,
)
from .state import AuthCode, Client, DeviceGrant, RefreshToken


class GrantsModel(AccountsModel):
    """What the provider answers on its OAuth endpoints (each method takes the lock)."""

    def token_endpoint(
        self, params: Mapping[str, str], authorization: str | None, agent: str | None = None
    ) -> Reply:
        """POST /oauth/token, already parsed: dispatch on grant_type (``agent``: the request's
        User-Agent, kept in :attr:`grant_log`)."""
        with self._lock:
            grant_type = params.get("grant_type")
            if not grant_type:
                return invalid_request("grant_type")
            client, failure = self._authenticate(params, authorization)
            if failure is not None:
                return failure
            assert client is not None
            if grant_type == "refresh_token":
                return self._grant_refresh(client, params, agent)
            if grant_type == "client_credentials":
                return self._grant_client_credentials(client, params)
            if grant_type == "authorization_code":
                return self._grant_authorization_code(client, params)
            if grant_type == DEVICE_GRANT_TYPE:
                return self._grant_device(client, params)
            return oauth_error("unsupported_grant_type", "grant_type is not supported")

    def _log_grant(
        self, agent: str | None, presented: str, outcome: str, family: str | None, new: str | None
    ) -> None:
        entry = {"time": time.time(), "clock": self.now(), "agent": agent, "outcome": outcome}
        entry |= {"presented": fingerprint(presented), "family": family}
        entry["new"] = None if new is None else fingerprint(new)
        self._grant_log.append(entry)

    def _refuse_refresh(
        self, agent: str | None, presented: str, record: RefreshToken | None
    ) -> Reply:
        """invalid_grant for `presented`, logged with the reason."""
        if record is None:
            outcome = "unknown"
        elif record.rotated_at is not None and not record.revoked:
            outcome = "reused"
        elif record.revoked or self._families[record.family].revoked:
            outcome = "revoked"
        else:
            outcome = "expired"
        family = None if record is None else record.family
        self._log_grant(agent, presented, outcome, family, None)
        return self._invalid_grant()

    def _grant_refresh(
        self, client: Client, params: Mapping[str, str], agent: str | None = None
    ) -> Reply:
        presented = params.get("refresh_token")
        if not presented:
            return invalid_request("refresh_token")
        record = self._refresh.get(presented)
        if record is None or record.client_id != client.client_id:
            return self._refuse_refresh(agent, presented, None)
        family = self._families[record.family]
        if family.revoked or record.revoked or self._refresh_expired(record):
            return self._refuse_refresh(agent, presented, record)
        now = self.now()
        if record.rotated_at is not None:
            self._counters["refresh_reuse"] += 1
            if record.replay is not None and now - record.rotated_at <= self.reuse_grace:
                self._counters["refresh_grace_replays"] += 1
                replay = dict(record.replay)
                self._log_grant(agent, presented, "grace_replay", record.family, None)
                return Reply(200, replay)
            refused = self._refuse_refresh(agent, presented, record)
            if self.revoke_family_on_reuse:
                self._revoke_family(record.family)
            return refused
        scope = record.scope
        requested = params.get("scope")
        if requested:
            if not set(requested.split()) <= set(record.scope.split()):
                return oauth_error("invalid_scope", "requested scope exceeds the granted scope")
            scope = requested
        access = self._new_access(client.client_id, record.family, scope, self.access_lifetime)
        if self.revoke_old_access_on_refresh:
            for token in family.access_tokens:
                if token != access:
                    self._access[token].revoked = True
        if self.refresh_rotation:
            new_refresh = self._new_refresh(client.client_id, record.family, record.scope)
        else:
            new_refresh = presented
        body = self._token_body(access, new_refresh, scope)
        if self.refresh_rotation:
            record.rotated_at = now
            record.replay = dict(body)
        self._counters["refreshes"] += 1
        self._log_grant(agent, presented, "rotated", record.family, new_refresh)
        self._refresh_log.append(
            {
                "time": time.time(),
                "clock": now,
                "client_id": client.client_id,
                "family": record.family,
                "old": fingerprint(presented),
                "new": fingerprint(new_refresh),
                "access": fingerprint(access),
                "rotated": self.refresh_rotation,
            }
        )
        return Reply(200, body)

    def _grant_client_credentials(self, client: Client, params: Mapping[str, str]) -> Reply:
        if client.client_secret is None:
            return oauth_error("unauthorized_client", "public clients cannot use this grant")
        scope = params.get("scope") or "read write"
        access = self._new_access(client.client_id, None, scope, self.access_lifetime)
        body = self._token_body(access, None, scope)
        # Echo what was sent (never the secret) so tests can verify scope/audience/extras.
        body["params"] = {k: v for k, v in params.items() if k != "client_secret"}
        self._counters["client_credentials"] += 1
        return Reply(200, body)

    def _grant_authorization_code(self, client: Client, params: Mapping[str, str]) -> Reply:
        code = params.get("code")
        if not code:
            return invalid_request("code")
        record = self._codes.get(code)
        if record is None or record.client_id != client.client_id:
            return self._invalid_grant()
        if record.used:
            # RFC 6749 4.1.2: a code used twice revokes what it produced.
            if record.family is not None:
                self._revoke_family(record.family)
            return self._invalid_grant()
        if self.now() >= record.expires_at:
            return self._invalid_grant()
        if record.redirect_uri is not None and params.get("redirect_uri") != record.redirect_uri:
            return self._invalid_grant()
        verifier = params.get("code_verifier")
        if record.code_challenge is not None:
            if not verifier or not hmac.compare_digest(pkce_s256(verifier), record.code_challenge):
                return self._invalid_grant()
        elif verifier:
            return self._invalid_grant()
        record.used = True
        body = self._issue_pair(client.client_id, record.scope)
        record.family = self._access[body["access_token"]].family
        self._counters["authorization_code"] += 1
        return Reply(200, body)

    def _grant_device(self, client: Client, params: Mapping[str, str]) -> Reply:
        device_code = params.get("device_code")
        if not device_code:
            return invalid_request("device_code")
        grant = self._devices.get(device_code)
        if grant is None or grant.client_id != client.client_id or grant.used:
            return self._invalid_grant()
        if self.now() >= grant.expires_at:
            return oauth_error("expired_token", "the device code has expired")
        if grant.denied:
            return oauth_error("access_denied", "the user denied the request")
        if not grant.approved:
            return oauth_error("authorization_pending", "the user has not approved yet")
        grant.used = True
        self._counters["device_code"] += 1
        return Reply(200, self._issue_pair(client.client_id, grant.scope))

    def authorize(self, params: Mapping[str, str]) -> Reply:
        """GET /authorize: auto-approve and redirect back with a single-use code."""
        with self._lock:
            client = self._clients.get(params.get("client_id") or "")
            if client is None:
                return oauth_error("invalid_client", "unknown client_id")
            redirect_uri = params.get("redirect_uri")
            if client.redirect_uris is not None:
                if redirect_uri is None and len(client.redirect_uris) == 1:
                    redirect_uri = client.redirect_uris[0]
                if redirect_uri not in client.redirect_uris:
                    return oauth_error("invalid_request", "redirect_uri is not registered")
            if not redirect_uri:
                return invalid_request("redirect_uri")
            target: str = redirect_uri
            state = params.get("state")

            def redirect(query: dict[str, str]) -> Reply:
                if state is not None:
                    query["state"] = state
                joiner = "&" if "?" in target else "?"
                return Reply(302, None, {"Location": target + joiner + urlencode(query)})

            if params.get("response_type") != "code":
                return redirect({"error": "unsupported_response_type"})
            challenge = params.get("code_challenge")
            method = params.get("code_challenge_method")
            if challenge and method != "S256":
                return redirect(
                    {"error": "invalid_request", "error_description": "only S256 is supported"}
                )
            code = "TG-" + secrets.token_urlsafe(16)
            self._codes[code] = AuthCode(
                client.client_id,
                params.get("redirect_uri"),
                challenge or None,
                params.get("scope") or DEFAULT_SCOPE,
                self.now() + 600,
            )
            self._counters["authorizations"] += 1
            return redirect({"code": code})

    def device_authorization(
        self, params: Mapping[str, str], authorization: str | None, base_url: str
    ) -> Reply:
        """POST /oauth/device/code (RFC 8628 3.1-3.2)."""
        with self._lock:
            client, failure = self._authenticate(params, authorization)
            if failure is not None:
                return failure
            assert client is not None
            device_code = secrets.token_urlsafe(32)
            alphabet = "BCDFGHJKLMNPQRSTVWXZ"
            letters = "".join(secrets.choice(alphabet) for _ in range(8))
            user_code = f"{letters[:4]}-{letters[4:]}"
            lifetime = 600
            self._devices[device_code] = DeviceGrant(
                client.client_id,
                user_code,
                params.get("scope") or DEFAULT_SCOPE,
                self.now() + lifetime,
            )
            self._user_codes[user_code] = device_code
            self._counters["device_authorizations"] += 1
            verification_uri = base_url + "/device"
            complete = f"{verification_uri}?{urlencode({'user_code': user_code})}"
            body = {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": verification_uri,
                "verification_uri_complete": complete,
                "expires_in": lifetime,
                "interval": self.device_interval,
            }
            return Reply(200, body)

    def revocation_endpoint(self, params: Mapping[str, str], authorization: str | None) -> Reply:
        """POST /oauth/revoke (RFC 7009): 200 even for unknown tokens."""
        with self._lock:
            if authorization or params.get("client_id"):
                _client, failure = self._authenticate(params, authorization)
                if failure is not None:
                    return failure
            token = params.get("token")
            if not token:
                return invalid_request("token")
            self._revoke(token)
            self._counters["revocations"] += 1
            return Reply(200, None)

    def api_request(self, path: str, authorization: str | None) -> tuple[Reply | None, str]:
        """Check the bearer token of a protected API call; ``None`` reply means allowed."""
        with self._lock:
            scheme, _, token = (authorization or "").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return Reply(401, {"message": "authorization required"}), ""
            if not self._access_valid(token):
                self._count_rejection(token)
                headers = (
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                    if self.www_authenticate
                    else {}
                )
                return Reply(401, dict(API_INVALID_TOKEN_BODY, cause=[]), headers), ""
            if path == "/api/scope-limited":
                body = {"message": "insufficient_scope", "error": "forbidden", "status": 403}
                headers = {"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="admin"'}
                return Reply(403, {**body, "cause": []}, headers), ""
            return None, fingerprint(token)

    def approve_device(self, user_code: str, *, deny: bool = False) -> bool:
        """Play the person who enters ``user_code`` and approves (or denies) the device."""
        with self._lock:
            return self._approve_device(user_code, deny=deny)

    def _approve_device(self, user_code: str, *, deny: bool) -> bool:
        normalized = user_code.strip().upper().replace(" ", "")
        device_code = self._user_codes.get(normalized)
        if device_code is None:
            return False
        grant = self._devices[device_code]
        if grant.used or self.now() >= grant.expires_at:
            return False
        grant.approved = not deny
        grant.denied = deny
        return True

    def _invalid_grant(self) -> Reply:
        self._counters["invalid_grant"] += 1
        return Reply(400, dict(INVALID_GRANT_BODY, cause=[]))

    def _token_body(self, access: str, refresh: str | None, scope: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": json_seconds(self.access_lifetime),
            "scope": scope,
            "user_id": self.user_id,
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        return body

    def _issue_pair(self, client_id: str, scope: str) -> dict[str, Any]:
        """Start a family (a login) and answer with its first tokens."""
        family = self._new_family(client_id)
        access = self._new_access(client_id, family, scope, self.access_lifetime)
        # MercadoLibre only issues refresh tokens with the offline_access scope.
        refresh = self._new_refresh(client_id, family, scope) if offline_scope(scope) else None
        return self._token_body(access, refresh, scope)
