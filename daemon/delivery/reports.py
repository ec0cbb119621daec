"""The DSNs one delivery round owes the sender, as RFC 3461 NOTIFY asked.

Three kinds, each a message of its own covering every recipient of the round it
concerns: ``failed`` (a recipient will never be delivered; the default NOTIFY),
``relayed`` (a provider accepted a recipient whose NOTIFY has SUCCESS, and the
next hop did not take the DSN request over, so it may never report) and
``delayed`` (NOTIFY=DELAY, the message is deferred, after a temporary failure or
because no provider could take it, and has waited longer than
``queue.delay_warning``; once per message). All come from the null sender,
built by :func:`daemon.core.dsn.build_dsn`, and none is sent for a message from
``<>`` (a DSN never gets a DSN). The dispatcher queues them in the transaction
that records the outcome causing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from daemon.config import Config, relay_hostname
from daemon.core import bounces, dsn
from daemon.core.ids import message_id, uuid4
from daemon.core.message import ClaimedMessage, NewMessage, Recipient
from daemon.core.retry import enhanced_code
from daemon.providers.base import RecipientResult


@dataclass(frozen=True)
class Answer:
    """What a provider answered for one recipient, and where from (the DSN's Remote-MTA)."""

    recipient: Recipient
    result: RecipientResult
    remote: str | None
    # The next hop advertised DSN and took NOTIFY/ORCPT over: it reports success itself.
    dsn_passed_on: bool = False


def _reported(
    answer: Answer, action: str, status: str, will_retry_until: datetime | None = None
) -> dsn.ReportedRecipient:
    return dsn.ReportedRecipient(
        address=answer.recipient.address,
        status=status,
        diagnostic=answer.result.reply,
        orcpt=answer.recipient.orcpt,
        action=action,
        remote_mta=answer.remote,
        will_retry_until=will_retry_until,
    )


def failed(answers: Sequence[Answer]) -> list[dsn.ReportedRecipient]:
    """Recipients that failed for good and whose NOTIFY asks for it (no NOTIFY does)."""
    return [
        _reported(a, dsn.FAILED, dsn.status_code(a.result.code, a.result.reply, a.result.outcome))
        for a in answers
        if dsn.wants_report(a.recipient.notify, "failure")
    ]


def relayed(answers: Sequence[Answer]) -> list[dsn.ReportedRecipient]:
    """Accepted recipients with NOTIFY=SUCCESS whose next hop was not handed the request.

    A next hop that took the DSN parameters over reports delivery itself (RFC 3461
    section 5.2.1); one that did not may never report, so we say "relayed" (5.2.2).
    """
    return [
        _reported(a, dsn.RELAYED, _success_status(a.result.reply))
        for a in answers
        if not a.dsn_passed_on and dsn.wants_report(a.recipient.notify, "success")
    ]


def delayed(
    answers: Sequence[Answer], will_retry_until: datetime | None
) -> list[dsn.ReportedRecipient]:
    """Deferred recipients with NOTIFY=DELAY, with their last temporary error's status."""
    return [
        _reported(a, dsn.DELAYED, _temporary_status(a.result), will_retry_until)
        for a in answers
        if dsn.wants_report(a.recipient.notify, "delay")
    ]


# RFC 3463 status of a "delayed" report for a message that waits because no provider
# could even be tried. Every circuit open: the next hops stopped answering (that is what
# opened them), X.4.1 "No answer from host". Otherwise some provider is at its send budget,
# a limit of our own: X.4.5 "Mail system congestion", a persistent transient condition.
# Not X.7.x: that class is a security or policy refusal, and nothing refused the message.
NO_ANSWER = "4.4.1"
CONGESTION = "4.4.5"
# Diagnostic-Type of a reason that is not a remote reply (RFC 3464 2.3.6: "X-" names are
# free for such use, as Postfix's "X-Postfix").
WAITING_DIAGNOSTIC = "X-Relay"


def waiting(
    recipients: Sequence[Recipient], all_down: bool, reason: str
) -> list[dsn.ReportedRecipient]:
    """Recipients with NOTIFY=DELAY of a message no provider could take (all down or limited).

    No Remote-MTA and no Last-Attempt-Date: nothing was tried. No Will-Retry-Until
    either: waiting uses none of the message's retries, so no give-up time follows.
    """
    status = NO_ANSWER if all_down else CONGESTION
    return [
        dsn.ReportedRecipient(
            address=r.address,
            status=status,
            diagnostic=reason,
            orcpt=r.orcpt,
            action=dsn.DELAYED,
            diagnostic_type=WAITING_DIAGNOSTIC,
            attempted=False,
        )
        for r in recipients
        if dsn.wants_report(r.notify, "delay")
    ]


def may_report(config: Config, mail_from: str) -> bool:
    """Whether the sender of a message may get a DSN: not the null sender (a DSN never gets
    one), and not an address at our own bounce domain: mail there is read as a bounce of
    the message its VERP address names, so a DSN sent there would be taken for one."""
    return dsn.may_bounce(mail_from) and not bounces.at_domain(mail_from, config.bounces.domain)


def delay_due(
    config: Config, message: ClaimedMessage, now: datetime, warning_seconds: float
) -> bool:
    """Whether a message deferred now owes its delay DSN: on, not yet sent, waited long enough.

    The wait counts from when the message was due (its send_at, if scheduled).
    """
    if warning_seconds <= 0 or message.dsn_delayed or not may_report(config, message.mail_from):
        return False
    since = message.queued_at
    if message.send_at is not None and message.send_at > since:
        since = message.send_at
    return (now - since).total_seconds() > warning_seconds


def _success_status(reply: str) -> str:
    """The reply's own 2.x.x enhanced status, else 2.0.0."""
    enhanced = enhanced_code(reply)
    return enhanced if enhanced and enhanced.startswith("2.") else "2.0.0"


def _temporary_status(result: RecipientResult) -> str:
    """A "delayed" report's status is 4.x.x: a refusal we retry anyway (credentials) is too."""
    status = dsn.status_code(result.code, result.reply, result.outcome)
    return status if status.startswith("4.") else "4" + status[1:]


def notice(
    config: Config,
    message: ClaimedMessage,
    reported: Sequence[dsn.ReportedRecipient],
    now: datetime,
) -> NewMessage | None:
    """The DSN to the sender reporting ``reported``; None with nothing to report or no one
    to tell (see :func:`may_report`)."""
    if not reported or not may_report(config, message.mail_from):
        return None
    hostname = relay_hostname(config)
    report_id = message_id(int(now.timestamp() * 1000))
    subject = dsn.subject(reported)
    raw = dsn.build_dsn(
        original=message.raw,
        mail_from=message.mail_from,
        recipients=reported,
        hostname=hostname,
        arrival=message.queued_at,
        now=now,
        message_id=report_id,
        envid=message.dsn_envid,
        ret=message.dsn_ret,
    )
    return NewMessage(
        id=report_id,
        uuid=uuid4(),
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
        subject=subject,
        headers={"Message-ID": f"<{report_id}@{hostname}>"},
        metadata={"dsn_for": message.id, "dsn_action": reported[0].action},
    )
