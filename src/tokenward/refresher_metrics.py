"""A running refresher's counters, as Prometheus metrics and as a one-line status.

`tokenward refresher --metrics-port N` serves the metrics below on `/metrics`; on a terminal it
also keeps a status line up to date. Both read the refreshers' own counters (`RefresherStats`,
`Lateness`) when asked, so a refresher does no metrics work per refresh.

    tokenward_refresher_claimed_total                 keys claimed from the due-queue
    tokenward_refresher_outcomes_total{outcome=...}   refreshed, rescheduled, skipped, failed,
                                                      needs_reauth
    tokenward_refresher_store_errors_total            store operations that failed
    tokenward_refresher_in_flight                     refreshes running now
    tokenward_refresher_lateness_seconds              how long after its due time a claimed key
                                                      was picked up (histogram)

`prometheus-client` comes with the `broker` extra (or install it alone); the status line needs
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .refresher import LATENESS_BUCKETS, Lateness, RefresherStats, add_up

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["StatusLine", "serve_metrics"]

OUTCOMES = ("refreshed", "rescheduled", "skipped", "failed", "needs_reauth")


class Counted(Protocol):
    """What a refresher shows: `Refresher` and `AsyncRefresher` both do."""

    stats: RefresherStats
    lateness: Lateness

    @property
    def in_flight(self) -> int: ...


def totals(refreshers: Iterable[Counted]) -> dict[str, int]:
    """The refreshers' counters added up."""
    return add_up(refresher.stats for refresher in refreshers)


def _collector(refreshers: Sequence[Counted]) -> Collector:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    class RefresherCollector:
        def collect(self) -> Iterator[Any]:
            summed = totals(refreshers)
            yield CounterMetricFamily(
                "tokenward_refresher_claimed",
                "Keys claimed from the due-queue.",
                value=summed.get("claimed", 0),
            )
            outcomes = CounterMetricFamily(
                "tokenward_refresher_outcomes",
                "What became of each claimed key.",
                labels=["outcome"],
            )
            for outcome in OUTCOMES:
                outcomes.add_metric([outcome], summed.get(outcome, 0))
            yield outcomes
            yield CounterMetricFamily(
                "tokenward_refresher_store_errors",
                "Store operations that failed.",
                value=summed.get("store_errors", 0),
            )
            yield GaugeMetricFamily(
                "tokenward_refresher_in_flight",
                "Refreshes running now.",
                value=sum(refresher.in_flight for refresher in refreshers),
            )
            yield _lateness(refreshers, HistogramMetricFamily)

    return RefresherCollector()


def _lateness(refreshers: Sequence[Counted], family: Any) -> Any:
    counts = [0] * len(LATENESS_BUCKETS)
    total = 0.0
    for refresher in refreshers:
        counts = [a + b for a, b in zip(counts, refresher.lateness.counts, strict=True)]
        total += refresher.lateness.total
    cumulative, buckets = 0, []
    for bound, count in zip(LATENESS_BUCKETS, counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
    return family(
        "tokenward_refresher_lateness_seconds",
        "How long after its due time a claimed key was picked up.",
        buckets=buckets,
        sum_value=total,
    )


def serve_metrics(refreshers: Sequence[Counted], port: int, address: str = "127.0.0.1") -> None:
    """Serve `/metrics` for `refreshers` on `address:port` (a daemon thread)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise RuntimeError(
            "refresher metrics need prometheus-client: pip install 'tokenward[broker]' "
            "(or pip install prometheus-client)"
        ) from None
    registry = CollectorRegistry()
    registry.register(_collector(refreshers))
    start_http_server(port, addr=address, registry=registry)


@dataclass
class StatusLine:
    """A one-line summary of the refreshers, with the refresh rate since the last line."""

    refreshers: Sequence[Counted]
    _last: tuple[float, int] | None = field(default=None, repr=False)

    def render(self) -> str:
        summed = totals(self.refreshers)
        now, done = time.monotonic(), summed.get("refreshed", 0)
        rate = ""
        if self._last is not None and now > self._last[0]:
            rate = f" ({(done - self._last[1]) / (now - self._last[0]):.0f}/s)"
        self._last = (now, done)
        in_flight = sum(refresher.in_flight for refresher in self.refreshers)
        late = sum(sum(r.lateness.counts[3:]) for r in self.refreshers)  # over a second
        return (
            f"refreshed {done}{rate}, in flight {in_flight}, failed {summed.get('failed', 0)}, "
            f"needs re-auth {summed.get('needs_reauth', 0)}, store errors "
            f"{summed.get('store_errors', 0)}, picked up >1 s late {late}"
        )
