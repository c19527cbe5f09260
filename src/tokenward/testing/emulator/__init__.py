"""An in-process OAuth / API-key provider emulator: state plus a Starlette ASGI app.

It models the behaviours that break token clients in production (single-use rotating refresh
tokens, reuse detection, lost responses, 429/5xx, malformed bodies, single-session tokens) so
that tokenward and its users can test against real HTTP instead of mocks. It is the bottom
layer of tokenward and imports nothing else from it.

The parts, by concern (docs/architecture.md): `shapes` (names, error bodies, the transport-free
`Reply`), `state` (records, settings, clock), the model's mixins `accounts`, `grants`,
`sessions`, `faults` (with `holds`) and `counters`, composed in `model.Emulator`; the HTTP side
is `app` (routes, control endpoints), `wire` (request and answer plumbing) and `wire_faults`
(latency, holds, injected and lost answers).
"""

from __future__ import annotations

from .app import create_app
from .holds import Hold
from .model import Emulator
from .shapes import (
    COUNTER_NAMES,
    DEVICE_GRANT_TYPE,
    ENDPOINTS,
    FAULTS,
    INVALID_GRANT_BODY,
    fingerprint,
)

__all__ = [
    "COUNTER_NAMES",
    "DEVICE_GRANT_TYPE",
    "ENDPOINTS",
    "FAULTS",
    "INVALID_GRANT_BODY",
    "Emulator",
    "Hold",
    "create_app",
    "fingerprint",
]
