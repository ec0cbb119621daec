"""Engagement tables: per-message tracking, recipient events, inbound webhook events,
webhook endpoints and the outbound delivery queue; and the queries on them.

``recipient_events.dedupe_key`` and ``webhook_events.dedupe_key`` are unique,
so an event replayed (a Mandrill batch posted twice, a DSN delivered twice)
inserts nothing the second time and counts nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import Field, SQLModel

from daemon.store.audience import normalize, recipients
from daemon.store.models import (
    JSONType,
    UTCDateTime,
    message_content,
    message_recipients,
    messages,
)


def _dt(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable))


def _text() -> Any:
    return Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))


class MessageTracking(SQLModel, table=True):
    """A message rewritten for tracking: its ``rid`` and the return path it was given."""

    __tablename__ = "message_tracking"

    message_id: str = Field(
        sa_column=sa.Column(
            sa.String(40), sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
        )
    )
    workspace_id: str = Field(max_length=200)
    campaign_id: str | None = Field(default=None, max_length=200)
    rid: str = Field(max_length=100)
    recipient: str | None = Field(default=None, max_length=320)
    recipient_id: int | None = Field(default=None)
    return_path: str | None = Field(default=None, max_length=512)
    prepared_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class RecipientEvent(SQLModel, table=True):
    """One engagement event: open, click, unsubscribe, bounce, complaint, delivery..."""

    __tablename__ = "recipient_events"
    __table_args__ = (
        sa.Index("ix_recipient_events_message", "message_id", "type", "recipient"),
        sa.Index(
            "ix_recipient_events_recipient", "workspace_id", "recipient", "type", "occurred_at"
        ),
        sa.Index("ix_recipient_events_occurred", "occurred_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: str = Field(max_length=200)
    message_id: str | None = Field(default=None, max_length=200)
    recipient: str | None = Field(default=None, max_length=320)
    campaign_id: str | None = Field(default=None, max_length=200)
    type: str = Field(max_length=20)
    source: str = Field(max_length=20)
    url: str | None = _text()
    reason: str | None = _text()
    data: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False)
    )
    occurred_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    dedupe_key: str | None = Field(default=None, max_length=200, unique=True)


class WebhookEvent(SQLModel, table=True):
    """One inbound provider event (Mandrill), kept once by its dedupe key."""

    __tablename__ = "webhook_events"
    __table_args__ = (sa.Index("ix_webhook_events_received", "received_at"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=20)
    event: str = Field(max_length=40)
    message_id: str | None = Field(default=None, max_length=200)
    dedupe_key: str = Field(max_length=200, unique=True)
    payload: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False)
    )
    received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class Webhook(SQLModel, table=True):
    """An endpoint a workspace registered for the event types it wants."""

    __tablename__ = "webhooks"

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=200, index=True)
    url: str = Field(max_length=2000)
    secret: str = Field(max_length=100)
    event_types: list[str] = Field(
        default_factory=list, sa_column=sa.Column(JSONType, nullable=False)
    )
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = Field(default=True)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """One event on its way to one endpoint: pending, delivered or dead."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_hook", "webhook_id", "status", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    webhook_id: str = Field(
        sa_column=sa.Column(
            sa.String(40), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
        )
    )
    workspace_id: str = Field(max_length=200)
    event_type: str = Field(max_length=20)
    body: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    status: str = Field(default="pending", max_length=20)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_error: str | None = _text()
    last_status_code: int | None = Field(default=None)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    delivered_at: datetime | None = _dt()


message_tracking = MessageTracking.__table__  # type: ignore[attr-defined]
recipient_events = RecipientEvent.__table__  # type: ignore[attr-defined]
webhook_events = WebhookEvent.__table__  # type: ignore[attr-defined]
webhooks = Webhook.__table__  # type: ignore[attr-defined]
webhook_deliveries = WebhookDelivery.__table__  # type: ignore[attr-defined]


def _insert(conn: Connection, table: sa.Table) -> Any:
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


# -- tracking ------------------------------------------------------------------------------


def tracking_rows(conn: Connection, ids: Iterable[str]) -> dict[str, Any]:
    """The tracking rows of the given messages (those prepared already)."""
    wanted = list(ids)
    if not wanted:
        return {}
    rows = conn.execute(
        sa.select(message_tracking).where(message_tracking.c.message_id.in_(wanted))
    ).all()
    return {row.message_id: row for row in rows}


