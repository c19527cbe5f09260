"""`tokenward.events`: subscribers see every event whatever logging shows; logging (the default
subscriber) writes the records it always wrote; a failing subscriber never breaks a refresh."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator

import pytest

import tokenward
from tokenward import events
from tokenward.events import Event
from tokenward.manager import TokenManager
from tokenward.retry import RetryPolicy
from tokenward.sources import RefreshTokenGrant
from tokenward.stores import MemoryStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.server import EmulatorServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def quiet() -> Iterator[logging.Logger]:
    """The `tokenward` logger raised to CRITICAL, as an application might, restored after."""
    logger = logging.getLogger("tokenward")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield logger
    finally:
        logger.setLevel(level)


@pytest.fixture
def manager(tokenward_emulator: EmulatorServer) -> Iterator[TokenManager]:
    source = RefreshTokenGrant(tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    manager = TokenManager("ml", source, MemoryStore(), retry=RetryPolicy(deadline=5))
    emulator = tokenward_emulator.emulator
    manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
    try:
        yield manager
    finally:
        manager.close()


def test_the_api_is_exported_from_tokenward() -> None:
    assert tokenward.subscribe is events.subscribe
    assert tokenward.Event is Event
    assert {"Event", "Subscription", "subscribe"} <= set(tokenward.__all__)


def test_a_subscriber_gets_frozen_events_until_closed() -> None:
    seen: list[Event] = []
    subscription = events.subscribe(seen.append)
    events.emit("token.adopted", "api", fingerprint="abc123", version=3)
    subscription.close()
    subscription.close()  # idempotent
    events.emit("token.adopted", "api", fingerprint="def456", version=4)
    (event,) = seen
    assert (event.name, event.credential, dict(event.fields)) == (
        "token.adopted",
        "api",
        {"fingerprint": "abc123", "version": 3},
    )
    assert event.timestamp > 0 and event.level == logging.INFO
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.fields["version"] = 5  # type: ignore[index]


def test_a_subscription_is_a_context_manager() -> None:
    seen: list[str] = []
    with events.subscribe(lambda e: seen.append(e.name)):
        events.emit("refresh.failed", "api", kind="transient")
    events.emit("refresh.failed", "api", kind="transient")
    assert seen == ["refresh.failed"]


def test_subscribers_see_events_the_logger_would_drop(quiet: logging.Logger) -> None:
    seen: list[str] = []
    with events.subscribe(lambda e: seen.append(e.name)):
        events.emit("token.requested", "api", version=1, force=False)
        events.emit("token.refreshed", "api", fingerprint="abc", version=2)
    assert seen == ["token.requested", "token.refreshed"]


def test_a_failing_subscriber_is_reported_once_and_others_still_get_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tokenward")
    seen: list[str] = []

    def broken(event: Event) -> None:
        raise ValueError("subscriber bug")

    with events.subscribe(broken), events.subscribe(lambda e: seen.append(e.name)):
        events.emit("store.conflict", "api", version=1)  # raises nothing here
        events.emit("store.conflict", "api", version=2)
    assert seen == ["store.conflict", "store.conflict"]
    reports = [r for r in caplog.records if "event subscriber" in r.getMessage()]
    (report,) = reports
    assert report.levelno == logging.ERROR and "broken" in report.getMessage()
    assert report.exc_info is not None and report.exc_info[0] is ValueError


def test_the_log_record_is_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    """Message, level and extra fields as JSON formatters and the docs expect them."""
    caplog.set_level(logging.DEBUG, logger="tokenward")
    events.emit("refresh.failed", "api", kind="transient", detail="503", retry_in=None)
    events.emit("token.requested", "api", version=None, force=True)
    failed, requested = (r for r in caplog.records if r.name == "tokenward")
    assert failed.levelno == logging.WARNING
    assert failed.getMessage() == "refresh.failed credential=api kind=transient detail=503"
    assert (failed.event, failed.credential, failed.kind, failed.detail) == (  # type: ignore[attr-defined]
        "refresh.failed",
        "api",
        "transient",
        "503",
    )
    assert failed.tokenward == {"kind": "transient", "detail": "503", "retry_in": None}  # type: ignore[attr-defined]
    assert requested.levelno == logging.DEBUG
    assert requested.getMessage() == "token.requested credential=api force=True"


def test_subscribing_from_many_threads_while_events_flow() -> None:
    """Every subscriber sees every event emitted while it is subscribed (no lost or torn
    subscription list under concurrent subscribe/close/emit)."""
    counts: list[int] = [0] * 8

    def work(index: int) -> None:
        mine: list[str] = []
        with events.subscribe(lambda e: mine.append(e.credential)):
            for _ in range(200):
                events.emit("token.adopted", f"t{index}")
        counts[index] = mine.count(f"t{index}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == [200] * 8


def test_a_real_refresh_is_seen_whatever_the_log_level(
    manager: TokenManager, tokenward_emulator: EmulatorServer, quiet: logging.Logger
) -> None:
    seen: list[Event] = []
    with events.subscribe(seen.append):
        token = manager.refresh()
    names = [e.name for e in seen if e.credential == "ml"]
    assert names[0] == "token.requested" and "token.obtained" in names
    (done,) = (e for e in seen if e.name == "token.obtained")
    assert done.fields["fingerprint"] == token.fingerprint
    assert done.fields["duration_ms"] >= 0
    assert tokenward_emulator.emulator.counters["refreshes"] == 1


def test_a_failing_subscriber_never_breaks_a_refresh(
    manager: TokenManager, tokenward_emulator: EmulatorServer, quiet: logging.Logger
) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    with events.subscribe(broken):
        first = manager.refresh()
        second = manager.refresh()
    assert second.version == first.version + 1
    assert tokenward_emulator.emulator.counters["refreshes"] == 2
