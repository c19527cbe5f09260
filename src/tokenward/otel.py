"""OpenTelemetry for tokenward's refreshes (`pip install 'tokenward[otel]'`): a span per
refresh, a counter of refreshes and of failures, a histogram of refresh durations.

    from tokenward import otel
    subscription = otel.instrument()   # the global tracer and meter providers

Built from `tokenward.events` (a subscriber), so it needs no change to the refresh protocol,
which reads no clock: a refresh starts at its `token.requested` event and ends at the first of
`token.obtained` / `token.refreshed` / `token.adopted` / a final `refresh.failed`; the span is
created when it ends, with the events' timestamps as its start and end. Names follow the
OpenTelemetry semantic conventions where one applies (`error.type`; durations in seconds);
tokenward's own attributes are under `tokenward.`. Only names, versions, fingerprints and error
codes become attributes: never a token, never provider text.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .events import Event, Subscription, subscribe

__all__ = ["SPAN_NAME", "instrument"]

SPAN_NAME = "tokenward.refresh"
#: Events that end a refresh, and the outcome each one records.
_ENDS = {"token.obtained": "obtained", "token.refreshed": "refreshed", "token.adopted": "adopted"}
#: Refreshes started and not ended that are remembered (a flow that raises without an event,
#: e.g. a lease timeout, leaves one behind; the oldest are forgotten past this many).
_PENDING_MAX = 1024


@dataclass
class _Pending:
    """A refresh seen starting (`token.requested`) on one thread, with its retries so far."""

    started: float
    forced: bool = False
    #: Whether the caller had a token (`version` set). A flow started without one that finds a
    #: fresh stored token returns without an event: a later `token.adopted` on this thread is
    #: then an adoption on invalidate, not this flow's end.
    had_token: bool = False
    retries: list[Event] = field(default_factory=list)


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class _Consumer:
    """The subscriber: pairs each refresh's start and end events (by credential and thread:
    a flow emits all its events from the thread driving it)."""

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter) -> None:
        self._tracer = tracer
        self._refreshes = meter.create_counter(
            "tokenward.refreshes", unit="{refresh}", description="Refreshes this process did."
        )
        self._failures = meter.create_counter(
            "tokenward.refresh.failures",
            unit="{failure}",
            description="Failed attempts at the provider (transient ones are retried).",
        )
        self._duration = meter.create_histogram(
            "tokenward.refresh.duration",
            unit="s",
            description="From a refresh's request to its token (or its final failure).",
        )
        self._pending: OrderedDict[tuple[str, int], _Pending] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        key = (event.credential, threading.get_ident())
        if event.name == "token.requested":
            fields = event.fields
            self._start(
                key,
                _Pending(
                    event.timestamp, bool(fields.get("force")), fields.get("version") is not None
                ),
            )
        elif event.name in _ENDS:
            if event.name != "token.adopted":
                self._refreshes.add(1, {**_base(event), "tokenward.outcome": _ENDS[event.name]})
            self._end(key, event, _ENDS[event.name], None)
        elif event.name == "refresh.failed":
            error = _error_type(event)
            self._failures.add(1, {**_base(event), "error.type": error})
            if event.fields.get("kind") == "transient" and event.fields.get("retry_in") is not None:
                self._note(key, event)
            else:
                self._end(key, event, "failed", error)
        elif event.name == "refresh.answer_lost":
            self._note(key, event)

    def _note(self, key: tuple[str, int], event: Event) -> None:
        """A retry within a refresh: an event on its span."""
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                pending.retries.append(event)

    def _start(self, key: tuple[str, int], pending: _Pending) -> None:
        with self._lock:
            self._pending.pop(key, None)
            self._pending[key] = pending
            while len(self._pending) > _PENDING_MAX:
                self._pending.popitem(last=False)

    def _end(self, key: tuple[str, int], event: Event, outcome: str, error: str | None) -> None:
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None and (outcome != "adopted" or pending.had_token):
                del self._pending[key]
            else:
                pending = None
        if pending is None:
            # Not a refresh seen starting: an adoption on invalidate, a session token's mint, or
            # subscribed mid-refresh. Only a token's own duration says when a refresh began.
            took = event.fields.get("duration_ms")
            if event.name == "refresh.failed" or not isinstance(took, int | float):
                return
            pending = _Pending(event.timestamp - took / 1000)
        started = min(pending.started, event.timestamp)
        attributes: dict[str, Any] = {**_base(event), "tokenward.outcome": outcome}
        if error is not None:
            attributes["error.type"] = error
        self._duration.record(event.timestamp - started, attributes)
        self._span(pending, event, attributes, started)

    def _span(
        self, pending: _Pending, event: Event, attributes: dict[str, Any], started: float
    ) -> None:
        """The refresh's span, created now that its end is known, with the events' times."""
        span = self._tracer.start_span(
            SPAN_NAME, kind=SpanKind.INTERNAL, attributes=attributes, start_time=_ns(started)
        )
        span.set_attribute("tokenward.refresh.forced", pending.forced)
        span.set_attribute("tokenward.refresh.retries", len(pending.retries))
        for name, attribute in (("version", "version"), ("fingerprint", "fingerprint")):
            value = event.fields.get(name)
            if value is not None:
                span.set_attribute(f"tokenward.token.{attribute}", value)
        for retry in pending.retries:
            span.add_event(*_span_event(retry), timestamp=_ns(retry.timestamp))
        if "error.type" in attributes:
            span.set_status(Status(StatusCode.ERROR, attributes["error.type"]))
        span.end(end_time=_ns(event.timestamp))


def _base(event: Event) -> dict[str, Any]:
    return {"tokenward.credential": event.credential}


def _span_event(event: Event) -> tuple[str, dict[str, Any]]:
    """A retry's span event: a transient failure, or an answer that never arrived."""
    if event.name == "refresh.answer_lost":
        return "tokenward.refresh.answer_lost", {}
    return "tokenward.refresh.retry", {
        "error.type": _error_type(event),
        "tokenward.refresh.attempt": int(event.fields.get("attempt") or 0),
        "tokenward.refresh.retry_in": float(event.fields.get("retry_in") or 0.0),
    }


def _error_type(event: Event) -> str:
    """`error.type` of a `refresh.failed` event: the provider's OAuth error code for a refusal
    (`invalid_grant`, ...), else the failure's kind (`transient`, `malformed`)."""
    error = event.fields.get("error")
    if event.fields.get("kind") == "permanent" and isinstance(error, str) and error:
        return error
    return str(event.fields.get("kind") or "_OTHER")


def instrument(
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Subscription:
    """Record tokenward's refreshes with OpenTelemetry (the global providers unless given)
    until the returned subscription is closed. Call it once per process: each call counts on
    its own."""
    version = importlib.metadata.version("tokenward")
    tracer = trace.get_tracer("tokenward", version, tracer_provider)
    meter = metrics.get_meter("tokenward", version, meter_provider)
    return subscribe(_Consumer(tracer, meter))
