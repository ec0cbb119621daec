"""The durable queue: enqueue, claim with a lease, complete, retry, cancel, list.

Functions take a Connection (inside the caller's transaction) or an Engine, and
use SQLAlchemy Core bulk statements: these run on the SMTP and delivery hot paths,
where the per-message ones go through :mod:`daemon.store.direct` (compiled once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from daemon.core.message import (
    CANCELLABLE_STATUSES,
    PENDING_STATUSES,
    RETRYABLE_STATUSES,
    STATUSES,
    ClaimedMessage,
    NewMessage,
    Outcome,
    Recipient,
)
from daemon.core.suppression import SUPPRESSED
from daemon.store import audience, counters
from daemon.store.direct import Direct, Prepared
from daemon.store.models import (
    delivery_attempts,
    message_content,
    message_recipients,
    messages,
)

# A message, or one recipient of it, that a provider took: ``sent``, or ``delivered`` once a
# provider's event confirmed it.
HANDED_OVER = ("sent", "delivered")

# Hot statements are built once: building a Core statement per call costs more
# than running it (cache-key generation, coercions) on the ingest and delivery paths.
_INSERT_MESSAGE = Direct(messages.insert(), columns_from_rows=True)
_INSERT_CONTENT = Direct(message_content.insert(), columns_from_rows=True)
_INSERT_RECIPIENT = Direct(message_recipients.insert(), columns_from_rows=True)
_INSERT_ATTEMPT = Direct(delivery_attempts.insert(), columns_from_rows=True)


def insert_messages(conn: Connection, batch: Sequence[NewMessage]) -> None:
    """Insert messages, their bytes and recipients with three executemany statements."""
    if batch:
        insert_prepared(conn, prepare_messages(conn.dialect, batch))


@dataclass(frozen=True)
class PreparedMessages:
    """The insert statements of a batch of messages with their driver parameters built."""

    batch: Sequence[NewMessage]
    messages: Prepared
    contents: Prepared
    recipients: Prepared  # each message's recipient rows, message after message

    def subset(self, indexes: Sequence[int]) -> PreparedMessages:
        """The same inserts for the messages at ``indexes`` only (in order)."""
        if len(indexes) == len(self.batch):
            return self
        starts = [0]
        for m in self.batch:
            starts.append(starts[-1] + len(m.recipients))
        rcpt_rows = [j for i in indexes for j in range(starts[i], starts[i + 1])]
        return PreparedMessages(
            [self.batch[i] for i in indexes],
            self.messages.subset(indexes),
            self.contents.subset(indexes),
            self.recipients.subset(rcpt_rows),
        )


def prepare_messages(dialect: Dialect, batch: Sequence[NewMessage]) -> PreparedMessages:
    """Build the insert parameters of ``batch`` (no database access: before the transaction)."""
    return PreparedMessages(
        batch,
        _INSERT_MESSAGE.prepare(
            dialect,
            [
                {
                    "id": m.id,
                    "uuid": m.uuid,
                    "workspace_id": m.workspace_id,
                    "campaign_id": m.campaign_id,
                    "user_id": m.user_id,
                    "source": m.source,
                    "mail_from": m.mail_from,
                    "from_header": m.from_header,
                    "to_addrs": m.to,
                    "cc_addrs": m.cc,
                    "bcc_addrs": m.bcc,
                    "subject": m.subject,
                    "headers": m.headers,
                    "attachments": m.attachments,
                    "metadata": m.metadata,
                    "priority": m.priority,
                    "status": m.status,
                    "size": len(m.raw),
                    "retry_count": 0,
                    "max_retries": m.max_retries,
                    "dsn_ret": m.dsn_ret,
                    "dsn_envid": m.dsn_envid,
                    "personalization": m.personalization,
                    "from_email_id": m.from_email_id,
                    "thread_id": m.thread_id,
                    "queued_at": m.queued_at,
                    "send_at": m.send_at,
                    "next_attempt_at": m.next_attempt_at,
                    "updated_at": m.queued_at,
                }
                for m in batch
            ],
        ),
        _INSERT_CONTENT.prepare(dialect, [{"message_id": m.id, "raw": m.raw} for m in batch]),
        _INSERT_RECIPIENT.prepare(
            dialect,
            [
                {
                    "message_id": m.id,
                    "address": r.address,
                    "status": "pending",
                    "notify": r.notify,
                    "orcpt": r.orcpt,
                }
                for m in batch
                for r in m.recipients
            ],
        ),
    )


def insert_prepared(conn: Connection, prepared: PreparedMessages) -> None:
    """Run the inserts :func:`prepare_messages` built, in the caller's transaction."""
    if not prepared.batch:
        return
    Direct.run_prepared(conn, prepared.messages)
    Direct.run_prepared(conn, prepared.contents)
    Direct.run_prepared(conn, prepared.recipients)
    counters.on_enqueued(conn, prepared.batch)


