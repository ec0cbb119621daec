"""Live figures of one daemon: Prometheus collectors and a window of recent deliveries.

``RelayService.metrics`` holds one :class:`RelayMetrics`; the SMTP handler, the
service and the dispatcher each make one call into it. Each daemon has its own
``CollectorRegistry`` (never the global one), so several apps in one process
(the tests) do not collide. The processing and provider figures of
``GET /api/stats`` come from the in-memory window of recent deliveries: they
describe this daemon over the last minutes and start empty after a restart.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from daemon.core.message import Outcome

WINDOW_SECONDS = 900.0  # processing times and provider health cover the last 15 minutes
RATE_SECONDS = 60.0  # rate_per_minute counts the last minute
EPS_SECONDS = 5.0  # emails_per_second averages the last few seconds
_MAX_SAMPLES = 200_000  # bounds memory at very high rates (the window then shortens)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FAILED = ("failed", "auth_error")
_PROVIDER_ERRORS = ("temporary", "auth_error")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class RelayMetrics:
    """Counters, histograms and gauges of one daemon, plus its recent deliveries."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter(
            "relay_messages_accepted",
            "Messages accepted into the queue",
            ["source", "workspace"],
            registry=r,
        )
        self.sent = Counter(
            "relay_messages_sent",
            "Messages a provider accepted",
            ["provider", "workspace"],
            registry=r,
        )
        self.failed = Counter(
            "relay_messages_failed",
            "Messages that failed for good",
            ["provider", "workspace"],
            registry=r,
        )
        self.deferred = Counter(
            "relay_messages_deferred",
            "Delivery attempts deferred for a retry",
            ["provider", "workspace"],
            registry=r,
        )
        self.attempts = Counter(
            "relay_delivery_attempts",
            "Provider calls by outcome",
            ["provider", "outcome"],
            registry=r,
        )
        self.smtp_latency = Histogram(
            "relay_smtp_transaction_seconds",
            "From end of DATA to the queued reply",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "relay_delivery_seconds",
            "Time to deliver one message, all attempts",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "relay_queue_depth", "Messages in the queue by status", ["status"], registry=r
        )
        self.in_flight = Gauge(
            "relay_deliveries_in_flight", "Deliveries running in this daemon", registry=r
        )
        self.realtime_clients = Gauge(
            "relay_realtime_clients", "Open /api/stats/realtime streams", registry=r
        )
        self._in_flight: Callable[[], int] = lambda: 0
        self._accepted: dict[tuple[str, str], Counter] = {}  # labelled children of accepted
        self.in_flight.set_function(lambda: self._in_flight())
        # (monotonic time, processing ms, final status) per finished delivery
        self._deliveries: deque[tuple[float, float, str]] = deque(maxlen=_MAX_SAMPLES)
        # (monotonic time, provider, outcome, ms) per provider call
        self._attempts: deque[tuple[float, str, str, int]] = deque(maxlen=_MAX_SAMPLES)

    # -- instrumentation points ---------------------------------------------------

    def message_accepted(self, source: str, workspace_id: str) -> None:
        child = self._accepted.get((source, workspace_id))
        if child is None:  # labels() validates and locks: once per label pair
            child = self._accepted[source, workspace_id] = self.accepted.labels(
                source, workspace_id
            )
        child.inc()

    def smtp_transaction(self, seconds: float) -> None:
        self.smtp_latency.observe(seconds)

    def track_in_flight(self, count: Callable[[], int]) -> None:
        """Where to read how many deliveries are running (the dispatcher registers itself)."""
        self._in_flight = count

    def delivery_finished(self, workspace_id: str, outcome: Outcome, seconds: float) -> None:
        """One claimed message was processed (sent, deferred or failed)."""
        now = self.clock()
        provider = outcome.provider or "none"
        if outcome.status == "sent":
            self.sent.labels(provider, workspace_id).inc()
        elif outcome.status in _FAILED:
            self.failed.labels(provider, workspace_id).inc()
        else:
            self.deferred.labels(provider, workspace_id).inc()
        self.delivery_latency.labels(provider).observe(seconds)
        self._deliveries.append((now, seconds * 1000.0, outcome.status))
        for attempt in outcome.attempts:
            self.attempts.labels(attempt.provider, attempt.outcome).inc()
            self._attempts.append((now, attempt.provider, attempt.outcome, attempt.duration_ms))

    # -- figures ----------------------------------------------------------------------

    @property
    def active_processors(self) -> int:
        return self._in_flight()

    def _recent(self, samples: Iterable[Any], seconds: float) -> list[Any]:
        since = self.clock() - seconds
        return [s for s in samples if s[0] >= since]

    def processing(self) -> dict[str, float]:
        """The ``processing`` block of GET /api/stats."""
        recent = self._recent(self._deliveries, WINDOW_SECONDS)
        last_minute = self.clock() - RATE_SECONDS
        times = sorted(ms for _, ms, _ in recent)
        return {
            "rate_per_minute": sum(1 for t, _, _ in recent if t >= last_minute),
            "avg_processing_time_ms": round(sum(times) / len(times)) if times else 0,
            "p95_processing_time_ms": round(percentile(times, 0.95)),
            "p99_processing_time_ms": round(percentile(times, 0.99)),
        }

    def emails_per_second(self) -> float:
        """Messages sent per second over the last few seconds."""
        recent = self._recent(self._deliveries, EPS_SECONDS)
        return round(sum(1 for _, _, status in recent if status == "sent") / EPS_SECONDS, 2)

    def providers(self, configured: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The ``providers`` block: health, success rate and latency from recent calls."""
        seen: dict[str, list[tuple[str, int]]] = {pid: [] for pid in configured}
        for _, provider, outcome, ms in self._recent(self._attempts, WINDOW_SECONDS):
            if provider != "none":
                seen.setdefault(provider, []).append((outcome, ms))
        return {pid: _health(calls) for pid, calls in seen.items()}

    def set_queue_depth(self, counts: Mapping[str, int]) -> None:
        for status, n in counts.items():
            self.queue_depth.labels(status).set(n)

    def exposition(self) -> bytes:
        """The Prometheus text format of every collector."""
        return generate_latest(self.registry)


def _health(calls: list[tuple[str, int]]) -> dict[str, Any]:
    """healthy / degraded / down from the share of calls that failed on the provider's side."""
    if not calls:
        return {"status": "unknown", "success_rate": None, "avg_latency_ms": None}
    errors = sum(1 for outcome, _ in calls if outcome in _PROVIDER_ERRORS)
    share = errors / len(calls)
    status = "healthy" if share <= 0.1 else "degraded" if share < 0.5 else "down"
    return {
        "status": status,
        "success_rate": round(sum(1 for o, _ in calls if o == "sent") / len(calls), 4),
        "avg_latency_ms": round(sum(ms for _, ms in calls) / len(calls)),
    }
