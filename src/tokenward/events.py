"""Structured events on the stdlib logger `tokenward`.

Each event is one log record whose message reads well in a plain log and whose fields are also
attached to the record (`record.event`, `record.credential`, `record.fingerprint`,
`record.version`, `record.duration_ms`, ...) for JSON formatters and structlog. Callers pass
fingerprints, never secrets.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["emit", "logger"]

logger = logging.getLogger("tokenward")

_LEVELS = {
    "refresh.failed": logging.WARNING,
    "reauth.required": logging.ERROR,
    "refresh.answer_lost": logging.WARNING,
    "request.not_replayed": logging.WARNING,
    "store.conflict": logging.WARNING,
    "manager.close_timeout": logging.WARNING,
    "sessions.close_timeout": logging.WARNING,
    "session.stop_failed": logging.WARNING,
    "session.expired": logging.WARNING,
    "lease.taken_over": logging.WARNING,
    "lease.holder_silent": logging.WARNING,
    "lease.waiting_in_flight": logging.WARNING,
}


def emit(event: str, credential: str, **fields: Any) -> None:
    """Log `event` for `credential` with structured `fields` (never pass a secret here)."""
    level = _LEVELS.get(event, logging.DEBUG if event == "token.requested" else logging.INFO)
    if not logger.isEnabledFor(level):
        return
    shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    logger.log(
        level,
        "%s credential=%s %s",
        event,
        credential,
        shown,
        extra={"event": event, "credential": credential, "tokenward": fields, **fields},
    )
