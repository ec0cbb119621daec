"""APScheduler wiring: each job is one call into the service, run on the daemon's loop."""

from __future__ import annotations

import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from daemon.service import RelayService
from daemon.store import accounts, queue

log = logging.getLogger("relayd.jobs")


class Jobs:
    """The daemon's periodic work."""

    def __init__(self, service: RelayService) -> None:
        self._service = service
        self._scheduler = AsyncIOScheduler(timezone="UTC")

    def start(self) -> None:
        self._scheduler.add_job(
            self.reap_leases,
            "interval",
            seconds=max(5.0, self._service.config.queue.lease.seconds / 4),
            id="reap-leases",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.add_job(
            self._service.tenancy.purge,
            "interval",
            hours=1,
            id="purge-usage",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.add_job(
            self.expire_addresses,
            "interval",
            seconds=self._service.config.accounts.expiry_interval.seconds,
            id="expire-addresses",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.add_job(
            self.check_providers,
            "interval",
            seconds=self._service.config.health.interval.seconds,
            id="provider-health",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()

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
