"""The refresh protocol, scripted (no I/O): a process that waited on a stalled leader's
in-flight refresh token never spends it once that leader has stored its answer.

The race the full-process test (test_liveness.py, stalled leader) met on PostgreSQL: the waiter
read the record, then saw the in-flight record gone: the stalled leader had resumed and, in one
`Finish`, stored its rotated refresh token and dropped its in-flight record. Proceeding with the
record read before that would present the spent token again (reuse, a revoked family)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tokenward.flow import (
    Begin,
    FlowContext,
    Holder,
    Http,
    Inspect,
    Load,
    Release,
    Renew,
    refresh_flow,
)
from tokenward.sources import RefreshTokenGrant
from tokenward.stores import MemoryStore, Record
from tokenward.stores.base import Begun, Claim
from tokenward.token import fingerprint

KEY = "ml"


def _context() -> FlowContext:
    return FlowContext(
        key=KEY,
        source=RefreshTokenGrant("http://provider.invalid/token", "id", "secret"),
        store=MemoryStore(),
        owner="waiter",
        fresh=lambda token: token.expires_at is None or token.expires_at > time.time() + 60,
    )


def _drive(flow: Any, answer: Callable[[Any], Any]) -> tuple[Any, list[Any]]:
    """Run `flow`, answering each operation with `answer(op)`; the ops seen, and the result."""
    seen: list[Any] = []
    value: Any = None
    while True:
        try:
            op = flow.send(value)
        except StopIteration as stop:
            return stop.value, seen
        seen.append(op)
        value = answer(op)


def test_waiter_adopts_the_stalled_leaders_answer_stored_after_its_last_read() -> None:
    old = Record(KEY, 1, access_token="a1", refresh_token="r1", expires_at=time.time() - 1)
    new = Record(
        KEY,
        2,
        access_token="a2",
        refresh_token="r2",
        expires_at=time.time() + 3600,
        obtained_at=time.time(),
    )
    stalled = Claim("leader", 30.0, None, fingerprint("r1"))
    inspections = iter([Holder(stalled, True), None])  # in flight, then gone (stored)
    loads = iter([old, old, new])  # before the lease, while waiting, after it is gone

    def answer(op: Any) -> Any:
        match op:
            case Load():
                return next(loads)
            case Begin():
                return Begun(True, old, stalled, marked=False)
            case Inspect(in_flight=True):
                return next(inspections)
            case Renew():
                return True
            case Http():
                raise AssertionError("presented the refresh token the stalled leader spent")
            case _:
                return None  # Sleep, Notify, Now and other bookkeeping

    token, ops = _drive(refresh_flow(_context(), None), answer)
    assert token.access_token == "a2" and token.version == 2
    assert not any(isinstance(op, Http) for op in ops)
    assert isinstance(ops[-1], Release)  # the lease is given back
