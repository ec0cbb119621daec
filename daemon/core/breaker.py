"""The circuit breaker of one provider: healthy -> degraded -> down (open) -> probe -> healthy.

Pure and immutable: every transition returns a new :class:`Breaker`; time is a
float of seconds (a monotonic clock) passed in.

- Each failure (a temporary error, a timeout, refused credentials, a failed health
  check) adds one to the consecutive count; any success resets it (closed).
- ``degraded_after`` consecutive failures: ``degraded`` (still routed).
- ``down_after`` consecutive failures: ``down``, the circuit opens: routing skips
  the provider for ``cooldown`` seconds.
- After the cool-down one message may go through as a probe (half-open); its
  success closes the circuit, its failure opens it for another cool-down.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

HEALTHY = "healthy"
DEGRADED = "degraded"
DOWN = "down"
STATUSES = (HEALTHY, DEGRADED, DOWN)

# What the breaker lets through right now.
SEND = "send"  # closed (healthy or degraded)
PROBE = "probe"  # open, cool-down over, no probe in flight: this one call may try
WAIT = "wait"  # open: skip this provider


@dataclass(frozen=True)
class BreakerPolicy:
    """Thresholds from ``[health]``."""

    degraded_after: int = 2
    down_after: int = 5
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if self.degraded_after < 1 or self.down_after < 1:
            raise ValueError("failure thresholds must be at least 1")
        if self.cooldown < 0:
            raise ValueError("cooldown cannot be negative")


@dataclass(frozen=True)
class Breaker:
    """The state of one provider's circuit."""

    failures: int = 0  # consecutive
    opened_at: float | None = None  # when the circuit last opened
    probing: bool = False  # a probe call is in flight

    def status(self, policy: BreakerPolicy) -> str:
        if self.opened_at is not None:
            return DOWN
        if self.failures >= min(policy.degraded_after, policy.down_after):
            return DEGRADED
        return HEALTHY

    def admission(self, now: float, policy: BreakerPolicy) -> str:
        """SEND when closed; when open, PROBE once the cool-down is over, else WAIT."""
        if self.opened_at is None:
            return SEND
        if self.probing or now - self.opened_at < policy.cooldown:
            return WAIT
        return PROBE

    def retry_in(self, now: float, policy: BreakerPolicy) -> float:
        """Seconds until an open circuit may be probed (0 when closed or already due)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + policy.cooldown - now)

    def probe_started(self) -> Breaker:
        return replace(self, probing=True)

    def probe_abandoned(self) -> Breaker:
        """A probe that ended without a result (cancelled): let the next one try."""
        return replace(self, probing=False)

    def succeeded(self) -> Breaker:
        return CLOSED

    def failed(self, now: float, policy: BreakerPolicy) -> Breaker:
        failures = self.failures + 1
        if self.opened_at is not None or failures >= policy.down_after:
            # Opening again after a failed probe restarts the cool-down.
            return Breaker(failures, now, False)
        return Breaker(failures)


# A closed circuit with no failure: the state of nearly every provider, shared (immutable).
CLOSED = Breaker()
