"""SQLModel tables. Hot paths use their ``__table__`` through SQLAlchemy Core."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC, on SQLite and PostgreSQL alike."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def _dt(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index))


def _json(default: Any) -> Any:
    return Field(
        default_factory=lambda: default() if callable(default) else default,
        sa_column=sa.Column(JSONType, nullable=False),
    )


class Message(SQLModel, table=True):
    """One accepted message: its envelope, summary fields and delivery state."""

    __tablename__ = "messages"
    __table_args__ = (
        sa.Index("ix_messages_claim", "status", "priority", "next_attempt_at"),
        sa.Index("ix_messages_status_queued", "status", "queued_at"),
        sa.Index("ix_messages_ws_status_queued", "workspace_id", "status", "queued_at"),
        sa.Index("ix_messages_lease", "status", "lease_until"),
        # Newest-first listing without a status filter (migration 0003).
        sa.Index("ix_messages_queued", "queued_at", "id"),
        sa.Index("ix_messages_ws_queued", "workspace_id", "queued_at", "id"),
        # Maylng threads (migration 0006).
        sa.Index("ix_messages_ws_thread", "workspace_id", "thread_id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    uuid: str = Field(max_length=36, unique=True)
    workspace_id: str = Field(default="default", max_length=200)
    campaign_id: str | None = Field(default=None, max_length=200, index=True)
    user_id: str | None = Field(default=None, max_length=200)
    source: str = Field(default="smtp", max_length=10)
    mail_from: str = Field(default="", max_length=512)
    from_header: str = Field(default="", max_length=998)
    to_addrs: list[str] = _json(list)
    cc_addrs: list[str] = _json(list)
    bcc_addrs: list[str] = _json(list)
    subject: str = Field(default="", max_length=998)
    headers: dict[str, str] = _json(dict)
    attachments: list[dict[str, Any]] = _json(list)
    metadata_: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column("metadata", JSONType, nullable=False)
    )
    priority: int = Field(default=1)
    status: str = Field(default="queued", max_length=20)
    size: int = Field(default=0)
    retry_count: int = Field(default=0)
    max_retries: int | None = Field(default=None)
    dsn_ret: str | None = Field(default=None, max_length=4)
    dsn_envid: str | None = Field(default=None, max_length=100)
    # When the one delay DSN (NOTIFY=DELAY) was queued; None: not yet (migration 0008).
    dsn_delayed_at: datetime | None = _dt()
    personalization: dict[str, Any] | None = Field(
        default=None, sa_column=sa.Column(JSONType, nullable=True)
    )
    queued_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    send_at: datetime | None = _dt()
    next_attempt_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    processed_at: datetime | None = _dt()
    updated_at: datetime | None = _dt()
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = _dt()
    provider: str | None = Field(default=None, max_length=100)
    provider_message_id: str | None = Field(default=None, max_length=512)
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    # Maylng: the sender address an email went out from, and the thread it belongs to.
    from_email_id: str | None = Field(default=None, max_length=36)
    thread_id: str | None = Field(default=None, max_length=200)


class MessageContent(SQLModel, table=True):
    """The exact accepted bytes, kept apart so listing never reads message bodies."""

    __tablename__ = "message_content"

    message_id: str = Field(
        sa_column=sa.Column(
            sa.String(40), sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
        )
    )
    raw: bytes = Field(sa_column=sa.Column(sa.LargeBinary(), nullable=False))


class MessageRecipient(SQLModel, table=True):
    """One envelope recipient of a message, with its RFC 3461 parameters and outcome."""

    __tablename__ = "message_recipients"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(
        sa_column=sa.Column(
            sa.String(40),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    address: str = Field(max_length=512)
    status: str = Field(default="pending", max_length=20)
    notify: str | None = Field(default=None, max_length=40)
    orcpt: str | None = Field(default=None, max_length=512)
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))


class DeliveryAttempt(SQLModel, table=True):
    """One try at handing a message to a provider."""

    __tablename__ = "delivery_attempts"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(
        sa_column=sa.Column(
            sa.String(40),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    attempted_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    provider: str = Field(max_length=100)
    outcome: str = Field(max_length=20)
    code: int | None = Field(default=None)
    reply: str = Field(default="", sa_column=sa.Column(sa.Text(), nullable=False))
    duration_ms: int = Field(default=0)


class Setting(SQLModel, table=True):
    """Runtime state that must survive a restart (config overrides, maintenance mode)."""

    __tablename__ = "settings"

    key: str = Field(primary_key=True, max_length=200)
    value: Any = Field(sa_column=sa.Column(JSONType, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


def utcnow() -> datetime:
    """The current time, aware and in UTC (for the edges; core takes time as an argument)."""
    return datetime.now(UTC)


messages = Message.__table__  # type: ignore[attr-defined]
message_content = MessageContent.__table__  # type: ignore[attr-defined]
message_recipients = MessageRecipient.__table__  # type: ignore[attr-defined]
# GET /api/messages?to= matches the address whatever its case (migration 0009).
sa.Index("ix_message_recipients_address_lower", sa.func.lower(message_recipients.c.address))
delivery_attempts = DeliveryAttempt.__table__  # type: ignore[attr-defined]
settings = Setting.__table__  # type: ignore[attr-defined]
metadata = SQLModel.metadata
