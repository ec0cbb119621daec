"""Tenancy at run time: API keys, workspaces, request limits and daily sending quotas.

Shared by the HTTP API and the SMTP handler. What is cached, and why it is safe:

- a *valid* key lookup for :data:`KEY_CACHE_SECONDS` (a revocation through this
  daemon drops it at once; another daemon sees it within that second);
- a workspace row (plan, quota overrides) for :data:`WORKSPACE_CACHE_SECONDS`;
- the burst window (requests within one second) lives in memory, per daemon;
- an admin caller's rate-limit headers for the rest of the clock second, and a
  quota look that found room (SMTP RCPT) for QUOTA_LOOK_SECONDS: admission
  itself (daemon.store.admission) always counts exactly;
- requests that miss an expired entry together share one lookup.

Hourly, daily and per-minute endpoint request counters and the daily quotas are
counted in the database with one conditional upsert per window
(:mod:`daemon.store.tenancy`), all windows of a request in one transaction, so
they hold exactly across daemons sharing a PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Connection

from daemon.core import plans
from daemon.core.message import NewMessage
from daemon.core.tenancy import (
    KEY_PREFIX,
    IdempotencyClaim,
    IdempotentReplay,
    KeyIdentity,
    QuotaExceeded,
    RateDecision,
    WorkspaceInfo,
    hash_key,
)
from daemon.store import admission, queue
from daemon.store import tenancy as store
from daemon.store.tenancy import Bucket

if TYPE_CHECKING:
    from daemon.service import RelayService

__all__ = [
    "KEY_PREFIX",
    "IdempotencyClaim",
    "IdempotentReplay",
    "KeyIdentity",
    "QuotaExceeded",
    "RateDecision",
    "Tenancy",
    "WorkspaceInfo",
    "hash_key",
]

T = TypeVar("T")

KEY_CACHE_SECONDS = 1.0
WORKSPACE_CACHE_SECONDS = 2.0
REPORT_CACHE_SECONDS = 1.0
QUOTA_LOOK_SECONDS = 1.0
TOUCH_EVERY = timedelta(minutes=1)
IDEMPOTENCY_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class BurstUse:
    """The burst window after a request, and whether it refused the request."""

    use: plans.WindowUse
    refused: bool


def _workspace_info(row: Any) -> WorkspaceInfo:
    return WorkspaceInfo(
        row.id, row.plan, row.custom_limits, row.daily_quota, row.user_daily_quota, True
    )


class Tenancy:
    """Key verification, workspace lookups, request counting and quota admission."""

    def __init__(self, service: RelayService, monotonic: Callable[[], float] = time.monotonic):
        self._service = service
        self._monotonic = monotonic
        self._keys: dict[str, tuple[float, KeyIdentity]] = {}
        self._workspaces: dict[str, tuple[float, WorkspaceInfo]] = {}
        self._burst: dict[str, tuple[int, int]] = {}  # workspace -> (second, requests in it)
        self._seen: dict[str, tuple[datetime, int]] = {}  # counter key -> (window, count)
        self._reports: dict[str, tuple[float, tuple[int, ...]]] = {}
        self._report_headers: dict[tuple[str, str, str], tuple[int, float, RateDecision]] = {}
        self._roomy: dict[str, float] = {}  # quota windows last seen with room (quota_left)
        self._loading: dict[tuple[str, str], asyncio.Future[Any]] = {}  # lookups in flight
        # Today's quota windows by everything they are made of (they are immutable).
        self._quota_buckets: dict[tuple[Any, ...], tuple[tuple[str, Bucket], ...]] = {}

    # Keys ------------------------------------------------------------------

    async def identify_key(self, token: str) -> KeyIdentity | None:
        """The live key ``token`` is, or None; a SHA-256 lookup, so timing reveals nothing."""
        return await self.identify_digest(hash_key(token))

    async def identify_digest(self, digest: str) -> KeyIdentity | None:
        """The live key whose :func:`hash_key` is ``digest``, or None (revoked, unknown).

        An SMTP session that authenticated with a key asks again at each MAIL, so a
        revocation ends what an open connection may send within KEY_CACHE_SECONDS.
        """
        now = self._monotonic()
        cached = self._keys.get(digest)
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        row = await self._service.reader.run(lambda c: store.key_by_hash(c, digest))
        if row is None:
            self._keys.pop(digest, None)
            return None
        identity = KeyIdentity(row.id, row.workspace_id, row.user_id, row.last_used_at)
        if len(self._keys) > 10000:
            self._keys.clear()
        self._keys[digest] = (now, identity)
        return identity

    def forget_keys(self) -> None:
        """Drop cached key lookups (after a revocation)."""
        self._keys.clear()

    # Workspaces ------------------------------------------------------------

    def _default(self, workspace_id: str) -> WorkspaceInfo:
        plan = self._service.config.rate_limits.default_plan
        return WorkspaceInfo(workspace_id, plan, None, None, None, exists=False)

    async def workspace(self, workspace_id: str) -> WorkspaceInfo:
        """The workspace's settings; one that does not exist yet has the default plan."""
        now = self._monotonic()
        cached = self._workspaces.get(workspace_id)
        if cached is not None and now - cached[0] < WORKSPACE_CACHE_SECONDS:
            return cached[1]
        row = await self._once(
            ("workspace", workspace_id),
            lambda: self._service.reader.run(lambda c: store.get_workspace(c, workspace_id)),
        )
        info = _workspace_info(row) if row is not None else self._default(workspace_id)
        if len(self._workspaces) > 10000:
            self._workspaces.clear()
        self._workspaces[workspace_id] = (now, info)
        return info

    async def ensure_workspace(self, workspace_id: str) -> WorkspaceInfo:
        """The workspace, brought into being with the default plan on first use."""
        info = await self.workspace(workspace_id)
        if info.exists:
            return info
        plan = self._service.config.rate_limits.default_plan
        now = self._service.clock()
        row = await self._service.committer.run(
            lambda c: store.ensure_workspace(c, workspace_id, plan, now)
        )
        info = _workspace_info(row)
        self._workspaces[workspace_id] = (self._monotonic(), info)
        return info

    def forget_workspace(self, workspace_id: str) -> None:
        self._workspaces.pop(workspace_id, None)
        self._loading.pop(("workspace", workspace_id), None)  # later callers read afresh

    async def _once(self, key: tuple[str, str], load: Callable[[], Awaitable[T]]) -> T:
        """``await load()``, shared by the callers that ask for ``key`` while it runs.

        When a cached lookup expires, every request in flight misses at once:
        one query answers them all.
        """
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._loading[key] = task
            task.add_done_callback(functools.partial(self._loaded, key))
        return await asyncio.shield(task)

    def _loaded(self, key: tuple[str, str], task: asyncio.Future[Any]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled():
            task.exception()  # retrieved: each caller raises it

    # Request limits --------------------------------------------------------

    def _request_buckets(
        self, workspace: WorkspaceInfo, method: str, path: str, now: datetime
    ) -> list[tuple[str, int, Bucket]]:
        tier = plans.tier_for(workspace.plan, workspace.custom_limits)
        windows: list[tuple[str, int, int | None, str]] = [
            ("hour", plans.HOUR, tier.per_hour, f"req:{workspace.id}:h"),
            ("day", plans.DAY, tier.per_day, f"req:{workspace.id}:d"),
        ]
        endpoint = plans.endpoint_limit(method, path)
        if endpoint is not None:
            windows.append(
                (
                    endpoint.name,
                    plans.MINUTE,
                    endpoint.per_minute,
                    f"req:{workspace.id}:{endpoint.name}",
                )
            )
        return [
            (
                name,
                seconds,
                Bucket(
                    key,
                    plans.window_start(now, seconds),
                    plans.window_reset(now, seconds) + timedelta(hours=1),
                    limit,
                ),
            )
            for name, seconds, limit, key in windows
        ]

    @staticmethod
    def _uses(
        buckets: list[tuple[str, int, Bucket]], counts: Sequence[int], now: datetime
    ) -> list[plans.WindowUse]:
        return [
            plans.WindowUse(name, seconds, bucket.limit, used, plans.window_reset(now, seconds))
            for (name, seconds, bucket), used in zip(buckets, counts, strict=True)
            if bucket.limit is not None
        ]

    def _burst_use(self, workspace: WorkspaceInfo, now: datetime, take: bool) -> BurstUse | None:
        """The burst window (requests within this second), counting this request if ``take``.

        None when the plan sets no burst limit. With ``take``, a full window is not
        counted and comes back refused.
        """
        burst = plans.tier_for(workspace.plan, workspace.custom_limits).burst
        if burst is None:
            return None
        second = int(now.timestamp())
        last, count = self._burst.get(workspace.id, (second, 0))
        if last != second:
            count = 0
        reset = plans.window_reset(now, plans.SECOND)
        if count >= burst:
            return BurstUse(plans.WindowUse("burst", plans.SECOND, burst, burst, reset), take)
        if take:
            count += 1
            if len(self._burst) > 10000:
                self._burst.clear()
            self._burst[workspace.id] = (second, count)
        return BurstUse(plans.WindowUse("burst", plans.SECOND, burst, count, reset), False)

    def _remember(self, buckets: list[tuple[str, int, Bucket]], counts: Sequence[int]) -> None:
        """Keep the counts a consume saw, for a request the burst window refuses unseen."""
        if len(self._seen) > 10000:
            self._seen.clear()
        for (_, _, bucket), used in zip(buckets, counts, strict=True):
            self._seen[bucket.key] = (bucket.window_start, used)

    def _last_seen(self, buckets: list[tuple[str, int, Bucket]]) -> list[int]:
        """The counts this daemon last saw in the current windows (0 when none was seen)."""
        counts = []
        for _, _, bucket in buckets:
            seen = self._seen.get(bucket.key)
            counts.append(seen[1] if seen is not None and seen[0] == bucket.window_start else 0)
        return counts

    @staticmethod
    def _refusal(
        uses: list[plans.WindowUse], refused: plans.WindowUse, workspace_id: str, now: datetime
    ) -> RateDecision:
        """429: ``refused`` is full; the headers name the full window that opens last.

        A request is accepted again only when every full window has room, so that
        window's reset is when to retry (a full hour behind a full burst second:
        the hour, not one second).
        """
        full = [u for u in uses if u.remaining == 0 and u.name != refused.name]
        binding = plans.most_constraining([refused, *full])
        assert binding is not None
        return RateDecision(plans.rate_headers(binding, workspace_id, now), binding)

    async def count_request(
        self, workspace_id: str, key: KeyIdentity | None, method: str, path: str
    ) -> RateDecision:
        """Count a workspace credential's request against its plan and endpoint limits.

        The headers describe the window nearest to refusing: the fewest requests
        left, the burst second included (reference 6.3: "the most constraining").
        """
        workspace = await self.workspace(workspace_id)
        now = self._service.clock()
        burst = self._burst_use(workspace, now, take=True)
        buckets = self._request_buckets(workspace, method, path, now)
        if burst is not None and burst.refused:
            # Refused in memory, without a query: the other windows as last seen here.
            uses = self._uses(buckets, self._last_seen(buckets), now)
            return self._refusal(uses, burst.use, workspace_id, now)
        touch = key is not None and (
            key.last_used_at is None or now - key.last_used_at >= TOUCH_EVERY
        )

        def op(conn: Connection) -> store.Consumed:
            if touch and key is not None:
                store.touch_key(conn, key.key_id, now)
            return store.consume(conn, [b for _, _, b in buckets])

        result = await self._service.committer.run(op)
        if touch and key is not None:
            self._keys.clear()  # the cached last_used_at is stale now
        self._remember(buckets, result.counts)
        uses = self._uses(buckets, result.counts, now)
        if burst is not None:
            uses.append(burst.use)
        if not result.ok and result.refused is not None:
            name, seconds, bucket = buckets[result.refused]
            assert bucket.limit is not None
            full = plans.WindowUse(
                name, seconds, bucket.limit, bucket.limit, plans.window_reset(now, seconds)
            )
            return self._refusal(uses, full, workspace_id, now)
        window = plans.most_constraining(uses)
        return RateDecision(plans.rate_headers(window, workspace_id, now))

    async def report_requests(self, workspace_id: str, method: str, path: str) -> RateDecision:
        """Headers for an exempt caller (admin): the workspace's windows, not counted.

        The headers are kept for the rest of the clock second (and at most
        REPORT_CACHE_SECONDS): an admin caller's requests cost no lookups.
        """
        now = self._service.clock()
        second = int(now.timestamp())
        clock = self._monotonic()
        known = self._report_headers.get((workspace_id, method, path))
        if known is not None and known[0] == second and clock - known[1] < REPORT_CACHE_SECONDS:
            return known[2]
        workspace = await self.workspace(workspace_id)
        buckets = self._request_buckets(workspace, method, path, now)
        cache_key = "|".join(b.key + b.window_start.isoformat() for _, _, b in buckets)
        cached = self._reports.get(cache_key)
        clock = self._monotonic()
        if cached is not None and clock - cached[0] < REPORT_CACHE_SECONDS:
            counts = cached[1]
        else:
            counts = await self._once(
                ("report", cache_key),
                lambda: self._service.reader.run(
                    lambda c: store.peek(c, [b for _, _, b in buckets])
                ),
            )
            if len(self._reports) > 10000:
                self._reports.clear()
            self._reports[cache_key] = (clock, counts)
        uses = self._uses(buckets, counts, now)
        burst = self._burst_use(workspace, now, take=False)
        if burst is not None:
            uses.append(burst.use)
        window = plans.most_constraining(uses)
        decision = RateDecision(plans.rate_headers(window, workspace_id, now))
        if len(self._report_headers) > 10000:
            self._report_headers.clear()
        self._report_headers[(workspace_id, method, path)] = (second, clock, decision)
        return decision

    # Daily sending quotas --------------------------------------------------

    def quota_buckets(
        self, workspace: WorkspaceInfo, user_id: str | None, now: datetime
    ) -> list[tuple[str, Bucket]]:
        """The global, workspace and (with a user) user quota windows of today."""
        limits = self._service.config.rate_limits
        stamp = int(now.timestamp())
        key = (
            stamp - stamp % plans.DAY,  # plans.window_start(now, DAY)
            workspace.id,
            workspace.daily_quota,
            workspace.user_daily_quota,
            user_id,
            limits.global_daily,
            limits.workspace_default,
            limits.user_default,
        )
        known = self._quota_buckets.get(key)
        if known is not None:
            return list(known)
        buckets = self._make_quota_buckets(workspace, user_id, now)
        if len(self._quota_buckets) > 10000:
            self._quota_buckets.clear()
        self._quota_buckets[key] = tuple(buckets)
        return buckets

    def _make_quota_buckets(
        self, workspace: WorkspaceInfo, user_id: str | None, now: datetime
    ) -> list[tuple[str, Bucket]]:
        limits = self._service.config.rate_limits
        start = plans.window_start(now, plans.DAY)
        expires = start + timedelta(days=2)
        user_limit = (
            workspace.user_daily_quota
            if workspace.user_daily_quota is not None
            else limits.user_default
        )
        workspace_limit = (
            workspace.daily_quota if workspace.daily_quota is not None else limits.workspace_default
        )
        buckets = [
            (
                "global",
                Bucket("quota:global", start, expires, plans.daily_limit(limits.global_daily)),
            ),
            (
                "workspace",
                Bucket(
                    f"quota:ws:{workspace.id}", start, expires, plans.daily_limit(workspace_limit)
                ),
            ),
        ]
        if user_id:
            buckets.append(
                (
                    "user",
                    Bucket(
                        f"quota:user:{workspace.id}:{user_id}",
                        start,
                        expires,
                        plans.daily_limit(user_limit),
                    ),
                )
            )
        return buckets

    async def admit(
        self,
        message: NewMessage,
        idempotency: IdempotencyClaim | None = None,
        extra: Sequence[tuple[str, Bucket]] = (),
    ) -> None:
        """Take the message's share of the daily quotas and store it, in one transaction.

        ``extra`` are further (scope, bucket) windows to take a share of, such as
        the Maylng plan's hourly/daily/monthly email limits. Raises QuotaExceeded
        (its ``scope`` names the full window), or IdempotentReplay when the key
        was used before (then nothing is stored).
        """
        workspace = await self.ensure_workspace(message.workspace_id)
        now = self._service.clock()
        named = [*self.quota_buckets(workspace, message.user_id, now), *extra]
        buckets = [b for _, b in named]
        if idempotency is None:  # the hot path: one batch of statements per commit
            batched = await self._service.committer.run_batched(
                admission.admit, admission.Admission(message, tuple(buckets))
            )
            self._refuse_or_wake(named, batched, now)
            return
        cutoff = now - IDEMPOTENCY_TTL

        def op(conn: Connection) -> tuple[Any, store.Consumed | None]:
            if idempotency is not None:
                earlier = store.claim_idempotency(
                    conn,
                    idempotency.workspace_id,
                    idempotency.key,
                    idempotency.request_hash,
                    idempotency.response,
                    idempotency.status_code,
                    now,
                    cutoff,
                )
                if earlier is not None:
                    return earlier, None
            consumed = store.consume(conn, buckets)
            if not consumed.ok:
                if idempotency is not None:
                    store.release_idempotency(conn, idempotency.workspace_id, idempotency.key)
                return None, consumed
            queue.insert_messages(conn, [message])
            return None, consumed

        earlier, consumed = await self._service.committer.run(op)
        if earlier is not None:
            raise IdempotentReplay(earlier)
        assert consumed is not None
        self._refuse_or_wake(named, consumed, now)

    def _refuse_or_wake(
        self, named: Sequence[tuple[str, Bucket]], consumed: store.Consumed, now: datetime
    ) -> None:
        """QuotaExceeded for a refused message; otherwise wake the delivery workers."""
        if not consumed.ok and consumed.refused is not None:
            scope, bucket = named[consumed.refused]
            assert bucket.limit is not None
            reset = plans.window_reset(now, plans.DAY)
            raise QuotaExceeded(scope, bucket.limit, consumed.counts[consumed.refused], reset)
        self._service.wake.set()

    async def quota_left(self, workspace_id: str | None) -> QuotaExceeded | None:
        """A cheap look (no reservation) whether today's quotas have room for one more.

        Only an early refusal (SMTP RCPT): admission re-checks exactly. So a look
        that found room is trusted for QUOTA_LOOK_SECONDS, and unlimited windows
        need no look at all.
        """
        workspace = await self.workspace(workspace_id or "default")
        now = self._service.clock()
        named = self.quota_buckets(workspace, None, now)
        if workspace_id is None:
            named = named[:1]
        named = [(scope, bucket) for scope, bucket in named if bucket.limit is not None]
        if not named:
            return None
        key = "|".join(f"{b.key}@{b.window_start.isoformat()}" for _, b in named)
        clock = self._monotonic()
        roomy = self._roomy.get(key)
        if roomy is not None and clock - roomy < QUOTA_LOOK_SECONDS:
            return None
        counts = await self._service.reader.run(lambda c: store.peek(c, [b for _, b in named]))
        for (scope, bucket), used in zip(named, counts, strict=True):
            if bucket.limit is not None and used >= bucket.limit:
                self._roomy.pop(key, None)
                return QuotaExceeded(scope, bucket.limit, used, plans.window_reset(now, plans.DAY))
        if len(self._roomy) > 10000:
            self._roomy.clear()
        self._roomy[key] = clock
        return None

    async def quota_status(self, workspace_id: str) -> dict[str, Any]:
        """Today's quota use as ``GET /api/rate-limit`` reports it (reference 2.3)."""
        workspace = await self.workspace(workspace_id)
        now = self._service.clock()
        named = self.quota_buckets(workspace, None, now)
        start = plans.window_start(now, plans.DAY)
        prefix = f"quota:user:{workspace_id}:"
        counts, users = await self._service.reader.run(
            lambda c: (
                store.peek(c, [b for _, b in named]),
                store.counters_like(c, prefix, start),
            )
        )
        reset = plans.window_reset(now, plans.DAY)
        limits = self._service.config.rate_limits
        user_limit = plans.daily_limit(
            workspace.user_daily_quota
            if workspace.user_daily_quota is not None
            else limits.user_default
        )
        (_, global_bucket), (_, ws_bucket) = named
        reset_at = reset.strftime("%Y-%m-%dT%H:%M:%SZ")

        def left(limit: int | None, used: int) -> int | None:
            return None if limit is None else max(0, limit - used)

        return {
            "global": {
                "limit": global_bucket.limit,
                "remaining": left(global_bucket.limit, counts[0]),
                "reset_at": reset_at,
            },
            "workspace": {
                "workspace_id": workspace_id,
                "limit": ws_bucket.limit,
                "used": counts[1],
                "remaining": left(ws_bucket.limit, counts[1]),
                "reset_at": reset_at,
            },
            "users": {
                user: {"limit": user_limit, "used": used, "remaining": left(user_limit, used)}
                for user, used in sorted(users.items())
            },
        }

    async def purge(self) -> int:
        """Drop expired counters and idempotency keys (a periodic job)."""
        now = self._service.clock()
        return await self._service.committer.run(
            lambda c: store.purge_expired(c, now, now - IDEMPOTENCY_TTL)
        )
