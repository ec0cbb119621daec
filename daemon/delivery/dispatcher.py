"""The dispatcher: claims due messages under a lease and hands them to providers.

Each message's delivery round (routing, failover, retry decision, bounce) is
:mod:`daemon.delivery.attempt`. One loop claims batches (woken at once by new
mail, else at the next due time or the fallback poll); each message is delivered
in its own task, bounded by ``queue.concurrency``; results are written back in
batches through the group committer, together with any DSNs they cause.

While the database is unavailable (down, refusing connections, locked, disk full)
results are held and written once it is back, before anything new is claimed:
dropped, their messages would be delivered a second time when their leases expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection

from daemon.config import Config
from daemon.core import suppression
from daemon.core.message import ClaimedMessage, NewMessage, Outcome
from daemon.delivery.attempt import NO_NOTICES, Deliverer, Notices, describe
from daemon.providers.base import Provider
from daemon.service import RelayService
from daemon.store import audience, queue
from daemon.store import providers as provider_store
from daemon.store.engine import FailureLog, store_unavailable

log = logging.getLogger("relayd.delivery")

# When a claim found nothing although something looked due (another daemon held
# it for an instant), wait this long rather than spin.
MIN_SLEEP = 0.01

# With SMTP in worker processes, claims and results wait up to this long for a
# commit to join (see Committer.run's ``within``): on SQLite every commit takes the
# one writer lock the workers need to acknowledge mail. Measured with
# bench/smtp_ingest.py and bench/relay_end_to_end.py (new connection per message):
# +10% ingest and +20% end to end against committing each batch at once.
SHARED_WRITER_DELAY = 0.02

# Results the database could not take because it is unavailable are tried again
# after this long, doubling up to HELD_RETRY_MAX: soon after it is back, before the
# lease reaper (a job, or another daemon) hands their expired leases out again.
HELD_RETRY_MIN = 0.1
HELD_RETRY_MAX = 0.5


@dataclass
class _Pending:
    message: ClaimedMessage
    outcome: Outcome  # replaced when the store cannot take it (see Dispatcher._apart)
    notices: Notices  # the DSNs the outcome causes
    done: asyncio.Future[None]


def worker_id() -> str:
    """A lease owner unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"


