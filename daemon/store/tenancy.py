"""Tenancy tables and their queries: workspaces, API keys, idempotency keys, usage counters.

Usage counters back the daily sending quotas and the hourly/daily/per-minute API
request limits. Each is one row per (key, window start); it is bumped with a
single ``INSERT ... ON CONFLICT DO UPDATE ... WHERE count + n <= limit RETURNING
count``, which SQLite (>= 3.35) and PostgreSQL both run atomically: on
PostgreSQL a second daemon's upsert of the same row waits for the first
transaction and re-checks the condition against the committed count, so the
limit holds across daemons sharing the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Field, SQLModel

from daemon.store.models import JSONType, UTCDateTime


def _dt(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable))


class Workspace(SQLModel, table=True):
    """The unit of isolation: its plan, custom limits (enterprise) and quota overrides."""

    __tablename__ = "workspaces"

    id: str = Field(primary_key=True, max_length=200)
    name: str = Field(default="", max_length=200)
    plan: str = Field(default="free", max_length=20)
    custom_limits: dict[str, Any] | None = Field(
        default=None, sa_column=sa.Column(JSONType, nullable=True)
    )
    daily_quota: int | None = Field(default=None)
    user_daily_quota: int | None = Field(default=None)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class ApiKey(SQLModel, table=True):
    """A workspace API key, stored only as the SHA-256 of the key."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(
        sa_column=sa.Column(
            sa.String(200),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    user_id: str | None = Field(default=None, max_length=200)
    name: str = Field(default="", max_length=200)
    prefix: str = Field(max_length=20)
    key_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_used_at: datetime | None = _dt()
    revoked_at: datetime | None = _dt()


class IdempotencyKey(SQLModel, table=True):
    """The first response to an ``Idempotency-Key`` of a workspace, kept 24 hours."""

    __tablename__ = "idempotency_keys"

    workspace_id: str = Field(primary_key=True, max_length=200)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    status_code: int = Field(default=202)
    response: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False)
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))


class UsageCounter(SQLModel, table=True):
    """How many sends or requests one scope made in one window."""

    __tablename__ = "usage_counters"

    key: str = Field(primary_key=True, max_length=300)
    window_start: datetime = Field(
        sa_column=sa.Column(UTCDateTime(), primary_key=True, nullable=False)
    )
    count: int = Field(default=0)
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))


workspaces = Workspace.__table__  # type: ignore[attr-defined]
api_keys = ApiKey.__table__  # type: ignore[attr-defined]
idempotency_keys = IdempotencyKey.__table__  # type: ignore[attr-defined]
usage_counters = UsageCounter.__table__  # type: ignore[attr-defined]


