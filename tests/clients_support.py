"""Helpers shared by the client integration tests (requests, aiohttp, sdk, sessions, docs)."""

from __future__ import annotations

import io
import logging
from typing import Any

from tokenward import RefreshTokenGrant, TokenManager
from tokenward.stores.memory import MemoryStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.server import EmulatorServer


def make_manager(server: EmulatorServer, key: str = "ml") -> TokenManager:
    """A manager for a seeded MercadoLibre-style credential on the emulator."""
    refresh_token = server.emulator.issue_refresh_token(TEST_CLIENT_ID)
    source = RefreshTokenGrant(
        server.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET, client_auth="body"
    )
    manager = TokenManager(key, source, MemoryStore())
    manager.seed(refresh_token=refresh_token)
    manager.token()  # the first token, so that counters only show what a test causes
    server.emulator.reset_counters()
    return manager


def counters(server: EmulatorServer) -> dict[str, int]:
    return server.emulator.counters


class OneWayStream(io.RawIOBase):
    """A readable body that cannot seek (like a socket or a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class Events(logging.Handler):
    """Collects tokenward event names (and the whole log text, to check for secrets)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.names: list[str] = []
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(getattr(record, "event", ""))
        self.text.append(record.getMessage())
