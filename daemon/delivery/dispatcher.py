"""The dispatcher: claims due messages under a lease and hands them to providers.

One loop claims batches (woken at once by new mail, else at the next due time
or the fallback poll); each message is delivered in its own task, bounded by
``queue.concurrency``; results are written back in batches through the group
committer, together with any bounce (DSN) they cause.
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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection

from daemon.config import Config
from daemon.core import dsn, retry, routing, suppression
from daemon.core.ids import message_id
from daemon.core.message import (
    Attempt,
    ClaimedMessage,
    NewMessage,
    Outcome,
    Recipient,
)
from daemon.providers.base import DeliveryResult, Envelope, Provider, RecipientResult
from daemon.service import RelayService
from daemon.store import audience, queue

log = logging.getLogger("relayd.delivery")

# When a claim found nothing although something looked due (another daemon held
# it for an instant), wait this long rather than spin.
MIN_SLEEP = 0.01


@dataclass(frozen=True)
class _Failure:
    """A recipient that will not be delivered, with the reply that says why."""

    recipient: Recipient
    result: RecipientResult
    remote: str | None


@dataclass
class _Pending:
    outcome: Outcome
    bounce: NewMessage | None
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
    ) -> None:
        self.service = service
        self.providers = providers  # reassign to swap providers after a reload
        self.rng = rng or random.Random()
        self.owner = worker_id()
        self.delivered = 0
        self.failed = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._pending: list[_Pending] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._slot_freed = asyncio.Event()
        self._flush_wakeup = asyncio.Event()
        self._stopping = False
        self._flush_closing = False
        self._suppressed: dict[str, suppression.Suppressed] = {}
        service.metrics.track_in_flight(lambda: self.active)

    @property
    def active(self) -> int:
        """Deliveries in flight right now."""
        return len(self._inflight)

    @property
    def config(self) -> Config:
        return self.service.config

    async def start(self) -> None:
        """Start the claim loop and the result writer."""
        self._flush_task = asyncio.create_task(self._flusher(), name="delivery-results")
        self._loop_task = asyncio.create_task(self._run(), name="delivery-loop")

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming, let in-flight deliveries finish within ``grace_seconds``, hand the
        leases back, then close the providers (the dispatcher owns them)."""
        self._stopping = True
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
        if self._flush_task is not None:
            await self._flush_task
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
        while not self._stopping:
            cfg = self.config.queue
            interval = cfg.process_interval.seconds
            try:
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
                claimed = await self._claim(want)
                for message in claimed:
                    self._spawn(message)
                if len(claimed) == want:
                    await asyncio.sleep(0)
                    continue
                await self._wait(self.service.wake, await self._idle_time(interval))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A database outage must not kill the workers: try again shortly.
                log.warning("delivery loop: %s", str(exc).splitlines()[0] if str(exc) else exc)
                await asyncio.sleep(min(interval, 1.0))

    async def _reap(self) -> None:
        now = self.service.clock()
        reaped = await self.service.committer.run(lambda c: queue.reap_expired(c, now))
        if reaped:
            log.info("requeued %d messages whose delivery lease expired", reaped)

    async def _claim(self, limit: int) -> list[ClaimedMessage]:
        now = self.service.clock()
        lease = timedelta(seconds=self.config.queue.lease.seconds)
        batch, found = await self.service.committer.run(
            lambda c: _claim_batch(c, now, limit, self.owner, lease)
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
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slot_freed.set()

    # -- one message -----------------------------------------------------------------

    async def _deliver(self, message: ClaimedMessage) -> None:
        started = time.monotonic()
        try:
            outcome, bounce = await self._unsuppressed_attempt(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery of %s crashed; its lease will expire", message.id)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(outcome, bounce, done))
        self._flush_wakeup.set()
        try:
            await done
        except Exception as exc:
            log.warning("could not record the result of %s: %s", message.id, exc)
            return
        self._log(outcome)
        self.service.metrics.delivery_finished(
            message.workspace_id, outcome, time.monotonic() - started
        )

    async def _unsuppressed_attempt(
        self, message: ClaimedMessage
    ) -> tuple[Outcome, NewMessage | None]:
        """Deliver to the recipients that are not suppressed; record the suppressed ones."""
        suppressed = self._suppressed.pop(message.id, ())
        if suppressed and not message.recipients:
            return suppression.all_suppressed(message, suppressed, self.service.clock()), None
        outcome, bounce = await self._attempt(message)
        return suppression.merge(outcome, suppressed), bounce

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

    async def _attempt(self, message: ClaimedMessage) -> tuple[Outcome, NewMessage | None]:
        """Try the routed providers in order; fail over on temporary and auth failures."""
        config = self.config
        if not message.recipients:
            # Every recipient already has a final status; nothing is left to send.
            return self._finished_without_recipients(message, self.service.clock()), None
        order = routing.order_providers(
            config.providers.values(), message.workspace_id, self.rng, available=self.providers
        )
        remaining = list(message.recipients)
        attempts: list[Attempt] = []
        statuses: list[tuple[str, str, str | None]] = []
        failures: list[_Failure] = []
        deferred: dict[str, _Failure] = {}
        sent_via: str | None = None
        provider_message_id: str | None = None
        only_auth_errors = bool(order)

        for pid in order:
            if not remaining:
                break
            result, attempt = await self._try_provider(pid, message, remaining)
            attempts.append(attempt)
            by_address = {r.address: r for r in result.recipients}
            still: list[Recipient] = []
            for rcpt in remaining:
                rr = by_address.get(rcpt.address) or RecipientResult(
                    rcpt.address, result.outcome, result.code, result.reply
                )
                if rr.outcome == retry.SENT:
                    statuses.append((rcpt.address, "sent", None))
                    sent_via, provider_message_id = pid, result.provider_message_id
                elif rr.outcome == retry.PERMANENT:
                    failures.append(_Failure(rcpt, rr, result.remote))
                else:
                    still.append(rcpt)
                    deferred[rcpt.address] = _Failure(rcpt, rr, result.remote)
                    if rr.outcome == retry.TEMPORARY:
                        only_auth_errors = False
            remaining = still

        now = self.service.clock()
        if not order:
            reply = f"no enabled provider for workspace {message.workspace_id!r}"
            attempts.append(Attempt("none", retry.TEMPORARY, now, None, reply))
            for rcpt in remaining:
                deferred[rcpt.address] = _Failure(
                    rcpt, RecipientResult(rcpt.address, retry.TEMPORARY, None, reply), None
                )

        retry_count = message.retry_count
        next_attempt_at: datetime | None = None
        if remaining:
            kind = retry.AUTH_ERROR if only_auth_errors else retry.TEMPORARY
            decision = retry.decide(
                kind,
                message.retry_count,
                retry.effective_max_retries(message.max_retries, config.queue.max_retries),
                now,
                config.queue.retry_base.seconds,
                config.queue.retry_max.seconds,
                self.rng,
            )
            status, retry_count = decision.status, decision.retry_count
            next_attempt_at = decision.next_attempt_at
            if status != "queued":
                for rcpt in remaining:
                    failure = deferred[rcpt.address]
                    statuses.append((rcpt.address, status, failure.result.reply or None))
                    if status == "failed":
                        failures.append(failure)
        else:
            status = "sent" if sent_via else "failed"
        for failure in failures:
            if failure.result.outcome == retry.PERMANENT:
                statuses.append((failure.recipient.address, "failed", failure.result.reply))

        still_deferred = [] if status == "failed" else [deferred[r.address] for r in remaining]
        error = self._error_text([*failures, *still_deferred])
        outcome = Outcome(
            message_id=message.id,
            lease_owner=message.lease_owner,
            status=status,
            processed_at=now,
            retry_count=retry_count,
            next_attempt_at=next_attempt_at,
            provider=sent_via or (attempts[-1].provider if order else None),
            provider_message_id=provider_message_id,
            error=error,
            attempts=tuple(attempts),
            recipient_status=tuple(statuses),
        )
        return outcome, self._bounce(message, failures, now)

    @staticmethod
    def _finished_without_recipients(message: ClaimedMessage, now: datetime) -> Outcome:
        return Outcome(
            message_id=message.id,
            lease_owner=message.lease_owner,
            status="failed",
            processed_at=now,
            retry_count=message.retry_count,
            error="no recipients left to deliver",
        )

    async def _try_provider(
        self, pid: str, message: ClaimedMessage, recipients: list[Recipient]
    ) -> tuple[DeliveryResult, Attempt]:
        provider = self.providers[pid]
        attempted_at = self.service.clock()
        started = time.monotonic()
        try:
            result = await provider.send(Envelope.of(message, recipients))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("provider %s failed unexpectedly on %s", pid, message.id)
            result = DeliveryResult.uniform(
                retry.TEMPORARY, recipients, reply=f"provider error: {type(exc).__name__}: {exc}"
            )
        elapsed = int((time.monotonic() - started) * 1000)
        attempt = Attempt(pid, result.outcome, attempted_at, result.code, result.reply, elapsed)
        return result, attempt

    @staticmethod
    def _error_text(failures: Sequence[_Failure]) -> str | None:
        parts = [f"{f.recipient.address}: {f.result.reply}" for f in failures]
        return "; ".join(parts)[:2000] if parts else None

    def _bounce(
        self, message: ClaimedMessage, failures: Sequence[_Failure], now: datetime
    ) -> NewMessage | None:
        """The DSN for recipients that failed for good, if the sender and NOTIFY want one."""
        if not dsn.may_bounce(message.mail_from):
            return None
        reported = [
            dsn.ReportedRecipient(
                address=f.recipient.address,
                status=dsn.status_code(f.result.code, f.result.reply, f.result.outcome),
                diagnostic=f.result.reply,
                orcpt=f.recipient.orcpt,
                remote_mta=f.remote,
            )
            for f in failures
            if dsn.wants_report(f.recipient.notify, "failure")
        ]
        if not reported:
            return None
        hostname = self.config.smtp.hostname or socket.getfqdn()
        bounce_id = message_id(int(now.timestamp() * 1000))
        raw = dsn.build_dsn(
            original=message.raw,
            mail_from=message.mail_from,
            recipients=reported,
            hostname=hostname,
            arrival=message.queued_at,
            now=now,
            message_id=bounce_id,
            envid=message.dsn_envid,
            ret=message.dsn_ret,
        )
        return NewMessage(
            id=bounce_id,
            uuid=str(uuid.uuid4()),
            mail_from="",
            recipients=[Recipient(message.mail_from)],
            raw=raw,
            queued_at=now,
            next_attempt_at=now,
            workspace_id=message.workspace_id,
            campaign_id=message.campaign_id,
            source="dsn",
            from_header=f"MAILER-DAEMON@{hostname}",
            to=[message.mail_from],
            subject="Undelivered Mail Returned to Sender",
            headers={"Message-ID": f"<{bounce_id}@{hostname}>"},
            metadata={"dsn_for": message.id},
        )

    # -- writing results -------------------------------------------------------------

    async def _flusher(self) -> None:
        """Write finished deliveries in batches: one commit covers all that finished together."""
        while True:
            await self._flush_wakeup.wait()
            self._flush_wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    wake = await self.service.committer.run(functools.partial(_apply, batch=batch))
                except Exception as exc:
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    continue
                for item in batch:
                    if not item.done.done():
                        item.done.set_result(None)
                if wake:
                    # A retry time or a new bounce may be earlier than the loop's sleep.
                    self.service.wake.set()
            if self._flush_closing:
                return


def _claim_batch(
    conn: Connection, now: datetime, limit: int, owner: str, lease: timedelta
) -> tuple[list[ClaimedMessage], dict[tuple[str, str], str]]:
    """Claim due messages and find their suppressed recipients, in one query for the batch."""
    batch = queue.claim(conn, now, limit, owner, lease)
    pairs = [(m.workspace_id, r.address) for m in batch for r in m.recipients]
    return batch, audience.suppressed_addresses(conn, pairs)


def _apply(conn: Connection, batch: Sequence[_Pending]) -> bool:
    """Apply outcomes; a bounce is queued in the same transaction as its failure."""
    plain = [p.outcome for p in batch if p.bounce is None]
    queue.apply_outcomes(conn, plain)
    wake = any(o.status == "queued" for o in plain)
    for item in batch:
        if item.bounce is None:
            continue
        if queue.apply_outcomes(conn, [item.outcome]) == 1:
            queue.insert_messages(conn, [item.bounce])
            wake = True
    return wake
