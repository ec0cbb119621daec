"""Campaign counters and recipient engagement, kept current as mail moves.

Every function runs inside the caller's transaction, so a counter changes
exactly when the message change it reflects commits. The queue calls:

- :func:`on_enqueued` from ``queue.insert_messages`` (a campaign comes into
  being with its first message; counts messages, pending messages, recipients);
- :func:`on_outcomes` from ``queue.apply_outcomes`` (per recipient: handed to a
  provider counts ``sent`` and ``delivered``, refused for good counts ``sent``
  and ``bounced``, so ``sent == delivered + bounced``; a message leaving the
  pending statuses brings the campaign nearer ``completed``);
- :func:`on_pending_changed` from ``queue.cancel`` (-1) and ``queue.retry`` (+1).

Engagement events (issue 7: webhooks, tracking pixel, click and unsubscribe
links) call :func:`record_event` inside their own transaction::

    committer.run(lambda c: counters.record_event(
        c, workspace_id="ws-1", email="a@b.c", event="opened", at=now,
        campaign_id="camp-1", unique=first_open_of_this_recipient))

``event`` is one of :data:`EVENTS`. Campaign counters move only when ``unique``
is true (one open per recipient, as open_rate = opened / delivered implies);
the recipient's totals move every time. ``delivered`` changes no campaign
counter (a hand-over already counted it) and ``bounced`` moves one recipient
from delivered to bounced (a bounce after the provider accepted). Unsubscribe,
complaint and hard bounce suppress the recipient (``reason`` is recorded).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from daemon.core.message import PENDING_STATUSES, STATUSES, NewMessage, Outcome
from daemon.store.audience import campaigns, normalize, recipients
from daemon.store.direct import Direct
from daemon.store.models import message_recipients, messages

EVENTS = ("delivered", "opened", "clicked", "unsubscribed", "complained", "bounced")
_CAMPAIGN_COLUMN = {"opened": "opened", "clicked": "clicked"}
_CAMPAIGN_COLUMN.update(unsubscribed="unsubscribed", complained="complained", bounced="bounced")
_DEFAULT_REASON = {
    "unsubscribed": "unsubscribed",
    "complained": "spam complaint",
    "bounced": "hard bounce",
}


def _ensure_campaign(conn: Connection, workspace_id: str, campaign_id: str, at: datetime) -> None:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        insert(campaigns)
        .values(workspace_id=workspace_id, id=campaign_id, created_at=at, updated_at=at)
        .on_conflict_do_nothing()
    )


def _where(workspace_id: str, campaign_id: str) -> Any:
    return sa.and_(campaigns.c.workspace_id == workspace_id, campaigns.c.id == campaign_id)


def on_enqueued(conn: Connection, batch: Sequence[NewMessage]) -> None:
    """Count newly queued campaign messages (bounces the relay generates do not count)."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for m in batch:
        if m.campaign_id is None or m.source == "dsn":
            continue
        group = groups.setdefault((m.workspace_id, m.campaign_id), [0, 0, 0, m.queued_at])
        group[0] += 1
        group[1] += int(m.status in PENDING_STATUSES)
        group[2] += len(m.recipients)
        group[3] = min(group[3], m.queued_at)
    c = campaigns.c
    for (workspace_id, campaign_id), (count, pending, rcpts, at) in groups.items():
        _ensure_campaign(conn, workspace_id, campaign_id, at)
        conn.execute(
            campaigns.update()
            .where(_where(workspace_id, campaign_id))
            .values(
                messages=c.messages + count,
                pending=c.pending + pending,
                total_recipients=c.total_recipients + rcpts,
                completed_at=None if pending else c.completed_at,
                updated_at=at,
            )
        )


_ADD_RECEIVED = Direct(
    recipients.update()
    .where(
        recipients.c.workspace_id == sa.bindparam("ws"), recipients.c.email == sa.bindparam("em")
    )
    .values(total_received=recipients.c.total_received + sa.bindparam("n"))
)


def on_outcomes(conn: Connection, applied: Sequence[tuple[Outcome, str, str | None]]) -> None:
    """Count delivery results: ``applied`` holds (outcome, workspace_id, campaign_id)."""
    deltas: dict[tuple[str, str], list[Any]] = {}
    received: dict[tuple[str, str], int] = defaultdict(int)
    for outcome, workspace_id, campaign_id in applied:
        sent = [a for a, status, _ in outcome.recipient_status if status == "sent"]
        failed = sum(1 for _, status, _ in outcome.recipient_status if status == "failed")
        for address in sent:
            received[(workspace_id, normalize(address))] += 1
        if campaign_id is None:
            continue
        delta = deltas.setdefault((workspace_id, campaign_id), [0, 0, 0, outcome.processed_at])
        delta[0] += len(sent)
        delta[1] += failed
        delta[2] += int(outcome.status not in PENDING_STATUSES)
        delta[3] = max(delta[3], outcome.processed_at)
    c = campaigns.c
    for (workspace_id, campaign_id), (sent_n, failed_n, finished, at) in deltas.items():
        conn.execute(
            campaigns.update()
            .where(_where(workspace_id, campaign_id))
            .values(
                sent=c.sent + sent_n + failed_n,
                delivered=c.delivered + sent_n,
                bounced=c.bounced + failed_n,
                pending=c.pending - finished,
                started_at=sa.func.coalesce(c.started_at, at),
                completed_at=sa.case((c.pending - finished <= 0, at), else_=c.completed_at)
                if finished
                else c.completed_at,
                updated_at=at,
            )
        )
    if received:
        _ADD_RECEIVED.executemany(
            conn, [{"ws": ws, "em": email, "n": n} for (ws, email), n in received.items()]
        )


