"""Recipients and campaigns: their tables, recipient CRUD and the suppression lookup.

A recipient row is per (workspace, email); addresses are kept lower-cased so
``John@Example.com`` and ``john@example.com`` are one recipient. Sending never
creates rows: they come from the API (and engagement events, issue 7). A
recipient whose status is not ACTIVE is suppressed at delivery time; see
:func:`suppressed_addresses`. Campaign counters live in :mod:`daemon.store.counters`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Field, SQLModel

from daemon.store.direct import Direct
from daemon.store.models import JSONType, UTCDateTime

RECIPIENT_STATUSES = ("ACTIVE", "UNSUBSCRIBED", "BOUNCED", "COMPLAINED")
SUPPRESSED_STATUSES = RECIPIENT_STATUSES[1:]
_LOOKUP_CHUNK = 500  # addresses per IN (...) list: far below every driver's parameter limit


def _dt(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable))


def _counter() -> Any:
    return Field(default=0, sa_column=sa.Column(sa.Integer(), nullable=False, default=0))


class RecipientRow(SQLModel, table=True):
    """One known recipient of a workspace: consent, bounces, engagement, suppression."""

    __tablename__ = "recipients"
    __table_args__ = (
        sa.UniqueConstraint("workspace_id", "email", name="uq_recipients_workspace_email"),
        sa.Index("ix_recipients_ws_status", "workspace_id", "status", "id"),
        sa.Index("ix_recipients_status_email", "status", "email"),
        # Its id leaves the table (API answers, tracking links of mail already sent):
        # never hand a deleted one out again on SQLite (migration 0010).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: str = Field(max_length=200)
    email: str = Field(max_length=320)
    user_id: str | None = Field(default=None, max_length=200)
    campaign_id: str | None = Field(default=None, max_length=200)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    status: str = Field(default="ACTIVE", max_length=20)
    opt_in_date: datetime | None = _dt()
    opt_out_date: datetime | None = _dt()
    bounce_count: int = _counter()
    last_bounce_date: datetime | None = _dt()
    bounce_type: str | None = Field(default=None, max_length=20)
    total_received: int = _counter()
    total_opened: int = _counter()
    total_clicked: int = _counter()
    last_open_date: datetime | None = _dt()
    last_click_date: datetime | None = _dt()
    suppression_reason: str | None = Field(
        default=None, sa_column=sa.Column(sa.Text(), nullable=True)
    )
    suppressed_at: datetime | None = _dt()
    metadata_: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column("metadata", JSONType, nullable=False)
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class CampaignRow(SQLModel, table=True):
    """A campaign of one workspace and its counters, kept current as its mail moves."""

    __tablename__ = "campaigns"
    __table_args__ = (sa.Index("ix_campaigns_id", "id"),)

    workspace_id: str = Field(primary_key=True, max_length=200)
    id: str = Field(primary_key=True, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    messages: int = _counter()
    pending: int = _counter()
    total_recipients: int = _counter()
    sent: int = _counter()
    delivered: int = _counter()
    bounced: int = _counter()
    opened: int = _counter()
    clicked: int = _counter()
    unsubscribed: int = _counter()
    complained: int = _counter()
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    started_at: datetime | None = _dt()
    completed_at: datetime | None = _dt()
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


recipients = RecipientRow.__table__  # type: ignore[attr-defined]
campaigns = CampaignRow.__table__  # type: ignore[attr-defined]


def normalize(email: str) -> str:
    """The key a recipient is stored and matched under."""
    return email.strip().lower()


class RecipientExists(Exception):
    """A recipient with that email already exists in the workspace."""


def insert_recipient(conn: Connection, values: Mapping[str, Any]) -> Any:
    """Insert one recipient; RecipientExists when (workspace, email) is taken."""
    row = dict(values)
    row["email"] = normalize(row["email"])
    # ON CONFLICT DO NOTHING, not a savepoint around a plain INSERT: the batch this runs
    # in stays one transaction (pysqlite commits a savepoint opened outside a
    # transaction when it is released), and the same address twice in one batch is
    # one row and one RecipientExists.
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    added = conn.execute(
        insert(recipients)
        .values(**row)
        .on_conflict_do_nothing(index_elements=[recipients.c.workspace_id, recipients.c.email])
        .returning(recipients)
    ).first()
    if added is None:
        raise RecipientExists(row["email"])
    return added


def get_recipient(conn: Connection, workspace_id: str, email: str) -> Any:
    return conn.execute(
        sa.select(recipients).where(
            recipients.c.workspace_id == workspace_id, recipients.c.email == normalize(email)
        )
    ).first()


def find_recipients(conn: Connection, email: str, limit: int = 10) -> list[Any]:
    """The recipients ``email`` is in any workspace (at most ``limit``), by workspace id.

    Naming every status lets ix_recipients_status_email answer (one probe per
    status) where the unique (workspace_id, email) index cannot.
    """
    return list(
        conn.execute(
            sa.select(recipients)
            .where(
                recipients.c.status.in_(RECIPIENT_STATUSES),
                recipients.c.email == normalize(email),
            )
            .order_by(recipients.c.workspace_id)
            .limit(limit)
        ).all()
    )


def update_recipient(
    conn: Connection, workspace_id: str, email: str, values: Mapping[str, Any]
) -> Any:
    """Apply ``values`` to a recipient; None when there is no such recipient."""
    return conn.execute(
        recipients.update()
        .where(recipients.c.workspace_id == workspace_id, recipients.c.email == normalize(email))
        .values(**values)
        .returning(recipients)
    ).first()


def delete_recipient(conn: Connection, workspace_id: str, email: str) -> bool:
    result = conn.execute(
        recipients.delete().where(
            recipients.c.workspace_id == workspace_id, recipients.c.email == normalize(email)
        )
    )
    return bool(result.rowcount)


@dataclass(frozen=True)
class RecipientFilter:
    """Filters of ``GET /api/recipients``."""

    workspace_id: str | None = None
    status: str | None = None
    email: str | None = None  # substring of the address


def list_recipients(
    conn: Connection, f: RecipientFilter, limit: int, offset: int
) -> tuple[list[Any], int]:
    """A page of recipients in creation order and the total matching count."""
    cond: list[sa.ColumnElement[bool]] = []
    if f.workspace_id is not None:
        cond.append(recipients.c.workspace_id == f.workspace_id)
    if f.status is not None:
        cond.append(recipients.c.status == f.status)
    if f.email:
        cond.append(recipients.c.email.contains(normalize(f.email), autoescape=True))
    rows = conn.execute(
        sa.select(recipients).where(*cond).order_by(recipients.c.id).limit(limit).offset(offset)
    ).all()
    total = conn.execute(
        sa.select(sa.func.count()).select_from(recipients).where(*cond)
    ).scalar_one()
    return list(rows), int(total)


def suppression_text(status: str, reason: str | None) -> str:
    """Why mail to a recipient is not sent, as recorded on the message."""
    text = f"suppressed: recipient is {status}"
    return f"{text} ({reason})" if reason else text


_SUPPRESSED_COLUMNS = (
    recipients.c.workspace_id,
    recipients.c.email,
    recipients.c.status,
    recipients.c.suppression_reason,
)
# The statuses are constants of the statement, so the IN list is the addresses.
_SUPPRESSED = Direct(
    sa.select(*_SUPPRESSED_COLUMNS).where(
        recipients.c.status.in_([sa.literal_column(f"'{s}'") for s in SUPPRESSED_STATUSES]),
        recipients.c.email.in_(sa.bindparam("emails", expanding=True)),
    ),
    results=_SUPPRESSED_COLUMNS,
)


def suppressed_addresses(
    conn: Connection, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Of the (workspace_id, address) pairs, those whose recipient is not ACTIVE, with why.

    Keys are (workspace_id, lower-cased address). One query per few hundred
    addresses, through the (status, email) index: delivery calls this per batch.
    """
    wanted = {(ws, normalize(address)) for ws, address in pairs}
    if not wanted:
        return {}
    emails = sorted({email for _, email in wanted})
    found: dict[tuple[str, str], str] = {}
    for start in range(0, len(emails), _LOOKUP_CHUNK):
        chunk = emails[start : start + _LOOKUP_CHUNK]
        rows = _SUPPRESSED.execute(conn, {"emails": chunk})
        for workspace_id, email, status, reason in rows:
            key = (workspace_id, email)
            if key in wanted:
                found[key] = suppression_text(status, reason)
    return found
