"""Prometheus metrics for `/metrics`, by credential.

Why a registry per app (not prometheus-client's global one): tests and embedders may build
several apps in one process; each must count only its own work. Credential state (refresh
count, seconds to expiry, state) is read from the store at scrape time, so every replica
reports the same, cluster-wide numbers; refreshes done and failures seen are counted from this
replica's `tokenward` events (subscribed to, so logging's level never stops them); proxy latency
is this replica's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..events import Event, Subscription, subscribe
from ..stores.base import Store

__all__ = ["BrokerMetrics", "EventCounter"]

#: Events that count as a refresh done, and as a refresh failure.
_DONE = frozenset({"token.refreshed", "token.obtained"})
_FAILED = frozenset({"refresh.failed"})
#: Lease events: a wait on a holder whose liveness cannot be known starts / ends; a provably
#: dead holder's lease is taken over.
_LEASE = frozenset({"lease.holder_silent", "lease.silent_wait_ended", "lease.taken_over"})


class _StoreCollector(Collector):
    """Per-credential gauges read from the store at scrape time (never a secret)."""

    def __init__(self, stores: Callable[[], Mapping[str, tuple[str, Store]]]) -> None:
        self._stores = stores

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "tokenward_token_seconds_to_expiry",
            "Seconds until the stored access token expires (negative: expired).",
            labels=["credential"],
        )
        count = GaugeMetricFamily(
            "tokenward_credential_refresh_count",
            "Refreshes recorded in the store for the credential (all replicas).",
            labels=["credential"],
        )
        reauth = GaugeMetricFamily(
            "tokenward_credential_needs_reauth",
            "1 when the credential needs a person to log in again.",
            labels=["credential"],
        )
        now = time.time()
        for name, (key, store) in self._stores().items():
            try:
                record = store.load(key)
            except Exception:  # a scrape must not fail because one store is down
                continue
            if record is None:
                continue
            if record.expires_at is not None:
                expiry.add_metric([name], record.expires_at - now)
            count.add_metric([name], record.refresh_count)
            reauth.add_metric([name], 1.0 if record.state == "needs_reauth" else 0.0)
        yield expiry
        yield count
        yield reauth


class EventCounter:
    """Counts refresh events (a `tokenward.events` subscriber) by credential, and the lease
    waits on silent holders and takeovers of dead ones (`silent`: waits, seconds waited,
    takeovers). A subscriber, not a log handler: it counts whatever the logger's level."""

    def __init__(
        self,
        done: Counter,
        failed: Counter,
        names: frozenset[str],
        silent: tuple[Counter, Counter, Counter] | None = None,
    ) -> None:
        self._done = done
        self._failed = failed
        self._names = names
        self._silent = silent

    def __call__(self, happened: Event) -> None:
        event, credential = happened.name, happened.credential
        if credential not in self._names:
            return
        if event in _DONE:
            self._done.labels(credential).inc()
        elif event in _FAILED:
            self._failed.labels(credential).inc()
        elif self._silent is not None and event in _LEASE:
            waits, seconds, takeovers = self._silent
            if event == "lease.holder_silent":
                waits.labels(credential).inc()
            elif event == "lease.silent_wait_ended":
                waited = happened.fields.get("waited", 0.0)
                seconds.labels(credential).inc(max(float(waited), 0.0))
            else:
                takeovers.labels(credential).inc()


class BrokerMetrics:
    """The broker's registry and instruments."""

    def __init__(self, stores: Callable[[], Mapping[str, tuple[str, Store]]]) -> None:
        self.registry = CollectorRegistry()
        self._refresh_instruments()
        self._broker_instruments()
        #: Label children by label values, looked up once and reused (`labels()` per request
        #: costs a lock and a tuple check); the keys are configured names and status codes.
        self._requests: dict[tuple[str, int], Counter] = {}
        self._proxy: dict[tuple[str, int], Histogram] = {}
        self.registry.register(_StoreCollector(stores))
        self._counter = EventCounter(
            self.refreshes,
            self.failures,
            frozenset(stores()),
            (self.silent_waits, self.silent_wait_seconds, self.lease_takeovers),
        )
        self._subscription: Subscription | None = None

    def _refresh_instruments(self) -> None:
        """What the refresh events count (fed by `EventCounter`)."""
        self.refreshes = Counter(
            "tokenward_refreshes",
            "Refreshes this replica carried out.",
            ["credential"],
            registry=self.registry,
        )
        self.failures = Counter(
            "tokenward_refresh_failures",
            "Refresh failures this replica saw.",
            ["credential"],
            registry=self.registry,
        )
        self.silent_waits = Counter(
            "tokenward_silent_lease_waits",
            "Waits on a lease holder (or a refresh token in flight) whose liveness cannot be "
            "known: another host, a store without liveness, PostgreSQL through PgBouncer.",
            ["credential"],
            registry=self.registry,
        )
        self.silent_wait_seconds = Counter(
            "tokenward_silent_lease_wait_seconds",
            "Seconds spent in those waits (added when each wait ends).",
            ["credential"],
            registry=self.registry,
        )
        self.lease_takeovers = Counter(
            "tokenward_lease_takeovers",
            "Leases taken over from a provably dead holder.",
            ["credential"],
            registry=self.registry,
        )

    def _broker_instruments(self) -> None:
        """What the broker's own routes count."""
        self.proxy_seconds = Histogram(
            "tokenward_proxy_seconds",
            "Time to the upstream answer's headers, replay included.",
            ["credential", "status"],
            registry=self.registry,
        )
        self.requests = Counter(
            "tokenward_broker_requests",
            "Broker actions by outcome.",
            ["action", "status"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "tokenward_auth_failures",
            "Requests refused by authentication: missing or invalid key, or throttled after "
            "too many failures.",
            ["reason"],
            registry=self.registry,
        )
        self.session_events = Counter(
            "tokenward_session_events",
            "Sessions that expired mid-use, and upstream stops that failed (pending: retried).",
            ["credential", "event"],
            registry=self.registry,
        )

    def request(self, action: str, status: int) -> Counter:
        """The `tokenward_broker_requests` child for (action, status)."""
        child = self._requests.get((action, status))
        if child is None:
            child = self._requests[(action, status)] = self.requests.labels(action, str(status))
        return child

    def auth_failure(self, reason: str) -> None:
        """Count a refused authentication (`missing`, `invalid`, `throttled`)."""
        self.auth_failures.labels(reason).inc()

    def session_event(self, credential: str, event: str) -> Counter:
        """The `tokenward_session_events_total` child (event: expired, stop_pending,
        stop_failed)."""
        return self.session_events.labels(credential, event)

    def proxy_histogram(self, credential: str, status: int) -> Histogram:
        """The `tokenward_proxy_seconds` child for (credential, status)."""
        child = self._proxy.get((credential, status))
        if child is None:
            child = self._proxy[(credential, status)] = self.proxy_seconds.labels(
                credential, str(status)
            )
        return child

    def attach(self) -> None:
        """Start counting events (idempotent)."""
        if self._subscription is None:
            self._subscription = subscribe(self._counter)

    def detach(self) -> None:
        """Stop counting (the broker's shutdown): a stopped app keeps no subscriber alive."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def render(self) -> bytes:
        return generate_latest(self.registry)