def by_campaign(rows: Sequence[Any]) -> dict[tuple[str, str], list[Any]]:
    """Message rows (with workspace_id and campaign_id) of campaigns, grouped by campaign."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        if row.campaign_id is not None:
            groups.setdefault((row.workspace_id, row.campaign_id), []).append(row)
    return groups


def on_pending_changed(
    conn: Connection,
    workspace_id: str,
    campaign_id: str | None,
    delta: int,
    at: datetime,
    retried_failures: int = 0,
) -> None:
    """Messages of the campaign left (``delta`` < 0, cancelled) or re-entered (> 0,
    retried) the queue. ``retried_failures``: recipients a retry sends to again whose
    earlier failure counted as ``sent`` and ``bounced``; their next outcome counts
    afresh, so those counts drop now (else sent could pass total_recipients)."""
    if campaign_id is None:
        return
    c = campaigns.c
    values: dict[str, Any] = {
        "pending": c.pending + delta,
        "completed_at": sa.case((c.pending + delta <= 0, at), else_=None),
        "updated_at": at,
    }
    if retried_failures:
        n = retried_failures
        values["sent"] = sa.case((c.sent > n, c.sent - n), else_=0)
        values["bounced"] = sa.case((c.bounced > n, c.bounced - n), else_=0)
    conn.execute(campaigns.update().where(_where(workspace_id, campaign_id)).values(values))


def failed_recipients(conn: Connection, message_ids: Sequence[str]) -> dict[str, int]:
    """How many recipients of each message ended ``failed`` (counted as bounced)."""
    if not message_ids:
        return {}
    rows = conn.execute(
        sa.select(message_recipients.c.message_id, sa.func.count())
        .where(
            message_recipients.c.message_id.in_(message_ids),
            message_recipients.c.status == "failed",
        )
        .group_by(message_recipients.c.message_id)
    ).all()
    return {message_id: int(n) for message_id, n in rows}


def record_event(
    conn: Connection,
    *,
    workspace_id: str,
    email: str,
    event: str,
    at: datetime,
    campaign_id: str | None = None,
    unique: bool = True,
    bounce_type: str = "hard",
    reason: str | None = None,
) -> None:
    """Count one engagement event on the campaign and the recipient (see the module doc)."""
    if event not in EVENTS:
        raise ValueError(f"unknown engagement event {event!r}")
    column = _CAMPAIGN_COLUMN.get(event)
    if campaign_id is not None and unique and column is not None:
        c = campaigns.c
        values: dict[str, Any] = {column: c[column] + 1, "updated_at": at}
        if event == "bounced":
            values["delivered"] = sa.case((c.delivered > 0, c.delivered - 1), else_=0)
        conn.execute(campaigns.update().where(_where(workspace_id, campaign_id)).values(values))
    r = recipients.c
    changes: dict[str, Any] = {}
    if event == "opened":
        changes = {"total_opened": r.total_opened + 1, "last_open_date": at}
    elif event == "clicked":
        changes = {"total_clicked": r.total_clicked + 1, "last_click_date": at}
    elif event == "bounced":
        changes = {"bounce_count": r.bounce_count + 1, "last_bounce_date": at}
        changes["bounce_type"] = bounce_type
    suppress = {"unsubscribed": "UNSUBSCRIBED", "complained": "COMPLAINED"}.get(event)
    if event == "bounced" and bounce_type == "hard":
        suppress = "BOUNCED"
    if suppress is not None:
        changes.update(
            status=suppress,
            suppression_reason=reason or _DEFAULT_REASON[event],
            suppressed_at=at,
        )
        if event == "unsubscribed":
            changes["opt_out_date"] = at
    if changes:
        changes["updated_at"] = at
        conn.execute(
            recipients.update()
            .where(r.workspace_id == workspace_id, r.email == normalize(email))
            .values(changes)
        )


def find_campaigns(conn: Connection, campaign_id: str, workspace_id: str | None) -> list[Any]:
    """The campaign rows named ``campaign_id`` (in one workspace, or in any)."""
    query = sa.select(campaigns).where(campaigns.c.id == campaign_id)
    if workspace_id is not None:
        query = query.where(campaigns.c.workspace_id == workspace_id)
    return list(conn.execute(query.limit(2)).all())


def rename_campaign(
    conn: Connection, workspace_id: str, campaign_id: str, name: str, at: datetime
) -> Any:
    """Set a campaign's name; None when it does not exist."""
    return conn.execute(
        campaigns.update()
        .where(_where(workspace_id, campaign_id))
        .values(name=name, updated_at=at)
        .returning(campaigns)
    ).first()


def _scoped(query: Any, workspace_id: str | None) -> Any:
    return query if workspace_id is None else query.where(messages.c.workspace_id == workspace_id)


def queued_since(conn: Connection, since: datetime, workspace_id: str | None = None) -> int:
    """Messages queued at or after ``since`` (today's use of the daily quota).

    Naming every status lets the (status, queued_at) indexes answer with a few
    range scans instead of reading the whole table.
    """
    query = (
        sa.select(sa.func.count())
        .select_from(messages)
        .where(messages.c.status.in_(STATUSES), messages.c.queued_at >= since)
    )
    return int(conn.execute(_scoped(query, workspace_id)).scalar_one())


def pending_depth(conn: Connection, workspace_id: str | None = None) -> int:
    """Messages still waiting or in delivery (queued, scheduled, processing)."""
    query = (
        sa.select(sa.func.count())
        .select_from(messages)
        .where(messages.c.status.in_(PENDING_STATUSES))
    )
    return int(conn.execute(_scoped(query, workspace_id)).scalar_one())
