"""One way for tests to wait: poll a condition that an event, a counter or the emulator moves,
with a deadline that only catches a hang (a busy machine just makes the wait longer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def until(what: str, condition: Callable[[], object], timeout: float = 30.0) -> None:
    """Return once `condition()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def auntil(what: str, condition: Callable[[], object], timeout: float = 30.0) -> None:
    """`until` inside an event loop: polls without blocking the loop (the tasks that move the
    condition keep running)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