def _insert(conn: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# Workspaces ------------------------------------------------------------------


def get_workspace(conn: Connection, workspace_id: str) -> Any:
    return conn.execute(sa.select(workspaces).where(workspaces.c.id == workspace_id)).first()


def ensure_workspace(conn: Connection, workspace_id: str, plan: str, now: datetime) -> Any:
    """The workspace, created with ``plan`` when it does not exist yet (first use)."""
    conn.execute(
        _insert(conn, workspaces)
        .values(id=workspace_id, name="", plan=plan, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    return get_workspace(conn, workspace_id)


def create_workspace(conn: Connection, values: dict[str, Any]) -> Any:
    """Insert a workspace; None when the id is taken."""
    inserted = conn.execute(
        _insert(conn, workspaces)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(workspaces.c.id)
    ).first()
    return None if inserted is None else get_workspace(conn, values["id"])


def update_workspace(conn: Connection, workspace_id: str, values: dict[str, Any]) -> Any:
    """Change a workspace; None when it does not exist."""
    done = conn.execute(
        workspaces.update().where(workspaces.c.id == workspace_id).values(**values)
    ).rowcount
    return get_workspace(conn, workspace_id) if done else None


def list_workspaces(conn: Connection, limit: int, offset: int) -> tuple[list[Any], int]:
    total = conn.execute(sa.select(sa.func.count()).select_from(workspaces)).scalar_one()
    rows = conn.execute(
        sa.select(workspaces).order_by(workspaces.c.id).limit(limit).offset(offset)
    ).all()
    return list(rows), int(total)


# API keys --------------------------------------------------------------------


def insert_key(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(api_keys.insert().values(**values))


def key_by_hash(conn: Connection, key_hash: str) -> Any:
    """The live (unrevoked) key with this hash, joined with nothing: one index lookup."""
    return conn.execute(
        sa.select(api_keys).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
    ).first()


def list_keys(
    conn: Connection, workspace_id: str | None, limit: int, offset: int
) -> tuple[list[Any], int]:
    condition = sa.true() if workspace_id is None else api_keys.c.workspace_id == workspace_id
    total = conn.execute(
        sa.select(sa.func.count()).select_from(api_keys).where(condition)
    ).scalar_one()
    rows = conn.execute(
        sa.select(api_keys)
        .where(condition)
        .order_by(api_keys.c.created_at.desc(), api_keys.c.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), int(total)


def revoke_key(conn: Connection, key_id: str, now: datetime) -> Any:
    """Revoke a key (idempotent); returns the row, or None when there is no such key."""
    conn.execute(
        api_keys.update()
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()


def touch_key(conn: Connection, key_id: str, now: datetime) -> None:
    conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=now))


# Usage counters --------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """One counter window to bump: ``limit`` None counts without a ceiling."""

    key: str
    window_start: datetime
    expires_at: datetime
    limit: int | None


@dataclass(frozen=True)
class Consumed:
    """What ``consume`` did: every bucket's count after it, or the first one that was full."""

    ok: bool
    counts: tuple[int, ...]
    refused: int | None = None


def _bump(conn: Connection, bucket: Bucket, n: int) -> int | None:
    if bucket.limit is not None and n > bucket.limit:
        return None
    statement = _insert(conn, usage_counters).values(
        key=bucket.key, window_start=bucket.window_start, count=n, expires_at=bucket.expires_at
    )
    where = None
    if bucket.limit is not None:
        where = usage_counters.c.count + n <= bucket.limit
    statement = statement.on_conflict_do_update(
        index_elements=["key", "window_start"],
        set_={"count": usage_counters.c.count + n},
        where=where,
    ).returning(usage_counters.c.count)
    value = conn.execute(statement).scalar()
    return None if value is None else int(value)


def consume(conn: Connection, buckets: Sequence[Bucket], n: int = 1) -> Consumed:
    """Add ``n`` to every bucket, all or nothing: if one is full, undo the others."""
    counts: list[int] = []
    for index, bucket in enumerate(buckets):
        value = _bump(conn, bucket, n)
        if value is None:
            for done in buckets[:index]:
                conn.execute(
                    usage_counters.update()
                    .where(
                        usage_counters.c.key == done.key,
                        usage_counters.c.window_start == done.window_start,
                    )
                    .values(count=usage_counters.c.count - n)
                )
            current = peek(conn, buckets)
            return Consumed(False, current, index)
        counts.append(value)
    return Consumed(True, tuple(counts))


def peek(conn: Connection, buckets: Sequence[Bucket]) -> tuple[int, ...]:
    """The current count of each bucket (0 for a window not started)."""
    if not buckets:
        return ()
    rows = conn.execute(
        sa.select(
            usage_counters.c.key, usage_counters.c.window_start, usage_counters.c.count
        ).where(
            sa.or_(
                *(
                    sa.and_(
                        usage_counters.c.key == b.key,
                        usage_counters.c.window_start == b.window_start,
                    )
                    for b in buckets
                )
            )
        )
    ).all()
    found = {(key, start): int(count) for key, start, count in rows}
    return tuple(found.get((b.key, b.window_start), 0) for b in buckets)


def counters_like(conn: Connection, prefix: str, window_start: datetime) -> dict[str, int]:
    """Every counter of one window whose key starts with ``prefix`` (e.g. a workspace's users)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = conn.execute(
        sa.select(usage_counters.c.key, usage_counters.c.count).where(
            usage_counters.c.key.like(escaped + "%", escape="\\"),
            usage_counters.c.window_start == window_start,
        )
    ).all()
    return {key[len(prefix) :]: int(count) for key, count in rows}


# Idempotency keys ------------------------------------------------------------


def claim_idempotency(
    conn: Connection,
    workspace_id: str,
    key: str,
    request_hash: str,
    response: dict[str, Any],
    status_code: int,
    now: datetime,
    cutoff: datetime,
) -> Any:
    """Record the first response to a key; returns None when recorded, else the earlier row.

    A row older than ``cutoff`` has expired and is replaced. On PostgreSQL a
    concurrent claim of the same key waits on the unique index until the first
    commits, then sees its row.
    """
    values = {
        "workspace_id": workspace_id,
        "key": key,
        "request_hash": request_hash,
        "status_code": status_code,
        "response": response,
        "created_at": now,
    }
    statement = (
        _insert(conn, idempotency_keys)
        .values(**values)
        .on_conflict_do_update(
            index_elements=["workspace_id", "key"],
            set_={k: v for k, v in values.items() if k not in ("workspace_id", "key")},
            where=idempotency_keys.c.created_at < cutoff,
        )
        .returning(idempotency_keys.c.key)
    )
    if conn.execute(statement).first() is not None:
        return None
    return conn.execute(
        sa.select(idempotency_keys).where(
            idempotency_keys.c.workspace_id == workspace_id, idempotency_keys.c.key == key
        )
    ).first()


def get_idempotency(conn: Connection, workspace_id: str, key: str, cutoff: datetime) -> Any:
    """The stored use of a key newer than ``cutoff``, if any."""
    return conn.execute(
        sa.select(idempotency_keys).where(
            idempotency_keys.c.workspace_id == workspace_id,
            idempotency_keys.c.key == key,
            idempotency_keys.c.created_at >= cutoff,
        )
    ).first()


def release_idempotency(conn: Connection, workspace_id: str, key: str) -> None:
    conn.execute(
        idempotency_keys.delete().where(
            idempotency_keys.c.workspace_id == workspace_id, idempotency_keys.c.key == key
        )
    )


def purge_expired(conn: Connection, now: datetime, idempotency_cutoff: datetime) -> int:
    """Drop counters of past windows and idempotency keys older than the cutoff."""
    gone = conn.execute(usage_counters.delete().where(usage_counters.c.expires_at < now)).rowcount
    gone += conn.execute(
        idempotency_keys.delete().where(idempotency_keys.c.created_at < idempotency_cutoff)
    ).rowcount
    return int(gone)
