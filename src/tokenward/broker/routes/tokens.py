"""Token vending: a token handed to a client allowed to hold one (`raw_tokens`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...errors import TokenwardError
from ..auth import BrokerError
from ..models import UPSTREAM_ERRORS, TokenOut
from .deps import Client, State

__all__ = ["router"]

router = APIRouter(tags=["credentials"])


@router.post("/v1/credentials/{name}/token", responses=UPSTREAM_ERRORS, response_model=TokenOut)
async def vend(name: str, client: Client, state: State) -> JSONResponse:
    """A token for a client allowed to hold one (`raw_tokens`); session-scoped and
    API-key-exchange credentials get a freshly minted token on every call."""
    cred = state.credential(client, name)
    if not client.policy.raw_tokens:
        state.audit(client.name, name, "token.vend", 403)
        raise BrokerError(403, "forbidden", f"client {client.name!r} may not receive tokens")
    assert state.http is not None
    try:
        token = await (cred.mint(state.http) if cred.mints else cred.manager.atoken())
    except TokenwardError as exc:
        raise state.failed(client.name, cred, "token.vend", exc) from None
    state.audit(client.name, name, "token.vend", 200, token, minted=cred.mints)
    body = TokenOut(
        token=token.access_token,
        token_type="Bearer" if token.token_type.lower() == "bearer" else token.token_type,
        expires_at=token.expires_at,
        fingerprint=token.fingerprint,
    )
    return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})