_PROMOTE_DUE = Direct(
    messages.update()
    .where(messages.c.status == "scheduled", messages.c.next_attempt_at <= sa.bindparam("now"))
    .values(status="queued", updated_at=sa.bindparam("now"))
)
_CLAIM_RETURNING = (
    messages.c.id,
    messages.c.mail_from,
    messages.c.workspace_id,
    messages.c.campaign_id,
    messages.c.retry_count,
    messages.c.max_retries,
    messages.c.dsn_ret,
    messages.c.dsn_envid,
    messages.c.queued_at,
    messages.c.priority,
    messages.c.next_attempt_at,
    messages.c.send_at,
    messages.c.dsn_delayed_at,
)
_CONTENT_COLUMNS = (message_content.c.message_id, message_content.c.raw)
_CLAIM_CONTENT = Direct(
    sa.select(*_CONTENT_COLUMNS).where(
        message_content.c.message_id.in_(sa.bindparam("ids", expanding=True))
    ),
    results=_CONTENT_COLUMNS,
)
_RECIPIENT_COLUMNS = (
    message_recipients.c.message_id,
    message_recipients.c.address,
    message_recipients.c.notify,
    message_recipients.c.orcpt,
)
_CLAIM_RECIPIENTS = Direct(
    sa.select(*_RECIPIENT_COLUMNS)
    .where(
        message_recipients.c.message_id.in_(sa.bindparam("ids", expanding=True)),
        message_recipients.c.status == "pending",
    )
    .order_by(message_recipients.c.id),
    results=_RECIPIENT_COLUMNS,
)


