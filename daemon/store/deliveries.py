"""Webhook endpoints and their delivery queue: CRUD, fan-out, claim, outcome, replay.

A delivery is claimed by pushing its ``next_attempt_at`` one lease ahead (so a
crashed sender's claims come due again by themselves) and settled with the
result of its attempt: delivered, pending again at the next backoff step, or
dead once the schedule is spent. Replay turns a dead delivery pending again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from daemon.core.webhooks import ALL
from daemon.store.engagement import webhook_deliveries, webhooks

STATUSES = ("pending", "delivered", "dead")


# -- endpoints -----------------------------------------------------------------------------


def insert_webhook(conn: Connection, values: Mapping[str, Any]) -> Any:
    return conn.execute(webhooks.insert().values(**values).returning(webhooks)).one()


def get_webhook(conn: Connection, webhook_id: str, workspace_id: str | None) -> Any:
    query = sa.select(webhooks).where(webhooks.c.id == webhook_id)
    if workspace_id is not None:
        query = query.where(webhooks.c.workspace_id == workspace_id)
    return conn.execute(query).first()


def list_webhooks(
    conn: Connection, workspace_id: str | None, limit: int, offset: int
) -> tuple[list[Any], int]:
    cond = [] if workspace_id is None else [webhooks.c.workspace_id == workspace_id]
    rows = conn.execute(
        sa.select(webhooks)
        .where(*cond)
        .order_by(webhooks.c.created_at, webhooks.c.id)
        .limit(limit)
        .offset(offset)
    ).all()
    total = conn.execute(sa.select(sa.func.count()).select_from(webhooks).where(*cond))
    return list(rows), int(total.scalar_one())


def update_webhook(
    conn: Connection, webhook_id: str, workspace_id: str | None, values: Mapping[str, Any]
) -> Any:
    query = webhooks.update().where(webhooks.c.id == webhook_id)
    if workspace_id is not None:
        query = query.where(webhooks.c.workspace_id == workspace_id)
    return conn.execute(query.values(**values).returning(webhooks)).first()


def delete_webhook(conn: Connection, webhook_id: str, workspace_id: str | None) -> bool:
    # Deliveries go first: SQLite enforces the foreign key only with a pragma.
    hook = get_webhook(conn, webhook_id, workspace_id)
    if hook is None:
        return False
    conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.webhook_id == webhook_id))
    conn.execute(webhooks.delete().where(webhooks.c.id == webhook_id))
    return True


def subscribers(conn: Connection, workspace_id: str, event_type: str) -> list[Any]:
    """The enabled endpoints of the workspace that want ``event_type``."""
    rows = conn.execute(
        sa.select(webhooks.c.id, webhooks.c.event_types).where(
            webhooks.c.workspace_id == workspace_id, webhooks.c.enabled.is_(True)
        )
    ).all()
    return [r for r in rows if ALL in (r.event_types or []) or event_type in (r.event_types or [])]


# -- deliveries ----------------------------------------------------------------------------


def enqueue(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(webhook_deliveries.insert(), [dict(r) for r in rows])


def claim(conn: Connection, now: datetime, limit: int, lease: timedelta) -> list[Any]:
    """Due pending deliveries with their endpoint, claimed for ``lease``."""
    d = webhook_deliveries.c
    due = (
        sa.select(d.id)
        .where(d.status == "pending", d.next_attempt_at <= now)
        .order_by(d.next_attempt_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list(conn.execute(due).scalars())
    if not ids:
        return []
    conn.execute(
        webhook_deliveries.update()
        .where(d.id.in_(ids))
        .values(next_attempt_at=now + lease, updated_at=now)
    )
    return list(
        conn.execute(
            sa.select(
                d.id,
                d.webhook_id,
                d.event_type,
                d.body,
                d.attempts,
                webhooks.c.url,
                webhooks.c.secret,
            )
            .join(webhooks, webhooks.c.id == d.webhook_id)
            .where(d.id.in_(ids))
        ).all()
    )


def settle(
    conn: Connection,
    delivery_id: str,
    *,
    now: datetime,
    status: str,
    attempts: int,
    next_attempt_at: datetime | None,
    error: str | None,
    status_code: int | None,
) -> None:
    values: dict[str, Any] = {
        "status": status,
        "attempts": attempts,
        "last_error": error[:2000] if error else None,
        "last_status_code": status_code,
        "updated_at": now,
    }
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    if status == "delivered":
        values["delivered_at"] = now
    conn.execute(
        webhook_deliveries.update().where(webhook_deliveries.c.id == delivery_id).values(values)
    )


def next_due(conn: Connection) -> datetime | None:
    d = webhook_deliveries.c
    return conn.execute(
        sa.select(sa.func.min(d.next_attempt_at)).where(d.status == "pending")
    ).scalar()


def list_deliveries(
    conn: Connection,
    workspace_id: str | None,
    status: str | None,
    webhook_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Any], int]:
    d = webhook_deliveries.c
    cond: list[sa.ColumnElement[bool]] = []
    if workspace_id is not None:
        cond.append(d.workspace_id == workspace_id)
    if status is not None:
        cond.append(d.status == status)
    if webhook_id is not None:
        cond.append(d.webhook_id == webhook_id)
    rows = conn.execute(
        sa.select(webhook_deliveries).where(*cond).order_by(d.id).limit(limit).offset(offset)
    ).all()
    total = conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries).where(*cond))
    return list(rows), int(total.scalar_one())


def replay(
    conn: Connection,
    now: datetime,
    workspace_id: str | None,
    delivery_id: str | None = None,
    webhook_id: str | None = None,
) -> int:
    """Make dead deliveries pending again, due now, with a fresh retry schedule."""
    d = webhook_deliveries.c
    cond = [d.status == "dead"]
    if workspace_id is not None:
        cond.append(d.workspace_id == workspace_id)
    if delivery_id is not None:
        cond.append(d.id == delivery_id)
    if webhook_id is not None:
        cond.append(d.webhook_id == webhook_id)
    result = conn.execute(
        webhook_deliveries.update()
        .where(*cond)
        .values(status="pending", attempts=0, next_attempt_at=now, updated_at=now)
    )
    return int(result.rowcount)
