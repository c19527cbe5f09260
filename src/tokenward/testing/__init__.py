"""Provider emulator and pytest plugin for testing code that uses tokenward.

The heavy parts (Starlette, uvicorn) load lazily on first attribute access, so that the pytest
plugin, registered for every installation of tokenward, costs nothing when unused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenward.testing.emulator import (
        COUNTER_NAMES,
        DEVICE_GRANT_TYPE,
        ENDPOINTS,
        FAULTS,
        INVALID_GRANT_BODY,
        Emulator,
        Hold,
        create_app,
        fingerprint,
    )
    from tokenward.testing.server import EmulatorServer

__all__ = [
    "COUNTER_NAMES",
    "DEVICE_GRANT_TYPE",
    "ENDPOINTS",
    "FAULTS",
    "INVALID_GRANT_BODY",
    "TEST_API_KEY",
    "TEST_CLIENT_ID",
    "TEST_CLIENT_SECRET",
    "Emulator",
    "EmulatorServer",
    "Hold",
    "create_app",
    "fingerprint",
]

#: Credentials pre-registered by the ``tokenward_emulator`` fixture and ``python -m``.
TEST_CLIENT_ID = "test-client"
TEST_CLIENT_SECRET = "test-secret"
TEST_API_KEY = "test-api-key"

_LAZY = {
    "COUNTER_NAMES": "emulator",
    "DEVICE_GRANT_TYPE": "emulator",
    "ENDPOINTS": "emulator",
    "FAULTS": "emulator",
    "INVALID_GRANT_BODY": "emulator",
    "Emulator": "emulator",
    "Hold": "emulator",
    "create_app": "emulator",
    "fingerprint": "emulator",
    "EmulatorServer": "server",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, name)