def _claim_statement(dialect: str) -> Any:
    """UPDATE ... RETURNING of up to ``:limit`` due messages."""
    due = (
        sa.select(messages.c.id)
        .where(messages.c.status == "queued", messages.c.next_attempt_at <= sa.bindparam("now"))
        .order_by(messages.c.priority, messages.c.next_attempt_at)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    if dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    return (
        messages.update()
        .where(messages.c.id.in_(due.scalar_subquery()))
        .values(
            status="processing",
            lease_owner=sa.bindparam("owner"),
            lease_until=sa.bindparam("lease_until"),
            updated_at=sa.bindparam("now"),
        )
        .returning(*_CLAIM_RETURNING)
    )


_CLAIM = Direct(_claim_statement, results=_CLAIM_RETURNING)


def claim(
    conn: Connection, now: datetime, limit: int, owner: str, lease: timedelta
) -> list[ClaimedMessage]:
    """Atomically move up to ``limit`` due messages to ``processing`` under ``owner``'s lease.

    PostgreSQL uses ``FOR UPDATE SKIP LOCKED`` so concurrent daemons never take
    the same row; SQLite serialises writers, so one UPDATE ... RETURNING is atomic.
    Scheduled messages that came due are first turned into queued ones, so the
    claim itself reads ``ix_messages_claim`` in order instead of sorting.
    """
    _PROMOTE_DUE.execute(conn, {"now": now})
    rows = _CLAIM.execute(
        conn, {"now": now, "limit": limit, "owner": owner, "lease_until": now + lease}
    )
    if not rows:
        return []
    rows.sort(key=lambda r: (r[9], r[10]))  # priority, next_attempt_at
    ids = [r[0] for r in rows]
    raw: dict[str, bytes] = dict(_CLAIM_CONTENT.execute(conn, {"ids": ids}))
    recipients: dict[str, list[Recipient]] = {i: [] for i in ids}
    for message_id, address, notify, orcpt in _CLAIM_RECIPIENTS.execute(conn, {"ids": ids}):
        recipients[message_id].append(Recipient(address, notify, orcpt))
    return [
        ClaimedMessage(
            id=id_,
            mail_from=mail_from,
            recipients=recipients[id_],
            raw=bytes(raw[id_]),
            workspace_id=workspace_id,
            campaign_id=campaign_id,
            retry_count=retry_count,
            max_retries=max_retries,
            dsn_ret=dsn_ret,
            dsn_envid=dsn_envid,
            lease_owner=owner,
            queued_at=queued_at,
            send_at=send_at,
            dsn_delayed=dsn_delayed_at is not None,
        )
        for (
            id_,
            mail_from,
            workspace_id,
            campaign_id,
            retry_count,
            max_retries,
            dsn_ret,
            dsn_envid,
            queued_at,
            _,
            _,
            send_at,
            dsn_delayed_at,
        ) in rows
    ]


_UPDATE_OUTCOME = Direct(
    messages.update()
    .where(messages.c.id == sa.bindparam("b_id"))
    .values(
        status=sa.bindparam("b_status"),
        processed_at=sa.bindparam("b_processed_at"),
        updated_at=sa.bindparam("b_processed_at"),
        retry_count=sa.bindparam("b_retry_count"),
        next_attempt_at=sa.bindparam("b_next_attempt_at"),
        # A round without a sending provider keeps the one an earlier round sent through.
        provider=sa.func.coalesce(sa.bindparam("b_provider"), messages.c.provider),
        provider_message_id=sa.func.coalesce(
            sa.bindparam("b_provider_message_id"), messages.c.provider_message_id
        ),
        error=sa.bindparam("b_error"),
        lease_owner=None,
        lease_until=None,
    )
)
# Rare (one delay DSN per message at most): plain SQLAlchemy, not a Direct statement.
_MARK_DSN_DELAYED = (
    messages.update()
    .where(messages.c.id == sa.bindparam("b_id"))
    .values(dsn_delayed_at=sa.bindparam("b_at"))
)
_UPDATE_RECIPIENT = Direct(
    message_recipients.update()
    .where(
        message_recipients.c.message_id == sa.bindparam("b_message_id"),
        message_recipients.c.address == sa.bindparam("b_address"),
    )
    .values(status=sa.bindparam("b_status"), error=sa.bindparam("b_error"))
)


_LEASE_COLUMNS = (
    messages.c.id,
    messages.c.lease_owner,
    messages.c.workspace_id,
    messages.c.campaign_id,
)


def _leases_statement(dialect: str) -> Any:
    """Who holds the lease of each of ``:ids`` still processing (rows locked on PostgreSQL)."""
    current = sa.select(*_LEASE_COLUMNS).where(
        messages.c.id.in_(sa.bindparam("ids", expanding=True)), messages.c.status == "processing"
    )
    if dialect == "postgresql":
        current = current.with_for_update()
    return current


_LEASES = Direct(_leases_statement, results=_LEASE_COLUMNS)


def _keep_earlier_deliveries(
    conn: Connection, applied: list[tuple[Outcome, str, str | None]]
) -> list[tuple[Outcome, str, str | None]]:
    """A message that fails for good after an earlier round delivered to some of its
    recipients stays ``sent``, through the provider that sent it: its status must not
    depend on whether those recipients were accepted in the same round as the failures."""
    failed = [o.message_id for o, _, _ in applied if o.status == "failed"]
    if not failed:
        return applied
    delivered = set(
        conn.execute(
            sa.select(message_recipients.c.message_id)
            .where(
                message_recipients.c.message_id.in_(failed),
                message_recipients.c.status == "sent",
            )
            .distinct()
        ).scalars()
    )
    if not delivered:
        return applied
    return [
        (
            dataclasses.replace(o, status="sent", provider=None, provider_message_id=None)
            if o.message_id in delivered
            else o,
            workspace_id,
            campaign_id,
        )
        for o, workspace_id, campaign_id in applied
    ]


def apply_outcomes(
    conn: Connection, outcomes: Sequence[Outcome], settled: dict[str, set[str]] | None = None
) -> int:
    """Record delivery results. A result whose lease was lost (another worker took the
    message over) is stale: it keeps its attempts, but leaves the message to the newer
    delivery (see :func:`_settle_stale`); ``settled``, when given, receives the
    recipients stale results delivered that no other delivery had (by message id).

    One SELECT checks every lease, then each table gets one executemany: this runs
    for every delivered message, so it must not cost a statement per row.
    Returns how many messages were updated (stale results not counted).
    """
    if not outcomes:
        return 0
    by_id = {o.message_id: o for o in outcomes}
    applied: list[tuple[Outcome, str, str | None]] = [
        (by_id[message_id], workspace_id, campaign_id)
        for message_id, lease_owner, workspace_id, campaign_id in _LEASES.execute(
            conn, {"ids": list(by_id)}
        )
        if lease_owner == by_id[message_id].lease_owner
    ]
    if len(applied) < len(by_id):
        held = {o.message_id for o, _, _ in applied}
        newly = _settle_stale(conn, [o for o in by_id.values() if o.message_id not in held])
        if settled is not None:
            for message_id, address in newly:
                settled.setdefault(message_id, set()).add(address)
    if not applied:
        return 0
    applied = _keep_earlier_deliveries(conn, applied)
    _UPDATE_OUTCOME.executemany(
        conn,
        [
            {
                "b_id": o.message_id,
                "b_status": o.status,
                "b_processed_at": o.processed_at,
                "b_retry_count": o.retry_count,
                "b_next_attempt_at": o.next_attempt_at or o.processed_at,
                "b_provider": o.provider,
                "b_provider_message_id": o.provider_message_id,
                "b_error": o.error,
            }
            for o, _, _ in applied
        ],
    )
    delayed = [
        {"b_id": o.message_id, "b_at": o.processed_at} for o, _, _ in applied if o.dsn_delayed
    ]
    if delayed:
        conn.execute(_MARK_DSN_DELAYED, delayed)
    recipient_rows = [
        {"b_message_id": o.message_id, "b_address": address, "b_status": status, "b_error": error}
        for o, _, _ in applied
        for address, status, error in o.recipient_status
    ]
    if recipient_rows:
        _UPDATE_RECIPIENT.executemany(conn, recipient_rows)
    _insert_attempts(conn, [o for o, _, _ in applied])
    counters.on_outcomes(conn, applied)
    return len(applied)


def _insert_attempts(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    rows = [
        {
            "message_id": o.message_id,
            "attempted_at": a.attempted_at,
            "provider": a.provider,
            "outcome": a.outcome,
            "code": a.code,
            "reply": a.reply[:2000],
            "duration_ms": a.duration_ms,
        }
        for o in outcomes
        for a in o.attempts
    ]
    if rows:
        _INSERT_ATTEMPT.executemany(conn, rows)


# Stale results are rare: plain SQLAlchemy statements, not Direct ones.
_MESSAGE_STATES = sa.select(
    messages.c.id, messages.c.status, messages.c.workspace_id, messages.c.campaign_id
).where(messages.c.id.in_(sa.bindparam("ids", expanding=True)))
_STILL_PENDING = sa.select(message_recipients.c.message_id, message_recipients.c.address).where(
    message_recipients.c.message_id.in_(sa.bindparam("ids", expanding=True)),
    message_recipients.c.status == "pending",
)
# The recipients of a message that did not get it (their errors make the message's).
_UNDELIVERED_ERRORS = (
    sa.select(message_recipients.c.address, message_recipients.c.error)
    .where(
        message_recipients.c.message_id == sa.bindparam("id"),
        message_recipients.c.status.not_in(HANDED_OVER),
    )
    .order_by(message_recipients.c.id)
)


# A message waiting for a retry that a stale result delivered to its last open recipients.
_FINISH_STALE = (
    messages.update()
    .where(messages.c.id == sa.bindparam("b_id"), messages.c.status == "queued")
    .values(
        status="sent",
        processed_at=sa.bindparam("b_at"),
        updated_at=sa.bindparam("b_at"),
        next_attempt_at=sa.bindparam("b_at"),
        provider=sa.func.coalesce(sa.bindparam("b_provider"), messages.c.provider),
        provider_message_id=sa.func.coalesce(
            sa.bindparam("b_provider_message_id"), messages.c.provider_message_id
        ),
        error=sa.bindparam("b_error"),
        lease_owner=None,
        lease_until=None,
    )
)


def _settle_stale(conn: Connection, stale: Sequence[Outcome]) -> set[tuple[str, str]]:
    """Results of deliveries whose lease another worker took over (the renewal failed, say,
    while the database was out of reach): that worker's result is the message's state.

    A stale result still talked to its providers: its attempts are kept, so the history
    shows every try (a second delivery among them). It never overwrites what the newer
    delivery decided; it settles only what is still open. Recipients it delivered to that
    are still ``pending`` become ``sent``, so no later round sends to them again; and a
    message waiting for a retry (``queued``) that no recipient is pending for any longer
    is finished: ``sent``, through the stale result's provider, its error naming the
    recipients that did not get it, if any. A message being delivered by the other
    worker right now is left to that worker's result.

    Returns the (message id, address) pairs it made ``sent``: only the stale result
    delivered to them, so only it can report that (a NOTIFY=SUCCESS DSN, which the
    caller queues); its other DSNs are the newer delivery's to decide.
    """
    states = _MESSAGE_STATES
    if conn.dialect.name == "postgresql":
        states = states.with_for_update()  # no claim takes them meanwhile
    ids = [o.message_id for o in stale]
    rows = {r.id: tuple(r) for r in conn.execute(states, {"ids": ids})}
    stale = [o for o in stale if o.message_id in rows]  # not deleted meanwhile
    _insert_attempts(conn, stale)
    delivered = {
        (o.message_id, address)
        for o in stale
        for address, status, _ in o.recipient_status
        if status == "sent"
    }
    if not delivered:
        return set()
    found = conn.execute(_STILL_PENDING, {"ids": sorted({m for m, _ in delivered})})
    pending = {(message_id, address) for message_id, address in found}
    newly = delivered & pending
    if not newly:
        return set()
    _UPDATE_RECIPIENT.executemany(
        conn,
        [
            {"b_message_id": m, "b_address": a, "b_status": "sent", "b_error": None}
            for m, a in sorted(newly)
        ],
    )
    open_ids = {m for m, _ in pending - newly}
    counted: list[tuple[Outcome, str, str | None]] = []
    for o in stale:
        sent = tuple((a, "sent", None) for m, a in sorted(newly) if m == o.message_id)
        if not sent:
            continue
        _, status_now, workspace_id, campaign_id = rows[o.message_id]
        finished = status_now == "queued" and o.message_id not in open_ids
        if finished:
            errors = conn.execute(_UNDELIVERED_ERRORS, {"id": o.message_id}).all()
            error = "; ".join(f"{a}: {e}" for a, e in errors if e)[:2000] or None
            conn.execute(
                _FINISH_STALE,
                {
                    "b_id": o.message_id,
                    "b_at": o.processed_at,
                    "b_provider": o.provider,
                    "b_provider_message_id": o.provider_message_id,
                    "b_error": error,
                },
            )
        # Counted as delivered; the message as finished only when it is ("processing" is
        # one of the pending statuses, which the campaign counters do not see finish).
        status = "sent" if finished else "processing"
        counted.append(
            (
                Outcome(
                    o.message_id, o.lease_owner, status, o.processed_at, 0, recipient_status=sent
                ),
                workspace_id,
                campaign_id,
            )
        )
    counters.on_outcomes(conn, counted)
    return newly


def release(conn: Connection, owner: str, now: datetime) -> int:
    """Hand back every lease ``owner`` holds (clean shutdown)."""
    return int(
        conn.execute(
            messages.update()
            .where(messages.c.status == "processing", messages.c.lease_owner == owner)
            .values(status="queued", lease_owner=None, lease_until=None, updated_at=now)
        ).rowcount
    )


def renew(conn: Connection, owner: str, ids: Sequence[str], now: datetime, lease: timedelta) -> int:
    """Extend ``owner``'s lease on the messages ``ids`` it is still delivering.

    A delivery may outlast one lease (slow upstreams, failover through several
    providers): without renewal another worker would reap and deliver it again
    while the first is still sending. Returns how many leases were still held.
    """
    if not ids:
        return 0
    return int(
        conn.execute(
            messages.update()
            .where(
                messages.c.id.in_(list(ids)),
                messages.c.status == "processing",
                messages.c.lease_owner == owner,
            )
            .values(lease_until=now + lease)
        ).rowcount
    )


def reap_expired(conn: Connection, now: datetime) -> int:
    """Return messages whose worker died (lease expired) to the queue."""
    return int(
        conn.execute(
            messages.update()
            .where(messages.c.status == "processing", messages.c.lease_until < now)
            .values(status="queued", lease_owner=None, lease_until=None, updated_at=now)
        ).rowcount
    )


_NEXT_DUE = Direct(
    sa.select(sa.func.min(messages.c.next_attempt_at)).where(
        # Constants in the SQL text (no IN-list parameters to expand per call).
        messages.c.status.in_([sa.literal_column("'queued'"), sa.literal_column("'scheduled'")])
    ),
    results=[messages.c.next_attempt_at],
)


def next_due(conn: Connection) -> datetime | None:
    """When the earliest waiting message becomes due (to sleep exactly that long)."""
    value: datetime | None = _NEXT_DUE.execute(conn)[0][0]
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


class InvalidState(Exception):
    """The message exists but is not in a state that allows the operation."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def cancel(
    conn: Connection, message_id: str, now: datetime, workspace_id: str | None = None
) -> bool:
    """Cancel a queued or scheduled message. False: not found; InvalidState: wrong status."""
    cond = [messages.c.id == message_id]
    if workspace_id is not None:
        cond.append(messages.c.workspace_id == workspace_id)
    done = conn.execute(
        messages.update()
        .where(*cond, messages.c.status.in_(CANCELLABLE_STATUSES))
        .values(status="cancelled", updated_at=now, processed_at=now)
        .returning(messages.c.workspace_id, messages.c.campaign_id)
    ).first()
    if done is not None:
        counters.on_pending_changed(conn, done.workspace_id, done.campaign_id, -1, now)
        return True
    status = conn.execute(sa.select(messages.c.status).where(*cond)).scalar()
    if status is None:
        return False
    raise InvalidState(status)


class AllSuppressed(InvalidState):
    """A retry that could deliver to nobody: every recipient left is suppressed now."""

    def __init__(self, status: str, suppressed: Sequence[tuple[str, str]]) -> None:
        super().__init__(status)
        self.suppressed = tuple(suppressed)  # (address, why)


# Recipients a retry sends to again: those not delivered, and the suppressed ones,
# whose suppression delivery checks afresh (it may have been lifted since).
RETRIED_RECIPIENT_STATUSES = (*RETRYABLE_STATUSES, SUPPRESSED)
_UNDELIVERED = ("pending", *RETRIED_RECIPIENT_STATUSES)


def _refuse_if_all_suppressed(
    conn: Connection, message_id: str, workspace_id: str, status: str
) -> None:
    """AllSuppressed when every recipient a retry would send to is suppressed now."""
    addresses = list(
        conn.execute(
            sa.select(message_recipients.c.address).where(
                message_recipients.c.message_id == message_id,
                message_recipients.c.status.in_(_UNDELIVERED),
            )
        ).scalars()
    )
    if not addresses:
        return
    found = audience.suppressed_addresses(conn, [(workspace_id, a) for a in addresses])
    reasons = [found.get((workspace_id, audience.normalize(a))) for a in addresses]
    if all(reason is not None for reason in reasons):
        raise AllSuppressed(
            status, [(a, r) for a, r in zip(addresses, reasons, strict=True) if r is not None]
        )


def retry(
    conn: Connection, message_id: str, now: datetime, workspace_id: str | None = None
) -> dict[str, Any] | None:
    """Requeue a message now for the recipients that did not get it (see :func:`requeue`);
    returns its id, status and retry_count.

    None: not found; InvalidState: wrong status (or ``sent`` to every recipient);
    AllSuppressed: every recipient it would go to is suppressed (requeued, it would only
    fail again).
    """
    cond = [messages.c.id == message_id]
    if workspace_id is not None:
        cond.append(messages.c.workspace_id == workspace_id)
    current = conn.execute(
        sa.select(messages.c.status, messages.c.workspace_id).where(*cond)
    ).first()
    if current is None:
        return None
    if current.status in RETRYABLE_STATUSES or current.status in HANDED_OVER:
        _refuse_if_all_suppressed(conn, message_id, current.workspace_id, current.status)
    requeued = requeue(conn, cond, now)
    if requeued:
        (row,) = requeued
        return {"message_id": row.id, "status": row.status, "retry_count": row.retry_count}
    status = conn.execute(sa.select(messages.c.status).where(*cond)).scalar()
    if status is None:
        return None
    raise InvalidState(status)


# What a retry requeues: a failed or auth_error message, or one a provider took for some
# recipients only (``sent``: a partial delivery) while others failed for good, ran out of
# retries or were suppressed. Only those recipients are sent to again.
def partly_delivered(statuses: Sequence[str] = HANDED_OVER) -> sa.ColumnElement[bool]:
    """Messages in ``statuses`` (handed over) with recipients a retry would send to."""
    return sa.and_(
        messages.c.status.in_(statuses),
        sa.exists().where(
            message_recipients.c.message_id == messages.c.id,
            message_recipients.c.status.in_(RETRIED_RECIPIENT_STATUSES),
        ),
    )


_RETRYABLE = sa.or_(messages.c.status.in_(RETRYABLE_STATUSES), partly_delivered())


def requeue(conn: Connection, where: Sequence[sa.ColumnElement[bool]], now: datetime) -> list[Any]:
    """Queue the messages matching ``where`` that a retry takes (failed or auth_error, or
    handed over to some recipients only) again, due now: one more retry counted, their
    campaigns have them pending again (their recipients' earlier failures no longer
    count), and their failed, auth_error and suppressed recipients are pending (delivery
    checks suppression afresh). Recipients a provider took (sent, delivered) stay so:
    the retry never sends to them again, and a retry that ends without delivering to
    the others leaves the message ``sent``. Returns the requeued rows (id, status,
    retry_count, workspace_id, campaign_id)."""
    rows = conn.execute(
        messages.update()
        .where(*where, _RETRYABLE)
        .values(
            status="queued",
            retry_count=messages.c.retry_count + 1,
            next_attempt_at=now,
            error=None,
            updated_at=now,
        )
        .returning(
            messages.c.id,
            messages.c.status,
            messages.c.retry_count,
            messages.c.workspace_id,
            messages.c.campaign_id,
        )
    ).all()
    if not rows:
        return []
    failures = counters.failed_recipients(conn, [r.id for r in rows if r.campaign_id])
    for (workspace_id, campaign_id), group in counters.by_campaign(rows).items():
        retried = sum(failures.get(r.id, 0) for r in group)
        counters.on_pending_changed(conn, workspace_id, campaign_id, len(group), now, retried)
    conn.execute(
        message_recipients.update()
        .where(
            message_recipients.c.message_id.in_([r.id for r in rows]),
            message_recipients.c.status.in_(RETRIED_RECIPIENT_STATUSES),
        )
        .values(status="pending", error=None)
    )
    return list(rows)


@dataclass(frozen=True)
class ListFilter:
    """Filters of ``GET /api/messages``."""

    status: str | None = None
    workspace_id: str | None = None
    mail_from: str | None = None
    to: str | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None


def _filter_conditions(f: ListFilter) -> list[sa.ColumnElement[bool]]:
    cond: list[sa.ColumnElement[bool]] = []
    if f.status:
        cond.append(messages.c.status == f.status)
    if f.workspace_id:
        cond.append(messages.c.workspace_id == f.workspace_id)
    if f.mail_from:
        # The envelope sender, or the From header holding it; "%" and "_" are literal, and
        # case does not count on either database (a LIKE only ignores it on SQLite).
        sender = f.mail_from.lower()
        cond.append(
            sa.or_(
                sa.func.lower(messages.c.mail_from) == sender,
                sa.func.lower(messages.c.from_header).contains(sender, autoescape=True),
            )
        )
    if f.to:
        # Any envelope recipient (to, cc or bcc), case ignored through the index on
        # lower(address); the database lowers both sides, so they fold alike.
        cond.append(
            messages.c.id.in_(
                sa.select(message_recipients.c.message_id).where(
                    sa.func.lower(message_recipients.c.address) == sa.func.lower(f.to)
                )
            )
        )
    if f.date_from:
        cond.append(messages.c.queued_at >= f.date_from)
    if f.date_to:
        cond.append(messages.c.queued_at <= f.date_to)
    return cond


SUMMARY_COLUMNS = (
    messages.c.id,
    messages.c.uuid,
    messages.c.mail_from,
    messages.c.from_header,
    messages.c.to_addrs,
    messages.c.cc_addrs,
    messages.c.bcc_addrs,
    messages.c.subject,
    messages.c.status,
    messages.c.workspace_id,
    messages.c.campaign_id,
    messages.c.user_id,
    messages.c.queued_at,
    messages.c.send_at,
    messages.c.next_attempt_at,
    messages.c.processed_at,
    messages.c.error,
    messages.c.retry_count,
    messages.c.metadata,
    messages.c.priority,
    messages.c.provider,
    messages.c.provider_message_id,
    messages.c.headers,
    messages.c.attachments,
    messages.c.size,
    messages.c.source,
)


def list_messages(
    conn: Connection, f: ListFilter, limit: int, offset: int
) -> tuple[list[Any], int]:
    """A page of messages, newest first, and the total matching count."""
    cond = _filter_conditions(f)
    rows = conn.execute(
        sa.select(*SUMMARY_COLUMNS)
        .where(*cond)
        .order_by(messages.c.queued_at.desc(), messages.c.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    total = conn.execute(sa.select(sa.func.count()).select_from(messages).where(*cond)).scalar_one()
    return list(rows), int(total)


def get_message(conn: Connection, message_id: str) -> Any:
    return conn.execute(sa.select(*SUMMARY_COLUMNS).where(messages.c.id == message_id)).first()


def get_raw(conn: Connection, message_id: str) -> bytes | None:
    raw = conn.execute(
        sa.select(message_content.c.raw).where(message_content.c.message_id == message_id)
    ).scalar()
    return None if raw is None else bytes(raw)


def get_recipients(conn: Connection, message_id: str) -> list[Any]:
    return list(
        conn.execute(
            sa.select(message_recipients)
            .where(message_recipients.c.message_id == message_id)
            .order_by(message_recipients.c.id)
        ).all()
    )


def get_attempts(conn: Connection, message_id: str) -> list[Any]:
    return list(
        conn.execute(
            sa.select(delivery_attempts)
            .where(delivery_attempts.c.message_id == message_id)
            .order_by(delivery_attempts.c.id)
        ).all()
    )


def count_by_status(conn: Connection, workspace_id: str | None = None) -> dict[str, int]:
    """How many messages are in each status (every status present, zero when none)."""
    query = sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status)
    if workspace_id is not None:
        query = query.where(messages.c.workspace_id == workspace_id)
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in conn.execute(query):
        counts[status] = int(n)
    return counts


def pending_depth(conn: Connection) -> int:
    """Messages not yet finished (queued, scheduled, processing)."""
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(messages)
            .where(messages.c.status.in_(PENDING_STATUSES))
        ).scalar_one()
    )
