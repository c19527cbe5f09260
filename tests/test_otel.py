"""`tokenward.otel`: refresh spans and metrics, read back from the OpenTelemetry SDK's in-memory
exporters, for a real manager refreshing against the emulator over loopback HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# The SDK comes with tokenward[dev]; a venv installed before it was added skips, not errors.
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tokenward import otel
from tokenward.errors import ReauthorizationRequired
from tokenward.manager import TokenManager
from tokenward.retry import RetryPolicy
from tokenward.sources import RefreshTokenGrant
from tokenward.stores import MemoryStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.server import EmulatorServer

pytestmark = pytest.mark.timeout(60)


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == otel.SPAN_NAME]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[reader])
    # The logger raised as an application might: telemetry must not depend on it.
    logger = logging.getLogger("tokenward")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    with otel.instrument(tracer_provider, meter_provider):
        yield Telemetry(spans, reader)
    logger.setLevel(level)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def manager(tokenward_emulator: EmulatorServer) -> Iterator[TokenManager]:
    source = RefreshTokenGrant(tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    retry = RetryPolicy(initial=0.01, maximum=0.05, deadline=5)
    manager = TokenManager("ml", source, MemoryStore(), retry=retry)
    manager.seed(refresh_token=tokenward_emulator.emulator.issue_refresh_token(TEST_CLIENT_ID))
    try:
        yield manager
    finally:
        manager.close()


def _secrets(server: EmulatorServer) -> set[str]:
    emulator = server.emulator
    return {TEST_CLIENT_SECRET, *emulator._access, *emulator._refresh}


def test_a_refresh_with_a_retry_is_one_span_and_counted(
    manager: TokenManager, tokenward_emulator: EmulatorServer, telemetry: Telemetry
) -> None:
    tokenward_emulator.emulator.inject("503")
    token = manager.refresh()
    assert tokenward_emulator.emulator.counters["refreshes"] == 1
    (span,) = telemetry.finished()
    attributes = dict(span.attributes or {})
    assert attributes["tokenward.credential"] == "ml"
    assert attributes["tokenward.outcome"] == "obtained"
    assert attributes["tokenward.token.fingerprint"] == token.fingerprint
    assert attributes["tokenward.token.version"] == token.version
    assert attributes["tokenward.refresh.retries"] == 1 and "error.type" not in attributes
    assert span.status.status_code is StatusCode.UNSET
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= span.end_time
    (retry,) = span.events
    assert retry.name == "tokenward.refresh.retry"
    assert retry.attributes is not None and retry.attributes["error.type"] == "transient"
    assert span.start_time <= retry.timestamp <= span.end_time

    (refreshes,) = telemetry.points("tokenward.refreshes")
    assert refreshes.value == 1 and refreshes.attributes["tokenward.outcome"] == "obtained"
    (failures,) = telemetry.points("tokenward.refresh.failures")
    assert failures.value == 1 and failures.attributes["error.type"] == "transient"
    (duration,) = telemetry.points("tokenward.refresh.duration")
    assert duration.count == 1
    assert duration.sum == pytest.approx((span.end_time - span.start_time) / 1e9, abs=1e-6)

    shown = repr([dict(s.attributes or {}) for s in telemetry.finished()])
    assert not any(secret in shown for secret in _secrets(tokenward_emulator))


def test_a_refusal_is_an_error_span_with_the_oauth_error(
    manager: TokenManager, tokenward_emulator: EmulatorServer, telemetry: Telemetry
) -> None:
    tokenward_emulator.emulator.inject("invalid_grant")
    with pytest.raises(ReauthorizationRequired):
        manager.refresh()
    (span,) = telemetry.finished()
    attributes = dict(span.attributes or {})
    assert attributes["tokenward.outcome"] == "failed"
    assert attributes["error.type"] == "invalid_grant"
    assert span.status.status_code is StatusCode.ERROR
    (failures,) = telemetry.points("tokenward.refresh.failures")
    assert failures.attributes["error.type"] == "invalid_grant"
    assert telemetry.points("tokenward.refreshes") == []
    (duration,) = telemetry.points("tokenward.refresh.duration")
    assert duration.attributes["error.type"] == "invalid_grant"


def test_each_refresh_is_its_own_span(
    manager: TokenManager, tokenward_emulator: EmulatorServer, telemetry: Telemetry
) -> None:
    first = manager.refresh()
    second = manager.refresh()
    outcomes = [dict(s.attributes or {})["tokenward.outcome"] for s in telemetry.finished()]
    assert outcomes == ["obtained", "refreshed"]
    versions = [dict(s.attributes or {})["tokenward.token.version"] for s in telemetry.finished()]
    assert versions == [first.version, second.version]
    (refreshes, renewed) = sorted(
        telemetry.points("tokenward.refreshes"), key=lambda p: p.attributes["tokenward.outcome"]
    )
    assert (refreshes.value, renewed.value) == (1, 1)


def test_closing_the_subscription_stops_recording(
    tokenward_emulator: EmulatorServer, manager: TokenManager
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with otel.instrument(tracer_provider=provider):
        manager.refresh()
    manager.refresh()
    assert len(spans.get_finished_spans()) == 1


def test_an_adoption_ends_only_a_refresh_that_had_a_token(telemetry: Telemetry) -> None:
    """A flow started without a token that finds a fresh one in the store ends silently; a
    later adoption (on invalidate) must not become that flow's span."""
    from tokenward import events

    events.emit("token.requested", "api", version=None, force=False)
    events.emit("token.adopted", "api", fingerprint="f" * 12, version=2)
    assert telemetry.finished() == []
    events.emit("token.requested", "api", version=2, force=True)
    events.emit("token.adopted", "api", fingerprint="e" * 12, version=3)
    (span,) = telemetry.finished()
    assert dict(span.attributes or {})["tokenward.outcome"] == "adopted"
    assert telemetry.points("tokenward.refreshes") == []  # another process's refresh
