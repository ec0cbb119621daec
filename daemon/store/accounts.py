"""Maylng accounts in the store: sender addresses, account closing, emails and threads.

An account is a workspace (:mod:`daemon.store.tenancy`) and an email is a row
of ``messages`` (its Maylng id is ``messages.uuid``; ``from_email_id`` and
``thread_id`` are columns of that row). The only table of its own is
``email_addresses``: the sender identities of a workspace.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Field, SQLModel

from daemon.core.message import CANCELLABLE_STATUSES
from daemon.store import counters
from daemon.store.models import JSONType, UTCDateTime, message_content, messages
from daemon.store.tenancy import api_keys, workspaces


class EmailAddress(SQLModel, table=True):
    """A sender address of a workspace: temporary (it expires) or persistent."""

    __tablename__ = "email_addresses"
    __table_args__ = (sa.Index("ix_email_addresses_expiry", "status", "expires_at"),)

    id: str = Field(primary_key=True, max_length=36)
    # No foreign key: migration 0006 must not depend on 0002's order among the
    # heads; close_account deletes a workspace's addresses with it.
    workspace_id: str = Field(max_length=200, index=True)
    email: str = Field(max_length=320, unique=True)
    prefix: str = Field(max_length=64)
    domain: str = Field(max_length=255)
    type: str = Field(max_length=20)
    status: str = Field(default="active", max_length=20)
    expires_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    metadata_: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column("metadata", JSONType, nullable=False)
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


email_addresses = EmailAddress.__table__  # type: ignore[attr-defined]


def _insert(conn: Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _lock_workspace(conn: Connection, workspace_id: str) -> Any:
    """The workspace row, locked on PostgreSQL so concurrent creates count one at a time."""
    query = sa.select(workspaces).where(workspaces.c.id == workspace_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).first()


# Addresses -------------------------------------------------------------------


def count_addresses(conn: Connection, workspace_id: str) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(email_addresses)
            .where(email_addresses.c.workspace_id == workspace_id)
        ).scalar_one()
    )


def insert_address(conn: Connection, values: dict[str, Any], limit_of: Any) -> tuple[str, Any]:
    """Create an address unless the workspace is at its plan's address limit.

    ``limit_of(plan)`` gives the limit; reading the plan and counting happen in
    the insert's transaction, so a plan change or a concurrent create is seen.
    Returns ("created", row), ("limit", limit), ("taken", None) or ("gone", None).
    """
    workspace = _lock_workspace(conn, values["workspace_id"])
    if workspace is None:
        return "gone", None
    limit = limit_of(workspace.plan)
    if count_addresses(conn, values["workspace_id"]) >= limit:
        return "limit", limit
    inserted = conn.execute(
        _insert(conn, email_addresses)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(email_addresses.c.id)
    ).first()
    if inserted is None:
        return "taken", None
    return "created", get_address(conn, values["workspace_id"], values["id"])


def get_address(conn: Connection, workspace_id: str, address_id: str) -> Any:
    return conn.execute(
        sa.select(email_addresses).where(
            email_addresses.c.id == address_id, email_addresses.c.workspace_id == workspace_id
        )
    ).first()


def list_addresses(conn: Connection, workspace_id: str) -> list[Any]:
    return list(
        conn.execute(
            sa.select(email_addresses)
            .where(email_addresses.c.workspace_id == workspace_id)
            .order_by(email_addresses.c.created_at, email_addresses.c.id)
        ).all()
    )


def update_address(
    conn: Connection, workspace_id: str, address_id: str, values: dict[str, Any]
) -> Any:
    """Change an address of the workspace; None when it has no such address."""
    done = conn.execute(
        email_addresses.update()
        .where(email_addresses.c.id == address_id, email_addresses.c.workspace_id == workspace_id)
        .values(**values)
    ).rowcount
    return get_address(conn, workspace_id, address_id) if done else None


def delete_address(conn: Connection, workspace_id: str, address_id: str) -> bool:
    done = conn.execute(
        email_addresses.delete().where(
            email_addresses.c.id == address_id, email_addresses.c.workspace_id == workspace_id
        )
    ).rowcount
    return bool(done)


def expire_addresses(conn: Connection, now: datetime) -> int:
    """Mark active temporary addresses whose time is up as expired."""
    return int(
        conn.execute(
            email_addresses.update()
            .where(
                email_addresses.c.status == "active",
                email_addresses.c.expires_at.is_not(None),
                email_addresses.c.expires_at <= now,
            )
            .values(status="expired", updated_at=now)
        ).rowcount
    )


# Keys and accounts -----------------------------------------------------------


def replace_keys(
    conn: Connection, workspace_id: str, prefix: str, new_key: dict[str, Any], now: datetime
) -> bool:
    """Revoke the workspace's live keys starting with ``prefix`` and add ``new_key``."""
    if conn.execute(sa.select(workspaces.c.id).where(workspaces.c.id == workspace_id)).first():
        conn.execute(
            api_keys.update()
            .where(
                api_keys.c.workspace_id == workspace_id,
                api_keys.c.prefix.startswith(prefix, autoescape=True),
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        conn.execute(api_keys.insert().values(**new_key))
        return True
    return False


def cancel_pending_mail(conn: Connection, workspace_id: str, now: datetime) -> int:
    """Cancel every queued or scheduled message of the workspace (campaign counters follow)."""
    rows = conn.execute(
        messages.update()
        .where(
            messages.c.workspace_id == workspace_id,
            messages.c.status.in_(CANCELLABLE_STATUSES),
        )
        .values(status="cancelled", error="account deleted", updated_at=now, processed_at=now)
        .returning(messages.c.campaign_id)
    ).all()
    for campaign_id, count in Counter(r.campaign_id for r in rows).items():
        counters.on_pending_changed(conn, workspace_id, campaign_id, -count, now)
    return len(rows)


def close_account(conn: Connection, workspace_id: str, now: datetime) -> bool:
    """Delete an account: its pending mail is cancelled; keys and addresses go with it.

    Sent mail stays in the queue's history. False when there is no such workspace.
    """
    if _lock_workspace(conn, workspace_id) is None:
        return False
    cancel_pending_mail(conn, workspace_id, now)
    # Explicit deletes rather than ON DELETE CASCADE alone: an older SQLite file
    # may lack the constraint, and a key must never outlive its workspace.
    conn.execute(api_keys.delete().where(api_keys.c.workspace_id == workspace_id))
    conn.execute(email_addresses.delete().where(email_addresses.c.workspace_id == workspace_id))
    conn.execute(workspaces.delete().where(workspaces.c.id == workspace_id))
    return True


# Emails ----------------------------------------------------------------------


def _email_condition(workspace_id: str, email_id: str) -> Any:
    column = messages.c.id if email_id.startswith("msg-") else messages.c.uuid
    return sa.and_(column == email_id, messages.c.workspace_id == workspace_id)


def get_email(conn: Connection, workspace_id: str, email_id: str) -> tuple[Any, bytes | None]:
    """A message of the workspace by its Maylng id (uuid) or queue id, with its bytes."""
    row = conn.execute(sa.select(messages).where(_email_condition(workspace_id, email_id))).first()
    if row is None:
        return None, None
    raw = conn.execute(
        sa.select(message_content.c.raw).where(message_content.c.message_id == row.id)
    ).scalar()
    return row, raw


def get_email_row(conn: Connection, workspace_id: str, email_id: str) -> Any:
    return conn.execute(sa.select(messages).where(_email_condition(workspace_id, email_id))).first()


def list_emails(
    conn: Connection, workspace_id: str, limit: int, offset: int
) -> list[tuple[Any, bytes | None]]:
    """A page of the workspace's messages, newest first, each with its bytes."""
    rows = conn.execute(
        sa.select(messages)
        .where(messages.c.workspace_id == workspace_id)
        .order_by(messages.c.queued_at.desc(), messages.c.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    if not rows:
        return []
    raws: dict[str, bytes] = dict(
        conn.execute(
            sa.select(message_content.c.message_id, message_content.c.raw).where(
                message_content.c.message_id.in_([r.id for r in rows])
            )
        ).all()
    )
    return [(r, raws.get(r.id)) for r in rows]


def thread_message_ids(
    conn: Connection, workspace_id: str, thread_id: str, limit: int = 50
) -> Sequence[dict[str, Any]]:
    """The stored headers of a thread's earlier emails, oldest first.

    A thread is the email whose Maylng id is ``thread_id`` plus every email
    sent with that ``thread_id``.
    """
    rows = conn.execute(
        sa.select(messages.c.headers)
        .where(
            messages.c.workspace_id == workspace_id,
            sa.or_(messages.c.thread_id == thread_id, messages.c.uuid == thread_id),
        )
        .order_by(messages.c.queued_at.desc(), messages.c.id.desc())
        .limit(limit)
    ).all()
    return [dict(r.headers or {}) for r in reversed(rows)]
