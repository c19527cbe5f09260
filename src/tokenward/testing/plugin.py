"""pytest plugin (entry point ``pytest11: tokenward``): the ``tokenward_emulator`` fixture.

pytest loads this module for every project that has tokenward installed, so it imports nothing
heavy at module level: Starlette and uvicorn are imported only when the fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET

if TYPE_CHECKING:
    from tokenward.testing.server import EmulatorServer

__all__ = ["tokenward_emulator"]


@pytest.fixture
def tokenward_emulator() -> Iterator[EmulatorServer]:
    """A running emulator on 127.0.0.1 with a fresh state, stopped after the test.

    Pre-registered: OAuth client ``test-client`` / ``test-secret`` and API key ``test-api-key``.
    Reach the state (settings, counters, faults) through ``tokenward_emulator.emulator``.
    """
    try:
        from tokenward.testing.emulator import Emulator
        from tokenward.testing.server import EmulatorServer
    except ImportError as exc:  # pragma: no cover - depends on the installation
        pytest.skip(f"tokenward emulator needs the 'testing' extra (starlette, uvicorn): {exc}")

    emulator = Emulator()
    emulator.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    emulator.add_api_key(TEST_API_KEY)
    server = EmulatorServer(emulator).start()
    try:
        yield server
    finally:
        server.stop()