def message_facts(conn: Connection, message_id: str) -> Any:
    """What preparing a message needs beyond the claim: source and every recipient address."""
    row = conn.execute(
        sa.select(messages.c.source, messages.c.workspace_id).where(messages.c.id == message_id)
    ).first()
    addresses = conn.execute(
        sa.select(message_recipients.c.address)
        .where(message_recipients.c.message_id == message_id)
        .order_by(message_recipients.c.id)
    ).scalars()
    return row, list(addresses)


def recipient_id(conn: Connection, workspace_id: str, email: str) -> int | None:
    return conn.execute(
        sa.select(recipients.c.id).where(
            recipients.c.workspace_id == workspace_id, recipients.c.email == normalize(email)
        )
    ).scalar()


def save_prepared(conn: Connection, values: Mapping[str, Any], raw: bytes | None) -> Any:
    """Record the preparation and the rewritten bytes; the row already there wins."""
    inserted = conn.execute(
        _insert(conn, message_tracking)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(message_tracking.c.message_id)
    ).first()
    if inserted is not None and raw is not None:
        conn.execute(
            message_content.update()
            .where(message_content.c.message_id == values["message_id"])
            .values(raw=raw)
        )
    return conn.execute(
        sa.select(message_tracking).where(message_tracking.c.message_id == values["message_id"])
    ).first()


def get_message(conn: Connection, message_id: str) -> Any:
    return conn.execute(
        sa.select(
            messages.c.id,
            messages.c.workspace_id,
            messages.c.campaign_id,
            messages.c.status,
            messages.c.to_addrs,
        ).where(messages.c.id == message_id)
    ).first()


def message_recipient_addresses(conn: Connection, message_id: str) -> list[str]:
    return list(
        conn.execute(
            sa.select(message_recipients.c.address).where(
                message_recipients.c.message_id == message_id
            )
        ).scalars()
    )


def set_message_status(
    conn: Connection, message_id: str, status: str, now: datetime, error: str | None = None
) -> None:
    """A provider event moves a handed-over message: sent -> delivered, or to failed."""
    allowed = ("sent",) if status == "delivered" else ("sent", "delivered")
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if error:
        values["error"] = error[:2000]
    conn.execute(
        messages.update()
        .where(messages.c.id == message_id, messages.c.status.in_(allowed))
        .values(**values)
    )


def delivered_recipients(conn: Connection, message_id: str) -> int:
    """Recipients of the message a provider took (or that are still on their way)."""
    r = message_recipients.c
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(
                r.message_id == message_id, r.status.in_(("sent", "delivered", "pending"))
            )
        ).scalar_one()
    )


def set_recipient_outcome(
    conn: Connection, message_id: str, address: str, status: str, error: str | None
) -> None:
    conn.execute(
        message_recipients.update()
        .where(
            message_recipients.c.message_id == message_id,
            sa.func.lower(message_recipients.c.address) == normalize(address),
        )
        .values(status=status, error=error)
    )


# -- events --------------------------------------------------------------------------------


def insert_event(conn: Connection, values: Mapping[str, Any]) -> bool:
    """Insert one recipient event; False when its dedupe key was seen before."""
    # RETURNING, not rowcount: psycopg reports 1 for an ON CONFLICT DO NOTHING that did nothing.
    row = conn.execute(
        _insert(conn, recipient_events)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(recipient_events.c.id)
    ).first()
    return row is not None


def seen_before(conn: Connection, message_id: str, recipient: str | None, kind: str) -> bool:
    """Whether this message and recipient already had an event of this type (unique opens)."""
    e = recipient_events.c
    query = sa.select(e.id).where(e.message_id == message_id, e.type == kind)
    query = query.where(e.recipient.is_(None) if recipient is None else e.recipient == recipient)
    return conn.execute(query.limit(1)).first() is not None


def count_events(
    conn: Connection, workspace_id: str, recipient: str, kind: str, since: datetime
) -> int:
    e = recipient_events.c
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(
                e.workspace_id == workspace_id,
                e.recipient == recipient,
                e.type == kind,
                e.occurred_at >= since,
            )
        ).scalar_one()
    )


def list_events(
    conn: Connection, workspace_id: str | None, message_id: str | None, limit: int = 100
) -> list[Any]:
    e = recipient_events.c
    query = sa.select(recipient_events).order_by(e.id)
    if workspace_id is not None:
        query = query.where(e.workspace_id == workspace_id)
    if message_id is not None:
        query = query.where(e.message_id == message_id)
    return list(conn.execute(query.limit(limit)).all())


def insert_webhook_event(conn: Connection, values: Mapping[str, Any]) -> bool:
    """Keep one inbound event; False when the same event arrived before."""
    row = conn.execute(
        _insert(conn, webhook_events)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(webhook_events.c.id)
    ).first()
    return row is not None
