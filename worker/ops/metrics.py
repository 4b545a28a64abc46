"""Prometheus metrics of one worker, in a registry of its own.

Labels never carry a token or anything derived from one: queues and registered action names
only (an action a message names but nobody registered is counted as ``unregistered``, so that
publishers cannot grow the label space), outcomes and reason codes from closed sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

UNREGISTERED = "unregistered"
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
_ACTION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)


class Metrics:
    """Counters and histograms the consumer updates; gauges read on scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "warden_decisions",
            "Messages decided, by queue, action, outcome (allowed, denied, deferred) and reason.",
            ("queue", "action", "outcome", "reason"),
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "warden_decision_seconds",
            "Time to decide a message (checks only, not the action).",
            ("queue",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.action_seconds = Histogram(
            "warden_action_seconds",
            "Time an action ran, by outcome (done, retry, failed, rejected).",
            ("queue", "action", "outcome"),
            buckets=_ACTION_BUCKETS,
            registry=self.registry,
        )
        self.dead_letter_failures = Counter(
            "warden_dead_letter_publish_failures",
            "Dead letters the broker did not confirm (the original went back to its queue).",
            ("queue",),
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def decided(self, queue: str, action: str, outcome: str, reason: str, seconds: float) -> None:
        """Count one decision and its latency (label children are looked up once and kept)."""
        key = (queue, action, outcome, reason)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.decisions.labels(queue, action, outcome, reason),
                self.decision_seconds.labels(queue),
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch(self, collector: Collector) -> None:
        """Add a collector that reads live state on every scrape."""
        self.registry.register(collector)


class StateCollector(Collector):
    """Gauges and counters read from the worker's parts at scrape time."""

    def __init__(
        self,
        *,
        in_flight: Callable[[], int],
        threads_busy: Callable[[], int],
        revocation_entries: Callable[[], int],
        revocation_faults: Callable[[], int],
        revocations_untrusted: Callable[[], int],
        jwks: Callable[[], Iterator[tuple[str, int, int]]],
        publishing_blocked: Callable[[], int],
        waiting_on_publishing: Callable[[], int],
    ) -> None:
        self._in_flight = in_flight
        self._threads_busy = threads_busy
        self._revocations = revocation_entries
        self._faults = revocation_faults
        self._untrusted = revocations_untrusted
        self._jwks = jwks
        self._blocked = publishing_blocked
        self._waiting = waiting_on_publishing

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Current values."""
        yield GaugeMetricFamily(
            "warden_in_flight", "Messages being decided or run now.", value=self._in_flight()
        )
        yield GaugeMetricFamily(
            "warden_action_threads_busy",
            "Threads running a blocking action now (of WARDEN_ACTION_THREADS).",
            value=self._threads_busy(),
        )
        yield GaugeMetricFamily(
            "warden_publishing_blocked",
            "1 while the broker blocks the publishing connection (a resource alarm), else 0.",
            value=self._blocked(),
        )
        yield GaugeMetricFamily(
            "warden_waiting_on_publishing",
            "Messages whose dead letter or copy is being published now (all of them wait, "
            "unacked, while publishing is blocked).",
            value=self._waiting(),
        )
        yield GaugeMetricFamily(
            "warden_revocation_entries",
            "Revocation entries held (those not yet expired).",
            value=self._revocations(),
        )
        yield CounterMetricFamily(
            "warden_revocation_faults",
            "Revocation events warden failed to apply (each stops decisions until re-applied).",
            value=self._faults(),
        )
        yield CounterMetricFamily(
            "warden_revocations_untrusted",
            "Revocation events ignored because no trusted broker user wrote them.",
            value=self._untrusted(),
        )
        fetches = CounterMetricFamily(
            "warden_jwks_fetches",
            "JWKS fetches, by issuer and result.",
            labels=("issuer", "result"),
        )
        for issuer, attempts, failures in self._jwks():
            fetches.add_metric((issuer, "ok"), attempts - failures)
            fetches.add_metric((issuer, "failed"), failures)
        yield fetches
