"""APScheduler wiring: each job is one call into the service, run on the daemon's loop.

A job that fails because the database is unavailable says so once (and once when it
works again), not with a traceback every interval; it runs again at its next time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from daemon.service import RelayService
from daemon.store import accounts, queue
from daemon.store.engine import FailureLog, StoreError

log = logging.getLogger("relayd.jobs")


class Jobs:
    """The daemon's periodic work."""

    def __init__(self, service: RelayService) -> None:
        self._service = service
        self._scheduler = AsyncIOScheduler(timezone="UTC")

    def start(self) -> None:
        self._scheduler.add_job(
            self._quiet(self.reap_leases),
            "interval",
            seconds=max(5.0, self._service.config.queue.lease.seconds / 4),
            id="reap-leases",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.add_job(
            self._quiet(self._service.tenancy.purge),
            "interval",
            hours=1,
            id="purge-usage",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.add_job(
            self._quiet(self.expire_addresses),
            "interval",
            seconds=self._service.config.accounts.expiry_interval.seconds,
            id="expire-addresses",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.add_job(
            self._quiet(self.check_providers),
            "interval",
            seconds=self._service.config.health.interval.seconds,
            id="provider-health",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()

    @staticmethod
    def _quiet(job: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """``job`` logging database failures as a :class:`FailureLog` (other errors are
        bugs: APScheduler logs them with their traceback)."""
        failures = FailureLog(log, f"job {getattr(job, '__name__', 'job')}")

        @functools.wraps(job)
        async def run() -> Any:
            try:
                result = await job()
            except StoreError as exc:
                failures.failed(exc)
                return None
            failures.worked()
            return result

        return run

    async def reap_leases(self) -> int:
        """Requeue messages whose worker died holding a lease (it expired)."""
        now = self._service.clock()
        count = await self._service.committer.run(lambda c: queue.reap_expired(c, now))
        if count:
            log.warning("requeued %d message(s) whose delivery lease expired", count)
            self._service.wake.set()
        return count

    async def expire_addresses(self) -> int:
        """Turn temporary sender addresses past their expires_at to status expired."""
        now = self._service.clock()
        count = await self._service.committer.run(lambda c: accounts.expire_addresses(c, now))
        if count:
            log.info("%d temporary sender address(es) expired", count)
        return count

    async def check_providers(self) -> int:
        """Health-check every enabled provider; wake the workers when one came back."""
        state = self._service.providers_state
        before = state.down()
        results = await state.check_all()
        if before - state.down():
            self._service.wake.set()
        return sum(1 for r in results.values() if not r.healthy)

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
