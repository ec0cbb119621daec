"""The relay service: the one object SMTP, the API, workers and jobs call into."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.admin_token import configured_admin_token, generated_admin_token
from daemon.config import Config
from daemon.core.maintenance import MaintenanceState
from daemon.core.message import NewMessage
from daemon.engagement import Engagement
from daemon.metrics import RelayMetrics
from daemon.providers.health import ProviderHealth
from daemon.store import queue
from daemon.store.committer import Committer, Reader
from daemon.store.engine import StoreError
from daemon.store.models import utcnow
from daemon.store.tenancy import Bucket
from daemon.tenancy import IdempotencyClaim, Tenancy

log = logging.getLogger("relayd")


class NotAccepting(Exception):
    """The daemon is shutting down and takes no new mail."""


class MaintenanceMode(NotAccepting):
    """Maintenance mode is on: no new mail until an operator turns it off."""

    def __init__(self, state: MaintenanceState) -> None:
        super().__init__(state.message)
        self.state = state


def resolve_admin_token(config: Config) -> str:
    """The admin token from config, its file, or one generated once into data_dir (0600).

    Never an empty one (daemon.admin_token): a blank ``auth.admin_token`` or an empty,
    missing or unreadable ``auth.admin_token_file`` raises ConfigError naming the key;
    ``data_dir/admin.token`` found readable by others is made 0600, found empty it is
    generated anew (both with a warning).
    """
    configured = configured_admin_token(config)
    if configured is not None:
        return configured[0]
    return generated_admin_token(config)


class RelayService:
    """Owns the store (group committer and readers) and the signal that wakes delivery."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.engine = engine
        self.clock = clock
        self.committer = Committer(engine)
        self.reader = Reader(engine)
        self.admin_token = resolve_admin_token(config)
        self.accepting = True
        self.started_at = clock()
        self.metrics = RelayMetrics()
        # Runtime state of the admin API (daemon.overrides, api.maintenance); the
        # Server restores both from the database at start-up.
        self.base_config = config
        self.runtime_layer: dict[str, Any] = {}
        self._maintenance = MaintenanceState()
        # Called after the config or maintenance state changes (SMTP worker processes follow).
        self.observers: list[Callable[[], None]] = []
        # Set by the Server: serves a config's TLS pair to new handshakes (see
        # Server._reload_tls); None when the API runs without SMTP listeners.
        self.reload_tls: Callable[[Config], str | None] | None = None
        self._wake: asyncio.Event | None = None
        self.tenancy = Tenancy(self)
        self.engagement = Engagement(self)
        # Breakers, rate limits and health checks of the providers (the dispatcher attaches them).
        self.providers_state = ProviderHealth(
            lambda: self.config, self.committer, self.reader, clock, wake=self._wake_workers
        )

    async def start(self, wake: asyncio.Event | None = None) -> None:
        """Start the group committer; ``wake`` replaces the delivery wake-up event."""
        self._wake = wake if wake is not None else asyncio.Event()
        await self.committer.start()

    @property
    def maintenance(self) -> MaintenanceState:
        return self._maintenance

    @maintenance.setter
    def maintenance(self, state: MaintenanceState) -> None:
        self._maintenance = state
        self._changed()

    def _changed(self) -> None:
        for observer in self.observers:
            observer()

    def _wake_workers(self) -> None:
        if self._wake is not None:
            self._wake.set()

    @property
    def wake(self) -> asyncio.Event:
        """Set whenever new mail is committed, so idle workers claim it at once."""
        assert self._wake is not None, "service not started"
        return self._wake

    def reconfigure(self, config: Config) -> None:
        """Apply a new Config (SIGHUP, runtime changes) to what reads it live."""
        self.config = config
        self._changed()

    async def enqueue(
        self,
        message: NewMessage,
        idempotency: IdempotencyClaim | None = None,
        extra_quotas: Sequence[tuple[str, Bucket]] = (),
    ) -> str:
        """Store a message durably; returns its id only once the commit is on disk.

        Raises QuotaExceeded past a daily quota (or one of ``extra_quotas``) and
        IdempotentReplay for a reused key.
        """
        if not self.accepting:
            raise NotAccepting()
        if self.maintenance.enabled:
            raise MaintenanceMode(self.maintenance)
        # Quotas, the idempotency key and the insert commit together (daemon.tenancy).
        await self.tenancy.admit(message, idempotency, extra_quotas)
        self.metrics.message_accepted(message.source, message.workspace_id)
        return message.id

    async def cancel(self, message_id: str, workspace_id: str | None = None) -> bool:
        now = self.clock()
        return await self.committer.run(lambda c: queue.cancel(c, message_id, now, workspace_id))

    async def retry(
        self, message_id: str, workspace_id: str | None = None
    ) -> dict[str, Any] | None:
        now = self.clock()
        result = await self.committer.run(lambda c: queue.retry(c, message_id, now, workspace_id))
        if result is not None and self._wake is not None:
            self._wake.set()
        return result

    async def count_by_status(self, workspace_id: str | None = None) -> dict[str, int]:
        return await self.reader.run(lambda c: queue.count_by_status(c, workspace_id))

    async def ping(self) -> bool:
        """True when the database answers, and writes do not fail for want of it (a full
        disk or a read-only file leave SQLite readable, not writable)."""
        if self.committer.failing:
            return False
        try:
            await self.reader.run(lambda c: c.execute(sa.text("SELECT 1")).scalar())
            return True
        except StoreError:
            return False

    def lease(self) -> timedelta:
        return timedelta(seconds=self.config.queue.lease.seconds)

    async def close(self) -> None:
        self.accepting = False
        await self.committer.close()
        self.reader.close()
