"""The live health of every provider: circuit breakers, send budgets and health checks.

``RelayService.providers_state`` holds one :class:`ProviderHealth`. The delivery
workers ask it before each provider call (:meth:`admit`) and tell it the result
(:meth:`record`); the scheduled job and ``POST /api/admin/providers/{id}/health-check``
run :meth:`check`. The policy itself (breaker transitions, rate-limit windows) is
pure and lives in ``daemon.core.breaker`` and ``daemon.core.throttle``; this
object only keeps one of each per provider and feeds them the clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from daemon.config import Config
from daemon.core import routing
from daemon.core.breaker import CLOSED, DOWN, PROBE, WAIT, Breaker, BreakerPolicy
from daemon.core.retry import PERMANENT, SENT
from daemon.core.throttle import Throttle
from daemon.providers.base import HealthResult, Provider
from daemon.store import providers as store
from daemon.store.committer import Committer, Reader
from daemon.store.engine import FailureLog
from daemon.store.models import utcnow

log = logging.getLogger("relayd.providers")

BREAKER_OPEN = "circuit open"


@dataclass(frozen=True)
class Admission:
    """Whether a provider may take a message now; if not, why and for how long."""

    allowed: bool
    probe: bool = False
    reason: str = ""
    retry_in: float = 0.0


@dataclass(frozen=True)
class CheckRecord:
    """The last health check of a provider."""

    at: datetime
    healthy: bool
    latency_ms: int
    detail: str = ""


ADMITTED = Admission(True)
ADMITTED_AS_PROBE = Admission(True, probe=True)


class ProviderHealth:
    """Breaker, throttle and last health check per provider id, for one daemon."""

    def __init__(
        self,
        config: Callable[[], Config],
        committer: Committer,
        reader: Reader,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._wake = wake  # tells the delivery workers that messages became due
        self._committer = committer
        self._reader = reader
        self._clock = clock
        self._monotonic = monotonic
        self.providers: Mapping[str, Provider] = {}
        self.attached = False  # no delivery workers in this process (an API-only test)
        self._breakers: dict[str, Breaker] = {}
        self._throttles: dict[str, Throttle] = {}
        self._checks: dict[str, CheckRecord] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._store_failures = FailureLog(log, "storing provider health checks")
        # The breaker policy of the last ``[health]`` section seen (rebuilt when it changes).
        self._policy_of: object = None
        self._policy = BreakerPolicy()
        # The current UTC day (from ``clock``): [start, end) and its ISO date.
        self._day_start: datetime | None = None
        self._day_end: datetime | None = None
        self._day_iso = ""

    # -- set-up ----------------------------------------------------------------------

    async def attach(self, providers: Mapping[str, Provider]) -> None:
        """Take the running providers; restore today's send counts and the last checks."""
        self.providers = providers
        self.attached = True
        try:
            figures = await self._reader.run(lambda c: store.read_figures(c, list(providers)))
        except Exception as exc:  # a fresh start simply begins with empty counters
            log.warning("could not read provider figures: %s", exc)
            figures = {}
        today = self._day()
        for pid, f in figures.items():
            if f.day == today:
                self._throttles[pid] = Throttle(today, f.day_count)
            if f.last_check_at is not None and f.last_check_ok is not None:
                self._checks[pid] = CheckRecord(
                    f.last_check_at,
                    f.last_check_ok,
                    f.last_check_latency_ms or 0,
                    f.last_check_detail,
                )

    @property
    def policy(self) -> BreakerPolicy:
        h = self._config().health
        if h is not self._policy_of:
            self._policy = BreakerPolicy(h.degraded_after, h.down_after, h.cooldown.seconds)
            self._policy_of = h
        return self._policy

    def _today(self, now: datetime) -> str:
        """The ISO date of ``now``; the day's bounds are kept until ``now`` leaves them."""
        start, end = self._day_start, self._day_end
        if start is None or end is None or not start <= now < end:
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            self._day_start, self._day_end = start, start + timedelta(days=1)
            self._day_iso = now.date().isoformat()
        return self._day_iso

    def _day(self) -> str:
        return self._today(self._clock())

    def _breaker(self, pid: str) -> Breaker:
        return self._breakers.get(pid) or CLOSED

    def _set(self, pid: str, breaker: Breaker, detail: str = "") -> None:
        policy = self.policy
        before = self._breaker(pid).status(policy)
        self._breakers[pid] = breaker
        after = breaker.status(policy)
        if before == DOWN and after != DOWN:
            self._release_waiting()
        if after != before:
            log.warning(
                "provider %s is %s (%d consecutive failures)%s",
                pid,
                after,
                breaker.failures,
                f": {detail[:300]}" if detail and after != "healthy" else "",
            )

    def _release_waiting(self) -> None:
        """A provider is back: messages waiting for one need not sit out their wait."""

        async def release() -> None:
            now = self._clock()
            try:
                count = await self._committer.run(lambda c: store.release_waiting(c, now))
            except Exception as exc:  # they go at their wait's end anyway
                log.warning("could not release waiting messages: %s", exc)
                return
            if count:
                log.info("%d waiting message(s) released: a provider is back", count)
            if self._wake is not None:
                self._wake()

        try:
            task = asyncio.get_running_loop().create_task(release())
        except RuntimeError:  # no loop (a synchronous caller): nothing is waiting here
            return
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    # -- routing -----------------------------------------------------------------------

    def admit(self, pid: str) -> Admission:
        """May ``pid`` take one message now? Counts it against the rate limits if so."""
        now = self._monotonic()
        breaker = self._breakers.get(pid) or CLOSED
        policy = self.policy
        door = breaker.admission(now, policy)
        if door == WAIT:
            return Admission(False, reason=BREAKER_OPEN, retry_in=breaker.retry_in(now, policy))
        pc = self._config().providers.get(pid)
        per_day, per_second = (pc.rate_limit, pc.rate_limit_per_second) if pc else (0, 0)
        throttle = self._throttles.get(pid)
        if throttle is None:
            throttle = self._throttles[pid] = Throttle()
        wall = self._clock()
        day = self._today(wall)
        # The time left in the day only matters to a daily limit.
        day_left = (self._day_end - wall).total_seconds() if per_day and self._day_end else 0.0
        verdict = throttle.take(now, day, day_left, per_day, per_second)
        if not verdict.allowed:
            return Admission(False, reason=verdict.limit, retry_in=verdict.retry_in)
        if door == PROBE:
            self._breakers[pid] = breaker.probe_started()
            return ADMITTED_AS_PROBE
        return ADMITTED

    def record(self, pid: str, outcome: str, detail: str = "") -> None:
        """The result of one call: accepted or refused for the message counts as working."""
        if outcome in (SENT, PERMANENT):
            if self._breakers.get(pid) is CLOSED:
                return  # closed and healthy stays so: nothing changes, nothing to log
            self._set(pid, self._breaker(pid).succeeded())
        else:
            self._set(pid, self._breaker(pid).failed(self._monotonic(), self.policy), detail)

    def abandon(self, pid: str) -> None:
        """A probe call ended without a result (the delivery was cancelled)."""
        self._breakers[pid] = self._breaker(pid).probe_abandoned()

    def status(self, pid: str) -> str:
        return self._breaker(pid).status(self.policy)

    def down(self) -> set[str]:
        policy = self.policy
        return {pid for pid, b in self._breakers.items() if b.status(policy) == DOWN}

    def can_deliver(self, workspace_id: str) -> bool:
        """False when every candidate provider of the workspace is down (or there is none)."""
        if not self.attached:
            return True
        return routing.can_deliver(
            self._config().providers.values(), workspace_id, self.down(), self.providers
        )

    def any_up(self) -> bool:
        """Whether some enabled, running provider is not down."""
        down = self.down()
        return any(
            p.enabled and pid in self.providers and pid not in down
            for pid, p in self._config().providers.items()
        )

    def sent_today(self, pid: str) -> int:
        throttle = self._throttles.get(pid)
        return throttle.day_count if throttle is not None and throttle.day == self._day() else 0

    # -- health checks -----------------------------------------------------------------

    def last_check(self, pid: str) -> CheckRecord | None:
        return self._checks.get(pid)

    async def check(self, pid: str) -> CheckRecord:
        """Run the provider's health check now, feed the breaker, store the result."""
        provider = self.providers[pid]
        timeout = self._config().health.timeout.seconds
        started = self._monotonic()
        try:
            result = await asyncio.wait_for(provider.check(), timeout)
        except TimeoutError:
            elapsed = int((self._monotonic() - started) * 1000)
            result = HealthResult(False, elapsed, f"no answer within {timeout:g}s")
        except Exception as exc:  # a check must never take the scheduler down
            elapsed = int((self._monotonic() - started) * 1000)
            result = HealthResult(False, elapsed, f"{type(exc).__name__}: {exc}")
        if result.healthy:
            self._set(pid, self._breaker(pid).succeeded())
        else:
            self._set(pid, self._breaker(pid).failed(self._monotonic(), self.policy), result.detail)
        record = CheckRecord(self._clock(), result.healthy, result.latency_ms, result.detail)
        self._checks[pid] = record
        try:
            await self._committer.run(
                lambda c: store.record_check(
                    c, pid, record.at, record.healthy, record.latency_ms, record.detail
                )
            )
        except Exception as exc:
            self._store_failures.failed(exc)
        else:
            self._store_failures.worked()
        return record

    async def check_all(self, only_enabled: bool = True) -> dict[str, CheckRecord]:
        """Check every running provider (enabled ones only, by default) concurrently."""
        configured = self._config().providers
        ids = [
            pid
            for pid in self.providers
            if not only_enabled or (pid in configured and configured[pid].enabled)
        ]
        results = await asyncio.gather(*(self.check(pid) for pid in ids))
        return dict(zip(ids, results, strict=True))

    # -- reporting ---------------------------------------------------------------------

    def overlay(self, block: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """The ``providers`` block of GET /api/stats with each status from the breaker."""
        out = {pid: dict(figures) for pid, figures in block.items()}
        for pid in self.providers:
            out.setdefault(pid, {"success_rate": None, "avg_latency_ms": None})
            out[pid]["status"] = self.status(pid)
        return out

    def statuses(self, ids: Iterable[str]) -> dict[str, str]:
        return {pid: self.status(pid) for pid in ids}
