"""A credential's stored grant, written without a source (so without its client secret):
`seed_stored` stores a grant obtained elsewhere (a login, an imported `.env`), `revoke_stored`
revokes it at the provider (RFC 7009) when it can and clears the record to `needs_reauth`.
`TokenManager.seed()` / `revoke()` use them; `tokenward import-env` and `revoke --local` use
them directly (the client secret may not be exported yet, and neither needs it).

Both write by compare-and-set. Why that matters for a revocation: a refresh (or a login) in
another thread, process or machine may store new tokens between our read and our write.
Ignoring the failed write would leave those new tokens valid at the provider and in use while
the caller believes the credential revoked. So a conflict is acted on: the fresh record is
read, its tokens (which the provider has not seen revoked yet) are revoked in turn, and the
write is tried again; after `ATTEMPTS` conflicts in a row `RevocationConflict` says so.
"""

from __future__ import annotations

import time

import httpx2

from . import events
from .errors import TokenwardError
from .sources.authorization import OAuthClient
from .sources.oauth2 import parse_token_response
from .stores.base import Record, Store
from .token import fingerprint
from .transport import DEFAULT_TIMEOUT, send

__all__ = ["ATTEMPTS", "RevocationConflict", "revoke_stored", "seed_stored"]

#: Compare-and-set attempts before `RevocationConflict` (each after a concurrent write).
ATTEMPTS = 3


class RevocationConflict(TokenwardError):
    """The record kept changing under the revocation (a refresh or login landed each time)."""

    def __init__(self, credential: str, attempts: int) -> None:
        self.credential = credential
        super().__init__(
            f"{credential}: the stored tokens changed {attempts} times while they were being "
            "revoked (a refresh or a login is running elsewhere); stop it and revoke again"
        )


def seed_stored(
    store: Store,
    key: str,
    *,
    refresh_token: str | None = None,
    access_token: str | None = None,
    expires_in: float | None = None,
    token_type: str = "Bearer",
    scope: str | None = None,
) -> Record:
    """Store a fresh grant for `key` and clear any `needs_reauth` state; returns the stored
    record. A refresh token or scope not given keeps the stored one; `expires_in=0` stores
    the access token as expired (its age unknown: the first use refreshes it). A concurrent
    write only makes it write again on top of the fresh record: the new grant is the newest."""
    now = time.time()
    while True:
        current = store.load(key) or Record(key)
        new = current.successor(
            access_token=access_token,
            token_type=token_type,
            expires_at=None if expires_in is None else now + expires_in,
            refresh_token=refresh_token or current.refresh_token,
            scope=scope or current.scope,
            obtained_at=now,
            state="ok",
            last_error=None,
        )
        if store.compare_and_set(new, current.version):
            events.emit("token.seeded", key, version=new.version)
            return new


def revoke_stored(
    store: Store,
    key: str,
    client: OAuthClient | None = None,
    *,
    http_client: httpx2.Client | None = None,
    via: str = "",
) -> Record | None:
    """Revoke `key`'s stored tokens at the provider with `client` (None: only forget them
    here) and store the record without tokens, in state `needs_reauth`; returns that record,
    or None when nothing is stored. `via` is said in the record's `last_error` after
    "revoked at the provider" / "revoked locally" (e.g. " with `tokenward revoke`").

    Each token is revoked at most once, even when a conflict makes another round."""
    revoked: set[str] = set()
    for _attempt in range(ATTEMPTS):
        record = store.load(key)
        if record is None:
            return None
        if client is not None:
            _revoke_at_provider(client, record, revoked, http_client, key)
        updated = record.successor(
            access_token=None,
            refresh_token=None,
            expires_at=None,
            state="needs_reauth",
            last_error=_how(client is not None, via),
        )
        if store.compare_and_set(updated, record.version):
            events.emit(
                "token.revoked",
                key,
                version=updated.version,
                at_provider=client is not None,
                fingerprint=fingerprint(record.access_token),
            )
            return updated
        events.emit("store.conflict", key, expected_version=record.version, during="revoke")
    raise RevocationConflict(key, ATTEMPTS)


def _how(at_provider: bool, via: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if at_provider:
        return f"revoked at the provider{via} on {when}"
    return f"revoked locally{via} on {when} (the provider was not asked)"


def _revoke_at_provider(
    client: OAuthClient,
    record: Record,
    revoked: set[str],
    http_client: httpx2.Client | None,
    key: str,
) -> None:
    """RFC 7009: each token not revoked yet (the refresh token first: it may take the access
    token along). A refusal raises the classified error; the record is then left as it is."""
    tokens = ((record.refresh_token, "refresh_token"), (record.access_token, "access_token"))
    for secret, hint in tokens:
        if not secret or secret in revoked:
            continue
        request = client.revocation_request(secret, hint)
        if http_client is not None:
            response = send(http_client, request)
        else:
            with httpx2.Client(timeout=DEFAULT_TIMEOUT) as own:
                response = send(own, request)
        if response.status >= 400:
            parse_token_response(response, key)  # raises the classified error
        revoked.add(secret)
