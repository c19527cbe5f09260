"""The broker's one error shape: `{"error": code, "reason": text}`, whatever went wrong.

`error` is a stable code a program can branch on (`CODES` lists them all, docs/broker.md
documents them); `reason` is for people: it says what is wrong and what to do, and never holds a
secret. Routing errors (404, 405), FastAPI's request validation (422) and any unexpected
exception (500, without a traceback in the answer) are all turned into this shape here, so a
route added later answers the same way without doing anything.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from ..config import ConfigError
from ..errors import CredentialNotSeeded, ReauthorizationRequired, TokenwardError
from .auth import BrokerError

__all__ = ["CODES", "ErrorOut", "credential_error", "error_response", "install"]

logger = logging.getLogger("tokenward.broker")

#: Every `error` code the broker answers with (and the status it comes with).
CODES: dict[str, int] = {
    "bad_request": 400,
    "invalid_request": 422,
    "unsafe_path": 400,
    "method_override": 400,
    "no_base_url": 400,
    "bad_path": 400,
    "not_session_scoped": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "origin_forbidden": 403,
    "cors_forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "rate_limited": 429,
    "auth_throttled": 429,
    "session_quota": 429,
    "internal_error": 500,
    "upstream_failed": 502,
    "upstream_unreachable": 502,
    "token_reused": 502,
    "credential_unavailable": 503,
    "reauthorization_required": 503,
    "credential_misconfigured": 503,
    "not_seeded": 503,
    "store_unreachable": 503,
    "upstream_timeout": 504,
}


class ErrorOut(BaseModel):
    """Every error the broker itself answers with."""

    error: str = Field(description="A stable code (see docs/broker.md, 'Errors').")
    reason: str = Field(description="What is wrong and how to fix it (never a secret).")


def error_response(exc: BrokerError) -> JSONResponse:
    return JSONResponse({"error": exc.error, "reason": exc.reason}, exc.status, exc.headers)


def respond(exc: BrokerError) -> ASGIApp:
    """`error_response` as an ASGI app (for middleware answering before any route)."""
    return error_response(exc)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    """Routing errors (404, 405) and Starlette's own refusals."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "bad_request")
    return JSONResponse({"error": code, "reason": str(exc.detail)}, exc.status_code, exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, as one reason naming each field at fault (never echoing its value: a
    client may have put a secret in the wrong field)."""
    assert isinstance(exc, RequestValidationError)
    problems = []
    for item in exc.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()))
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    reason = "; ".join(problems) or "the request does not match the API"
    return JSONResponse({"error": "invalid_request", "reason": reason}, 422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: a clean 500 (the traceback goes to the log, not to the client)."""
    logger.error(
        "unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc
    )
    reason = f"the broker failed unexpectedly ({type(exc).__name__}); see its log"
    return JSONResponse({"error": "internal_error", "reason": reason}, 500)


def install(app: FastAPI) -> None:
    """Make every error of `app` answer in the one shape."""
    app.add_exception_handler(BrokerError, lambda _r, exc: error_response(exc))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


def credential_error(name: str, exc: Exception, *, api_key: bool = False) -> BrokerError:
    """Why credential `name` cannot produce a token, with advice that fits its kind
    (`api_key`: the secret is a key in the configuration, not a login). tokenward errors
    never hold a secret (provider text is scrubbed before it reaches them)."""
    if isinstance(exc, ConfigError):
        return BrokerError(
            503,
            "credential_misconfigured",
            f"{name}: the broker's configuration is incomplete: {exc}",
        )
    if isinstance(exc, ReauthorizationRequired):
        if api_key:
            reason = (
                f"{name}: the provider refused the API key ({exc.error}). Put a valid key in "
                f"the credential's api_key setting and restart the broker."
            )
        else:
            reason = str(exc)
        return BrokerError(503, "reauthorization_required", reason)
    if isinstance(exc, CredentialNotSeeded):
        return BrokerError(503, "not_seeded", str(exc))
    if isinstance(exc, TokenwardError):  # RefreshFailed, LeaseTimeout, ...: try again later
        return BrokerError(503, "credential_unavailable", f"{name}: {type(exc).__name__}: {exc}")
    return BrokerError(502, "upstream_failed", f"{name}: {type(exc).__name__}")


def described(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error statuses, each an `ErrorOut`."""
    return {code: {"model": ErrorOut, "description": _DESCRIPTIONS[code]} for code in codes}


_DESCRIPTIONS = {
    400: "Bad request (ambiguous framing, unsafe path, method override, ...).",
    401: "No client key, or an unknown one.",
    403: "The client's policy does not allow this (credential, method, path, origin).",
    404: "No such credential or session (or another client's session).",
    405: "The method is not allowed on this path.",
    410: "The session is over (its token expired, or it is being stopped): start a new one.",
    413: "The body exceeds the broker's limit.",
    422: "The request does not match the API (which field, and why).",
    429: "Rate limited (Retry-After says when to retry).",
    500: "A bug in the broker (see its log).",
    502: "The upstream failed.",
    503: "The credential cannot produce a token now (why, and what to do).",
    504: "The upstream did not answer in time.",
}
