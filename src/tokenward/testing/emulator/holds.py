"""The records of what a test makes go wrong: a queued fault (one use of it) and a hold, which
stalls a request at an exact instant until the test releases it."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Fault:
    name: str
    remaining: int
    retry_after: float | None
    delay: float | None


class Hold:
    """A stall placed by :meth:`Emulator.hold`: requests that reach it wait for `release()`."""

    def __init__(self, endpoint: str, stage: str, times: int) -> None:
        self.endpoint = endpoint
        self.stage = stage
        self.remaining = times
        #: Set when a request reaches the hold (it stays set).
        self.arrived = threading.Event()
        #: The User-Agent of each request that reached the hold, in order (who to act on).
        self.agents: list[str | None] = []
        #: Set when a client held at ``received`` went away (e.g. its process was killed):
        #: on release its request is abandoned, never processed, as the ``timeout`` fault does.
        self.client_gone = threading.Event()
        self._released = threading.Event()

    def wait(self, timeout: float = 10.0) -> None:
        """Block until a request has reached the hold (AssertionError after `timeout`)."""
        if not self.arrived.wait(timeout):
            raise AssertionError(f"no {self.endpoint} request reached the {self.stage} hold")

    def release(self) -> None:
        """Let held requests (and any later one reaching this hold) continue."""
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def __repr__(self) -> str:
        state = "released" if self.released else "arrived" if self.arrived.is_set() else "armed"
        return f"Hold({self.endpoint!r}, {self.stage!r}, {state})"
