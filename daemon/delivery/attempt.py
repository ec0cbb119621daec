"""One delivery round of one claimed message: route, try providers in turn, decide what next.

The providers come from :func:`daemon.core.routing.order_providers` (the
workspace's own or the global ones, priority order, weighted within a
priority). Each is asked through ``service.providers_state`` first: a provider
whose circuit is open or that is at its rate limit is skipped for this round. A
temporary failure (or a timeout) or refused credentials fail over to the next
provider; a permanent refusal of a recipient does not. When no provider could
even be tried (all down or limited) the message waits for the first one to free
up without using one of its retries; it is requeued with ``ALL_PROVIDERS_DOWN``
(or the rate limit) as its error, and sends its delay DSN once it has waited long enough.

A provider that raises, or returns something the round cannot read or store, has
failed temporarily for this round (and the next provider is tried). A round that
fails anywhere else in our code is :meth:`Deliverer.crashed`: a temporary failure
that uses one of the message's retries like any other, so a crash that comes back
every time ends ``failed``, with its DSN, after ``max_retries``.

The round also decides which DSNs the sender asked for (:mod:`daemon.delivery.reports`);
they go back with its outcome, to be queued in the same transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Collection, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from daemon.config import Config
from daemon.core import retry, routing, suppression
from daemon.core.dsn import ReportedRecipient
from daemon.core.message import Attempt, ClaimedMessage, NewMessage, Outcome, Recipient
from daemon.delivery import reports
from daemon.delivery.reports import Answer
from daemon.providers.base import DeliveryResult, Envelope, Provider, RecipientResult
from daemon.providers.health import BREAKER_OPEN, Admission
from daemon.service import RelayService
from daemon.store.providers import WAITING_PREFIX

log = logging.getLogger("relayd.delivery")

ALL_PROVIDERS_DOWN = WAITING_PREFIX


@dataclasses.dataclass(frozen=True)
class Notices:
    """The DSNs a round's outcome brings with it (none, or one per kind of event), queued
    in the transaction that records it.

    ``relayed``: the recipients its "relayed" DSN (NOTIFY=SUCCESS) reports. A result
    that comes after its lease was taken over records none of these DSNs, the newer
    delivery decides; but the recipients only it delivered are never sent to again,
    so their success is reported from here (:meth:`Deliverer.late_notice`).
    """

    messages: tuple[NewMessage, ...] = ()
    relayed: tuple[ReportedRecipient, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.messages)


NO_NOTICES = Notices()

# The RFC 3463 status of a round that failed in our own code: "other or undefined mail
# system status", temporary (the DSN after the last retry reports it).
INTERNAL_STATUS = "4.3.0"
MAX_PROVIDER_MESSAGE_ID = 512  # messages.provider_message_id
MAX_DESCRIPTION = 500


@dataclasses.dataclass
class _Round:
    """What the provider calls of one round decided, for :meth:`Deliverer._conclude`."""

    remaining: list[Recipient]  # not decided yet: deferred, to retry
    attempts: list[Attempt]
    deferred: dict[str, Answer]  # the last answer for each of ``remaining``
    statuses: list[tuple[str, str, str | None]] = dataclasses.field(default_factory=list)
    failures: list[Answer] = dataclasses.field(default_factory=list)
    accepted: list[Answer] = dataclasses.field(default_factory=list)  # with NOTIFY, for DSNs
    sent_via: str | None = None
    provider_message_id: str | None = None
    only_auth_errors: bool = False
    provider: str | None = None  # the outcome's provider
    # The longest wait a provider that deferred recipients asked for (Retry-After,
    # X-RateLimit-Reset): the next attempt comes no sooner.
    retry_in: float = 0.0


class Deliverer:
    """Runs delivery rounds for the dispatcher; ``providers`` may be swapped after a reload."""

    def __init__(
        self, service: RelayService, providers: Mapping[str, Provider], rng: random.Random
    ) -> None:
        self.service = service
        self.providers = providers
        self.rng = rng
        # Candidates per workspace, kept while the config and ``providers`` stay the same.
        self._routes = routing.RouteCache()

    @property
    def config(self) -> Config:
        return self.service.config

    def run(
        self, message: ClaimedMessage, suppressed: suppression.Suppressed = ()
    ) -> Coroutine[Any, Any, tuple[Outcome, Notices]]:
        """Deliver to the recipients that are not suppressed; record the suppressed ones."""
        if not suppressed:
            # No wrapper coroutine: each resumption of the provider call crosses one frame less.
            return self.attempt(message)
        return self._run_suppressed(message, suppressed)

    async def _run_suppressed(
        self, message: ClaimedMessage, suppressed: suppression.Suppressed
    ) -> tuple[Outcome, Notices]:
        if not message.recipients:
            return suppression.all_suppressed(message, suppressed, self.service.clock()), NO_NOTICES
        outcome, notices = await self.attempt(message)
        return suppression.merge(outcome, suppressed), notices

    async def attempt(self, message: ClaimedMessage) -> tuple[Outcome, Notices]:
        """Try the routed providers in order; fail over on temporary and auth failures."""
        config = self.config
        if not message.recipients:
            # Every recipient already has a final status; nothing is left to send.
            return _finished_without_recipients(message, self.service.clock()), NO_NOTICES
        order = self._routes.order(
            config.providers, message.workspace_id, self.rng, available=self.providers
        )
        health = self.service.providers_state
        remaining = list(message.recipients)
        attempts: list[Attempt] = []
        statuses: list[tuple[str, str, str | None]] = []
        failures: list[Answer] = []
        accepted: list[Answer] = []
        deferred: dict[str, Answer] = {}
        skipped: list[tuple[str, Admission]] = []
        sent_via: str | None = None
        provider_message_id: str | None = None
        only_auth_errors = bool(order)
        retry_in = 0.0

        for pid in order:
            if not remaining:
                break
            admission = health.admit(pid)
            if not admission.allowed:
                skipped.append((pid, admission))
                continue
            # The provider call, inline (not in a helper coroutine) for the same reason as run.
            provider = self.providers[pid]
            attempted_at = self.service.clock()
            started = time.monotonic()
            try:
                # What the provider returned is checked here too: a result our code cannot
                # read or store is that provider's failure, not a crash of the round.
                result = _checked(await provider.send(Envelope.of(message, remaining)))
            except asyncio.CancelledError:
                if admission.probe:
                    health.abandon(pid)
                raise
            except Exception as exc:
                log.exception("provider %s failed unexpectedly on %s", pid, message.id)
                result = _checked(
                    DeliveryResult.uniform(
                        retry.TEMPORARY, remaining, reply=f"provider error: {describe(exc)}"
                    )
                )
            health.record(pid, result.outcome, result.reply)
            elapsed = int((time.monotonic() - started) * 1000)
            attempts.append(
                Attempt(pid, result.outcome, attempted_at, result.code, result.reply, elapsed)
            )
            if result.retry_in and result.by_outcome(retry.TEMPORARY):
                retry_in = max(retry_in, result.retry_in)
            by_address = {r.address: r for r in result.recipients}
            still: list[Recipient] = []
            for rcpt in remaining:
                rr = by_address.get(rcpt.address) or RecipientResult(
                    rcpt.address, result.outcome, result.code, result.reply
                )
                if rr.outcome == retry.SENT:
                    statuses.append((rcpt.address, "sent", None))
                    sent_via, provider_message_id = pid, result.provider_message_id
                    if rcpt.notify:  # no NOTIFY: no success DSN, nothing to keep
                        accepted.append(Answer(rcpt, rr, result.remote, result.dsn_relayed))
                elif rr.outcome == retry.PERMANENT:
                    failures.append(Answer(rcpt, rr, result.remote))
                else:
                    still.append(rcpt)
                    deferred[rcpt.address] = Answer(rcpt, rr, result.remote)
                    if rr.outcome == retry.TEMPORARY:
                        only_auth_errors = False
            remaining = still

        now = self.service.clock()
        if order and not attempts:
            return self._wait(message, skipped, now)
        if not order:
            reply = f"no enabled provider for workspace {message.workspace_id!r}"
            attempts.append(Attempt("none", retry.TEMPORARY, now, None, reply))
            for rcpt in remaining:
                deferred[rcpt.address] = Answer(
                    rcpt, RecipientResult(rcpt.address, retry.TEMPORARY, None, reply), None
                )
        decided = _Round(
            remaining=remaining,
            attempts=attempts,
            statuses=statuses,
            failures=failures,
            accepted=accepted,
            deferred=deferred,
            sent_via=sent_via,
            provider_message_id=provider_message_id,
            only_auth_errors=only_auth_errors,
            provider=sent_via or (attempts[-1].provider if order else None),
            retry_in=retry_in,
        )
        return self._conclude(message, decided, now)

    def crashed(
        self, message: ClaimedMessage, error: BaseException | str
    ) -> tuple[Outcome, Notices]:
        """The round of ``message`` that failed in our own code (``error``: the exception it
        raised, or what went wrong): a temporary failure of every recipient it was for, as
        if an upstream had answered so. It uses one of the message's retries (with the
        usual backoff), so a crash that comes back every time ends ``failed`` after
        ``max_retries``, with its DSN, instead of coming back every lease for ever.

        The stored reply names the exception (type and message, no traceback).
        """
        now = self.service.clock()
        why = error if isinstance(error, str) else describe(error)
        reply = _text(f"{INTERNAL_STATUS} relay error: {why}")[:MAX_DESCRIPTION]
        recipients = list(message.recipients)
        decided = _Round(
            remaining=recipients,
            attempts=[Attempt("none", retry.TEMPORARY, now, None, reply)],
            deferred={
                r.address: Answer(r, RecipientResult(r.address, retry.TEMPORARY, None, reply), None)
                for r in recipients
            },
        )
        return self._conclude(message, decided, now)

    def postponed(self, message: ClaimedMessage, error: BaseException) -> Outcome:
        """The round of ``message`` that could not start because the database was
        unavailable (``error``): nothing was sent, so it is requeued without using a retry,
        due again after ``queue.retry_base``, its error saying why it waits."""
        now = self.service.clock()
        return Outcome(
            message_id=message.id,
            lease_owner=message.lease_owner,
            status="queued",
            processed_at=now,
            retry_count=message.retry_count,
            next_attempt_at=now + timedelta(seconds=self.config.queue.retry_base.seconds),
            error=_text(f"{INTERNAL_STATUS} relay error: {describe(error)}")[:MAX_DESCRIPTION],
        )

    def _conclude(
        self, message: ClaimedMessage, decided: _Round, now: datetime
    ) -> tuple[Outcome, Notices]:
        """The outcome of a round from what its provider calls decided: the retry decision
        for the recipients still open, the message's status and error, and its DSNs."""
        config = self.config
        remaining, statuses, failures = decided.remaining, decided.statuses, decided.failures
        deferred, sent_via = decided.deferred, decided.sent_via
        retry_count = message.retry_count
        next_attempt_at: datetime | None = None
        max_retries = retry.effective_max_retries(message.max_retries, config.queue.max_retries)
        if remaining:
            kind = retry.AUTH_ERROR if decided.only_auth_errors else retry.TEMPORARY
            decision = retry.decide(
                kind,
                message.retry_count,
                max_retries,
                now,
                config.queue.retry_base.seconds,
                config.queue.retry_max.seconds,
                self.rng,
            )
            status, retry_count = decision.status, decision.retry_count
            next_attempt_at = decision.next_attempt_at
            if next_attempt_at is not None and decided.retry_in:
                # Not before the provider said it takes mail again.
                next_attempt_at = max(next_attempt_at, now + timedelta(seconds=decided.retry_in))
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

        if failures or (remaining and status != "failed"):
            still_deferred = [] if status == "failed" else [deferred[r.address] for r in remaining]
            error = _error_text([*failures, *still_deferred])
        else:
            error = None  # what _error_text says of no failure
        if status == "failed" and sent_via:
            # Accepted for some recipients this round: the message went out (as a provider's
            # own result is sent when any recipient was); the others failed one by one.
            status = "sent"
        delayed: list[ReportedRecipient] = []
        if next_attempt_at is not None and reports.delay_due(
            config, message, now, config.queue.delay_warning.seconds
        ):
            until = retry.retries_end(
                next_attempt_at,
                retry_count,
                max_retries,
                config.queue.retry_base.seconds,
                config.queue.retry_max.seconds,
            )
            delayed = reports.delayed([deferred[r.address] for r in remaining], until)
        relayed = tuple(reports.relayed(decided.accepted))
        notices = Notices(
            tuple(
                n
                for n in (
                    _notice(config, message, reports.failed(failures), now),
                    _notice(config, message, delayed, now),
                    _notice(config, message, relayed, now),
                )
                if n is not None
            ),
            relayed,
        )
        outcome = Outcome(
            message_id=message.id,
            lease_owner=message.lease_owner,
            status=status,
            processed_at=now,
            retry_count=retry_count,
            next_attempt_at=next_attempt_at,
            provider=decided.provider,
            provider_message_id=decided.provider_message_id,
            error=error,
            attempts=tuple(decided.attempts),
            recipient_status=tuple(statuses),
            dsn_delayed=bool(delayed),
        )
        return outcome, notices

    def _wait(
        self, message: ClaimedMessage, skipped: Sequence[tuple[str, Admission]], now: datetime
    ) -> tuple[Outcome, Notices]:
        """Every candidate was down or at its rate limit: requeue without using a retry.

        Waiting is time in the queue all the same: past ``queue.delay_warning`` the
        message owes its one delay DSN here as after a temporary failure.
        """
        delay = routing.wait_time(a.retry_in for _, a in skipped)
        all_down = all(a.reason == BREAKER_OPEN for _, a in skipped)
        # What the sender is told: the reasons without our provider ids.
        why = ", ".join(dict.fromkeys(a.reason for _, a in skipped))
        if all_down:
            error = f"{ALL_PROVIDERS_DOWN}: every provider is down; waiting {delay:.0f}s"
            reason = f"every provider is down ({why})"
        else:
            reasons = ", ".join(f"{pid}: {a.reason}" for pid, a in skipped)
            error = f"no provider can take the message now ({reasons}); waiting {delay:.0f}s"
            reason = f"no provider can take the message now ({why})"
        delayed: list[ReportedRecipient] = []
        if reports.delay_due(self.config, message, now, self.config.queue.delay_warning.seconds):
            delayed = reports.waiting(message.recipients, all_down, reason)
        notice = reports.notice(self.config, message, delayed, now)
        outcome = Outcome(
            message_id=message.id,
            lease_owner=message.lease_owner,
            status="queued",
            processed_at=now,
            retry_count=message.retry_count,
            next_attempt_at=now + timedelta(seconds=delay),
            error=error,
            dsn_delayed=bool(delayed),
        )
        return outcome, Notices((notice,) if notice is not None else ())

    def late_notice(
        self, message: ClaimedMessage, notices: Notices, delivered: Collection[str], now: datetime
    ) -> NewMessage | None:
        """The "relayed" DSN of a result that came after its lease was taken over, for the
        recipients in ``delivered`` (only it delivered to them); None when none asked."""
        reported = [r for r in notices.relayed if r.address in delivered]
        return _notice(self.config, message, reported, now)


