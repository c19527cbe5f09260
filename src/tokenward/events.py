"""Structured events: what tokenward did, for logs, metrics and your own code.

Every event (`token.refreshed`, `refresh.failed`, `lease.taken_over`, ...) is one frozen `Event`
handed to each subscriber. Logging is the default subscriber: it writes one record on the
stdlib logger `tokenward` whose message reads well in a plain log and whose fields are also
attached to the record (`record.event`, `record.credential`, `record.fingerprint`,
`record.version`, `record.duration_ms`, ...) for JSON formatters and structlog.

Why subscribers rather than log handlers: a counter that listens on the logger stops counting
the moment an application raises the logger's level; a subscriber sees every event whatever
logging is configured to show. The broker's Prometheus metrics and `tokenward.otel` subscribe.

Callers pass fingerprints, never secrets: events reach every subscriber.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any

__all__ = ["Event", "Subscriber", "Subscription", "emit", "log", "logger", "subscribe"]

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


@dataclass(frozen=True, slots=True)
class Event:
    """One thing tokenward did: `name` (`token.refreshed`, ...) for `credential` (its key;
    `*` for events about no single credential), with `fields` (fingerprints, versions,
    durations, never a secret) and `timestamp` (seconds since the epoch, when emitted)."""

    name: str
    credential: str
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    timestamp: float = field(default_factory=time.time)

    @property
    def level(self) -> int:
        """The stdlib logging level the default subscriber logs this event at."""
        return _level(self.name)


#: A subscriber: called with each event, in the thread that emitted it. It should be quick
#: (it runs inside refreshes); its return value is ignored.
Subscriber = Callable[[Event], object]


class Subscription:
    """A subscriber's registration: `close()` (or leaving its `with` block) unsubscribes."""

    __slots__ = ("_reported", "subscriber")

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self._reported = False  # a failing subscriber is reported once, not at every event

    def close(self) -> None:
        """Stop delivering events to the subscriber (idempotent)."""
        global _subscriptions
        with _lock:
            _subscriptions = tuple(s for s in _subscriptions if s is not self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Subscription({_name(self.subscriber)})"

    def deliver(self, event: Event) -> None:
        """Call the subscriber; an exception is reported once and never reaches the emitter
        (an event must not break the refresh that emitted it)."""
        try:
            self.subscriber(event)
        except Exception as exc:
            if not self._reported:
                self._reported = True
                logger.error(
                    "event subscriber %s failed on %s; its further failures are not reported",
                    _name(self.subscriber),
                    event.name,
                    exc_info=exc,
                )


def log(event: Event) -> None:
    """The default subscriber: one record on the `tokenward` logger (skipped, unbuilt, when
    the logger would drop it)."""
    level = event.level
    if not logger.isEnabledFor(level):
        return
    fields = dict(event.fields)
    shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    logger.log(
        level,
        "%s credential=%s %s",
        event.name,
        event.credential,
        shown,
        extra={"event": event.name, "credential": event.credential, "tokenward": fields, **fields},
    )


_lock = threading.Lock()
#: Replaced whole under `_lock`, read without it: `emit` never waits on a (un)subscribe.
_subscriptions: tuple[Subscription, ...] = (Subscription(log),)


def subscribe(subscriber: Subscriber) -> Subscription:
    """Call `subscriber(event)` for every event from now on, in the emitting thread, until the
    returned subscription is closed (also a context manager). Thread-safe. An exception from
    the subscriber is logged once and otherwise ignored."""
    global _subscriptions
    subscription = Subscription(subscriber)
    with _lock:
        _subscriptions = (*_subscriptions, subscription)
    return subscription


def emit(event: str, credential: str, **fields: Any) -> None:
    """Hand `event` for `credential` with structured `fields` to every subscriber (never pass
    a secret here)."""
    subscriptions = _subscriptions
    if (
        len(subscriptions) == 1
        and subscriptions[0].subscriber is log
        and not logger.isEnabledFor(_level(event))
    ):
        return  # only the logging subscriber, which would drop it: build nothing
    happened = Event(event, credential, MappingProxyType(fields))
    for subscription in subscriptions:
        subscription.deliver(happened)


def _level(name: str) -> int:
    return _LEVELS.get(name, logging.DEBUG if name == "token.requested" else logging.INFO)


def _name(obj: object) -> str:
    """`module.qualname` of a subscriber, for the failure report."""
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', None) or type(obj).__module__}.{name}"
