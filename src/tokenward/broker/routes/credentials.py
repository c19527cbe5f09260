"""The credentials routes: what the client may see of its credentials, and a forced refresh."""

from __future__ import annotations

import time

from fastapi import APIRouter

from ...errors import TokenwardError
from ...token import fingerprint
from ..auth import BrokerError
from ..models import ERRORS, CredentialOut, RefreshOut
from .deps import Client, State

__all__ = ["router"]

router = APIRouter(tags=["credentials"])


@router.get("/v1/credentials", responses=ERRORS)
async def list_credentials(client: Client, state: State) -> list[CredentialOut]:
    """State, expiry and refresh counts of the credentials the client may use."""
    out = []
    now = time.time()
    for name, cred in sorted(state.credentials.items()):
        if not client.policy.allows_credential(name):
            continue
        record = await cred.store.aload(name)
        expires_at = record.expires_at if record else None
        out.append(
            CredentialOut(
                name=name,
                grant=cred.config.grant,
                session_scoped=cred.config.session_scoped,
                state=record.state if record else "empty",
                version=record.version if record else 0,
                fingerprint=fingerprint(record.access_token if record else None),
                expires_at=expires_at,
                expires_in=None if expires_at is None else expires_at - now,
                refresh_count=record.refresh_count if record else 0,
                has_refresh_token=bool(record and record.refresh_token),
                last_error=record.last_error if record else None,
            )
        )
    state.audit(client.name, None, "credentials.list", 200, count=len(out))
    return out


@router.post("/v1/credentials/{name}/refresh", responses=ERRORS)
async def refresh(name: str, client: Client, state: State) -> RefreshOut:
    """Refresh now (one refresh across replicas however many ask). Needs `admin`."""
    cred = state.credential(client, name)
    if not client.policy.admin:
        raise BrokerError(403, "forbidden", f"client {client.name!r} may not force refreshes")
    if cred.config.session_scoped:
        raise BrokerError(
            400,
            "session_scoped",
            f"credential {name!r} is session-scoped: it has no stored token to refresh "
            "(each session mints its own: POST /v1/sessions)",
        )
    try:
        token = await cred.manager.arefresh()
    except TokenwardError as exc:
        raise state.failed(client.name, cred, "credential.refresh", exc) from None
    state.audit(client.name, name, "credential.refresh", 200, token)
    return RefreshOut(
        name=name,
        fingerprint=token.fingerprint,
        version=token.version,
        expires_at=token.expires_at,
    )