def _finished_without_recipients(message: ClaimedMessage, now: datetime) -> Outcome:
    return Outcome(
        message_id=message.id,
        lease_owner=message.lease_owner,
        status="failed",
        processed_at=now,
        retry_count=message.retry_count,
        error="no recipients left to deliver",
    )


def _error_text(failures: Sequence[Answer]) -> str | None:
    parts = [f"{f.recipient.address}: {f.result.reply}" for f in failures]
    return "; ".join(parts)[:2000] if parts else None


def _utf8(text: str) -> str:
    """``text`` as valid Unicode: reply bytes that were not UTF-8 reach us as lone
    surrogates (decoded with surrogateescape), which neither database driver can store."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "replace").decode("utf-8")


def _text(text: str) -> str:
    """``text`` storable on both databases: valid Unicode (see :func:`_utf8`) without NUL,
    which PostgreSQL refuses in a text column (an upstream may well put one in a reply)."""
    return _utf8(text).replace("\x00", "\ufffd")


def _plain(text: str) -> bool:
    return text.isascii() and "\x00" not in text


def _checked(result: object) -> DeliveryResult:
    """A provider's result as the round can use and store it; usually itself.

    Not a :class:`DeliveryResult` (a provider bug): TypeError, which the round takes
    as that provider's temporary failure. Reply texts are made storable (see
    :func:`_text`) and the provider's message id is cut to its column's length.
    """
    if not isinstance(result, DeliveryResult):
        raise TypeError(f"send() returned {type(result).__name__}, not a DeliveryResult")
    pmid = result.provider_message_id
    if (
        _plain(result.reply)
        and all(_plain(r.reply) for r in result.recipients)
        and (pmid is None or (len(pmid) <= MAX_PROVIDER_MESSAGE_ID and _plain(pmid)))
    ):
        return result
    return dataclasses.replace(
        result,
        reply=_text(result.reply),
        recipients=tuple(dataclasses.replace(r, reply=_text(r.reply)) for r in result.recipients),
        provider_message_id=None if pmid is None else _text(pmid)[:MAX_PROVIDER_MESSAGE_ID],
    )


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line, for a stored error (no traceback)."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # a __str__ that fails in turn
        text = ""
    name = type(exc).__name__
    return _text(f"{name}: {text}" if text else name)[:MAX_DESCRIPTION]


def _notice(
    config: Config,
    message: ClaimedMessage,
    reported: Sequence[ReportedRecipient],
    now: datetime,
) -> NewMessage | None:
    """:func:`reports.notice`, except that a DSN our code fails to build is left out (and
    logged) rather than losing the outcome of a round whose recipients may have got it."""
    if not reported:
        return None
    try:
        return reports.notice(config, message, reported, now)
    except Exception:
        log.exception("could not build the DSN of %s; it is not sent", message.id)
        return None