class Dispatcher:
    """Delivery workers for one daemon; several dispatchers may share one database."""

    def __init__(
        self,
        service: RelayService,
        providers: dict[str, Provider],
        rng: random.Random | None = None,
        write_within: float = 0.0,
    ) -> None:
        self.service = service
        # How long claims and results may wait for a commit to join (0: at once).
        self.write_within = write_within
        self.rng = rng or random.Random()
        self.deliverer = Deliverer(service, providers, self.rng)
        self.owner = worker_id()
        self.delivered = 0
        self.failed = 0
        self._inflight: set[asyncio.Task[None]] = set()
        # Messages whose delivery task is running (or waiting for its result to be
        # written): their leases are renewed until then.
        self._holding: dict[asyncio.Task[None], str] = {}
        # Deliveries done with their provider, waiting for their result to be written.
        self._recording: set[asyncio.Task[None]] = set()
        self._pending: list[_Pending] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._slot_freed = asyncio.Event()
        self._flush_wakeup = asyncio.Event()
        self._stopping = False
        self._flush_closing = False
        self._flush_deadline = math.inf  # when stopping: when held results are given up
        # Since when results have been held for an unavailable database (None: none are).
        self._held_since: float | None = None
        self._results_written = asyncio.Event()
        self._loop_failures = FailureLog(log, "delivery loop")
        self._renew_failures = FailureLog(log, "renewing delivery leases")
        self._suppressed: dict[str, suppression.Suppressed] = {}
        service.metrics.track_in_flight(lambda: self.active)

    @property
    def active(self) -> int:
        """Deliveries in flight right now."""
        return len(self._inflight)

    @property
    def config(self) -> Config:
        return self.service.config

    @property
    def providers(self) -> Mapping[str, Provider]:
        return self.deliverer.providers

    @providers.setter
    def providers(self, providers: Mapping[str, Provider]) -> None:
        """Swap providers (after a reload); the new ones get fresh breakers' checks."""
        self.deliverer.providers = providers
        self.service.providers_state.providers = providers

    async def start(self) -> None:
        """Attach the providers to the health registry, start the claim loop and result writer."""
        await self.service.providers_state.attach(self.providers)
        self._flush_task = asyncio.create_task(self._flusher(), name="delivery-results")
        self._renew_task = asyncio.create_task(self._renewer(), name="delivery-leases")
        self._loop_task = asyncio.create_task(self._run(), name="delivery-loop")

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming, let in-flight deliveries finish within ``grace_seconds``, hand the
        leases back, then close the providers (the dispatcher owns them).

        Results held for an unavailable database are tried until the grace is over."""
        self._stopping = True
        self._flush_deadline = time.monotonic() + max(grace_seconds, 1.0)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._inflight:
            _, late = await asyncio.wait(set(self._inflight), timeout=max(grace_seconds, 0))
            for task in late:
                task.cancel()
            if late:
                log.warning("stopped %d deliveries still running after the grace period", len(late))
                await asyncio.gather(*late, return_exceptions=True)
        self._flush_closing = True
        self._flush_wakeup.set()
        self._results_written.set()
        self.service.committer.hurry()  # the last results need not wait for company
        if self._flush_task is not None:
            await self._flush_task
        if self._recording:  # their results are written: only the logging is left
            await asyncio.gather(*self._recording, return_exceptions=True)
        if self._renew_task is not None:
            self._renew_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew_task
        now = self.service.clock()
        try:
            released = await self.service.committer.run(lambda c: queue.release(c, self.owner, now))
            if released:
                log.info("released %d leased messages back to the queue", released)
        except Exception as exc:  # the leases then simply expire
            log.warning("could not release leases on stop: %s", exc)
        await self._close_providers()

    async def _close_providers(self) -> None:
        """The dispatcher owns its providers: QUIT pooled upstream sessions on the way out."""
        for pid, provider in self.providers.items():
            try:
                await provider.close()
            except Exception as exc:
                log.warning("closing provider %s: %s", pid, exc)

    # -- claim loop ----------------------------------------------------------------

    async def _run(self) -> None:
        last_reap = -math.inf
        backlog = False
        while not self._stopping:
            cfg = self.config.queue
            interval = cfg.process_interval.seconds
            try:
                if self._held_since is not None:
                    # Results wait for the database: they go first (a claim, or the
                    # reaping of their leases, must not overtake them).
                    self._results_written.clear()
                    await self._wait(self._results_written, interval)
                    continue
                if time.monotonic() - last_reap >= interval:
                    last_reap = time.monotonic()
                    await self._reap()
                if self.service.maintenance.delivery_paused:
                    # Maintenance with delivery paused: turning it off sets wake.
                    self.service.wake.clear()
                    await self._wait(self.service.wake, min(interval, 1.0))
                    continue
                free = cfg.concurrency - self.active
                if free <= 0:
                    self._slot_freed.clear()
                    await self._wait(self._slot_freed, interval)
                    continue
                want = min(cfg.batch_size, free)
                self.service.wake.clear()
                # A backlog is claimed at once; a trickle of new mail waits for company.
                claimed = await self._claim(want, 0.0 if backlog else self.write_within)
                self._loop_failures.worked()
                held = set(self._holding.values())
                for message in claimed:
                    # Still being delivered here (its lease lapsed and came back to us):
                    # that delivery records the result under the same owner.
                    if message.id not in held:
                        self._spawn(message)
                backlog = len(claimed) == want
                if backlog:
                    await asyncio.sleep(0)
                    continue
                if self.service.wake.is_set():
                    # New mail came in while claiming: the wait would end at once, so
                    # the next due time (a database read) is not needed.
                    await asyncio.sleep(0)
                    continue
                await self._wait(self.service.wake, await self._idle_time(interval))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A database outage must not kill the workers: try again shortly.
                self._loop_failures.failed(exc)
                await asyncio.sleep(min(interval, 1.0))

    async def _renewer(self) -> None:
        """Keep the leases of the messages being delivered here, a third of a lease ahead."""
        while True:
            lease = timedelta(seconds=self.config.queue.lease.seconds)
            await asyncio.sleep(max(lease.total_seconds() / 3, MIN_SLEEP))
            ids = list(self._holding.values())
            if not ids:
                continue
            renew = functools.partial(
                queue.renew, owner=self.owner, ids=ids, now=self.service.clock(), lease=lease
            )
            try:
                await self.service.committer.run(renew)
            except Exception as exc:  # the next round tries again; the lease may lapse
                self._renew_failures.failed(exc)
            else:
                self._renew_failures.worked()

    async def _reap(self) -> None:
        now = self.service.clock()
        reaped = await self.service.committer.run(lambda c: queue.reap_expired(c, now))
        if reaped:
            log.info("requeued %d messages whose delivery lease expired", reaped)

    async def _claim(self, limit: int, within: float = 0.0) -> list[ClaimedMessage]:
        now = self.service.clock()
        lease = timedelta(seconds=self.config.queue.lease.seconds)
        batch, found = await self.service.committer.run(
            lambda c: _claim_batch(c, now, limit, self.owner, lease), within=within
        )
        claimed = []
        for message in batch:
            message, dropped = suppression.split(message, found)
            if dropped:
                self._suppressed[message.id] = dropped
            claimed.append(message)
        return claimed

    async def _idle_time(self, interval: float) -> float:
        due = await self.service.reader.run(queue.next_due)
        if due is None:
            return interval
        until = (due - self.service.clock()).total_seconds()
        return max(MIN_SLEEP, min(interval, until))

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _spawn(self, message: ClaimedMessage) -> None:
        task = asyncio.create_task(self._deliver(message), name=f"deliver-{message.id}")
        self._inflight.add(task)
        self._holding[task] = message.id
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._holding.pop(task, None)
        if task in self._inflight:
            self._inflight.discard(task)
            self._slot_freed.set()
        self._recording.discard(task)

    def _recorded_later(self) -> None:
        """The current delivery is done with its provider: its slot goes to the next one
        while its result waits for the writer."""
        task = asyncio.current_task()
        if task in self._inflight:
            assert task is not None
            self._inflight.discard(task)
            self._recording.add(task)
            self._slot_freed.set()

    # -- one message -----------------------------------------------------------------

    async def _deliver(self, message: ClaimedMessage) -> None:
        started = time.monotonic()
        try:
            # Tracking, List-Unsubscribe and VERP: rewritten once, before the first attempt.
            message = await self.service.engagement.prepare(message)
            outcome, notices = await self.deliverer.run(
                message, self._suppressed.pop(message.id, ())
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            suppressed = self._suppressed.pop(message.id, ())
            if store_unavailable(exc):
                # The database failed under prepare (tracking rewrites are stored before
                # the first attempt): nothing was sent, so no retry is used, no bug logged.
                log.info("delivery of %s postponed: %s", message.id, exc)
                outcome, notices = self.deliverer.postponed(message, exc), NO_NOTICES
            else:
                # A bug of ours: a temporary failure of this round, so it uses a retry
                # instead of coming back every lease for ever.
                log.exception("delivery of %s crashed; counted as a temporary failure", message.id)
                try:
                    outcome, notices = self.deliverer.crashed(message, exc)
                    outcome = suppression.merge(outcome, suppressed)
                except Exception:
                    log.exception(
                        "could not record the crash of %s; its lease will expire", message.id
                    )
                    return
        pending = _Pending(message, outcome, notices, asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        self._flush_wakeup.set()
        self._recorded_later()
        try:
            await pending.done
        except Exception as exc:
            # Given up for an unavailable database: _hold said so for the lot.
            quiet = store_unavailable(exc)
            (log.debug if quiet else log.warning)(
                "could not record the result of %s: %s", message.id, exc
            )
            return
        outcome = pending.outcome
        self._log(outcome)
        await self.service.engagement.after_delivery(message, outcome)
        self.service.metrics.delivery_finished(
            message.workspace_id, outcome, time.monotonic() - started
        )

    def _log(self, outcome: Outcome) -> None:
        if outcome.status == "sent":
            self.delivered += 1
            log.info("%s sent via %s", outcome.message_id, outcome.provider)
        elif outcome.status == "queued":
            log.info(
                "%s deferred (retry %d at %s): %s",
                outcome.message_id,
                outcome.retry_count,
                outcome.next_attempt_at.isoformat() if outcome.next_attempt_at else "-",
                outcome.error,
            )
        else:
            self.failed += 1
            log.info("%s %s: %s", outcome.message_id, outcome.status, outcome.error)

    # -- writing results -------------------------------------------------------------

    async def _flusher(self) -> None:
        """Write finished deliveries in batches: one commit covers all that finished together."""
        delay = HELD_RETRY_MIN
        while True:
            await self._flush_wakeup.wait()
            self._flush_wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    wake = await self._write(batch)
                except Exception as exc:
                    if not store_unavailable(exc):
                        wake = await self._apart(batch, exc)
                    elif self._hold(batch, exc):
                        await asyncio.sleep(min(delay, self._flush_deadline - time.monotonic()))
                        delay = min(delay * 2, HELD_RETRY_MAX)
                        continue
                    else:
                        wake = False
                else:
                    for item in batch:
                        if not item.done.done():
                            item.done.set_result(None)
                    self._recovered()
                delay = HELD_RETRY_MIN
                if wake:
                    # A retry time or a new bounce may be earlier than the loop's sleep.
                    self.service.wake.set()
            if self._flush_closing:
                return

    def _hold(self, batch: list[_Pending], error: Exception) -> bool:
        """The database is unavailable: keep ``batch`` to write when it is back (True), or,
        stopping and out of time, give it up (False): those leases expire."""
        if self._flush_closing and time.monotonic() >= self._flush_deadline:
            log.warning(
                "%d delivery results not recorded (%s); their messages are delivered again "
                "once their leases expire",
                len(batch),
                error,
            )
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(error)
            return False
        if self._held_since is None:
            self._held_since = time.monotonic()
            log.warning("%s: holding delivery results until the database is back", error)
        self._pending[:0] = batch  # first in line, in order
        return True

    def _recovered(self) -> None:
        """Results were written: held ones (if any) are recorded, claiming resumes."""
        if self._held_since is None:
            return
        log.warning(
            "database back: delivery results held for %.1fs are recorded",
            time.monotonic() - self._held_since,
        )
        self._held_since = None
        self._results_written.set()

    async def _apart(self, batch: Sequence[_Pending], error: Exception) -> bool:
        """Write the results of a batch that failed one by one, so that one the store cannot
        take (a value too large for its column...) does not take the others down with it.

        A result that fails on its own is replaced by a temporary failure of its round
        (:meth:`Deliverer.crashed`), which uses a retry: else the message would be
        delivered again every lease, for ever. When the database turns out unavailable the
        rest of the batch waits for it (see :meth:`_flusher`); when that replacement fails
        otherwise, the rest of the batch is given up, and its leases expire.
        """
        wake = False
        for index, item in enumerate(batch):
            if item.done.done():
                continue
            try:
                if len(batch) > 1:
                    wake |= await self._write([item])
                    item.done.set_result(None)
                    continue
            except Exception as exc:
                if store_unavailable(exc):
                    # The database went away meanwhile: the rest waits for it (_flusher).
                    self._pending[:0] = [rest for rest in batch[index:] if not rest.done.done()]
                    return wake
                error = exc
            try:
                log.error("could not record the result of %s: %s", item.message.id, error)
                outcome, notices = self.deliverer.crashed(
                    item.message, _unrecorded(item.outcome, error)
                )
                item.outcome, item.notices = outcome, notices
                wake |= await self._write([item])
            except Exception as exc:
                if store_unavailable(exc):
                    self._pending[:0] = [rest for rest in batch[index:] if not rest.done.done()]
                    return wake
                for rest in batch[index:]:
                    if not rest.done.done():
                        rest.done.set_exception(exc)
                return wake
            item.done.set_result(None)
        return wake

    async def _write(self, batch: Sequence[_Pending]) -> bool:
        return await self.service.committer.run(
            functools.partial(_apply, batch=batch, late=self._late_notice),
            within=0.0 if self._flush_closing else self.write_within,
        )

    def _late_notice(self, item: _Pending, delivered: set[str]) -> NewMessage | None:
        """The DSN a result that came too late still owes: see :class:`Notices`."""
        if not delivered or not item.notices.relayed:
            return None
        return self.deliverer.late_notice(
            item.message, item.notices, delivered, item.outcome.processed_at
        )


def _unrecorded(outcome: Outcome, error: Exception) -> str:
    """What the stored error says of a round whose result the store would not take."""
    tried = ", ".join(dict.fromkeys(a.provider for a in outcome.attempts)) or "no provider"
    return (
        f"the result of the round via {tried} ({outcome.status}) could not be recorded: "
        f"{describe(error)}"
    )


def _claim_batch(
    conn: Connection, now: datetime, limit: int, owner: str, lease: timedelta
) -> tuple[list[ClaimedMessage], dict[tuple[str, str], str]]:
    """Claim due messages and find their suppressed recipients, in one query for the batch."""
    batch = queue.claim(conn, now, limit, owner, lease)
    pairs = [(m.workspace_id, r.address) for m in batch for r in m.recipients]
    return batch, audience.suppressed_addresses(conn, pairs)


def _apply(
    conn: Connection,
    batch: Sequence[_Pending],
    late: Callable[[_Pending, set[str]], NewMessage | None],
) -> bool:
    """Apply outcomes; DSNs are queued in the same transaction as the outcome causing them.

    A result that came too late (its lease taken over) queues only ``late``'s DSN, for
    the recipients it alone delivered. The providers' running counters move in the same
    transaction as the attempts.
    """
    if batch:
        day = batch[0].outcome.processed_at.date().isoformat()
        provider_store.count_attempts(conn, (a for p in batch for a in p.outcome.attempts), day)
    plain = [p.outcome for p in batch if not p.notices]
    queue.apply_outcomes(conn, plain)
    wake = any(o.status == "queued" for o in plain)
    for item in batch:
        if not item.notices:
            continue
        settled: dict[str, set[str]] = {}
        if queue.apply_outcomes(conn, [item.outcome], settled) == 1:
            queue.insert_messages(conn, item.notices.messages)
            wake = True
        elif (notice := late(item, settled.get(item.message.id, set()))) is not None:
            queue.insert_messages(conn, [notice])
            wake = True
    return wake
