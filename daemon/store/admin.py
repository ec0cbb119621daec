"""Store side of the admin API: runtime settings, bulk queue repair, cleanup of old mail.

Bulk operations work in short batches keyed on the message id (keyset pagination),
each batch one small write through the group committer, so ingest is never blocked
behind one long transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from daemon.core.message import CANCELLABLE_STATUSES
from daemon.store import counters
from daemon.store.models import (
    delivery_attempts,
    message_content,
    message_recipients,
    messages,
    settings,
)
from daemon.store.queue import HANDED_OVER, partly_delivered, requeue

BATCH = 500
RUNTIME_CONFIG_KEY = "config.runtime"
MAINTENANCE_KEY = "maintenance.mode"
# Tables other features add; cleanup counts (and deletes) their old rows when they exist.
EVENT_TABLES = ("webhook_events", "recipient_events")
_EVENT_TIME_COLUMNS = ("created_at", "received_at", "occurred_at", "timestamp", "event_time")


# -- settings ----------------------------------------------------------------------------


def get_setting(conn: Connection, key: str) -> Any:
    """The stored JSON value of ``key``, or None."""
    return conn.execute(sa.select(settings.c.value).where(settings.c.key == key)).scalar()


def put_setting(conn: Connection, key: str, value: Any, now: datetime) -> None:
    """Insert or replace ``key`` (portable: update, then insert when nothing was there)."""
    updated = conn.execute(
        settings.update().where(settings.c.key == key).values(value=value, updated_at=now)
    )
    if updated.rowcount == 0:
        conn.execute(settings.insert().values(key=key, value=value, updated_at=now))


def read_settings(engine: Engine, *keys: str) -> dict[str, Any]:
    """Several settings at once, outside any running service (daemon start-up)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(settings.c.key, settings.c.value).where(settings.c.key.in_(keys))
        ).all()
    return {row.key: row.value for row in rows}


# -- bulk queue repair -------------------------------------------------------------------


@dataclass(frozen=True)
class QueueFilter:
    """Which messages a bulk retry or cancel acts on; every given condition must hold."""

    statuses: tuple[str, ...]
    workspace_id: str | None = None
    campaign_id: str | None = None
    sender: str | None = None
    recipient_domain: str | None = None
    queued_before: datetime | None = None
    queued_after: datetime | None = None
    provider: str | None = None
    error_contains: str | None = None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def filter_conditions(f: QueueFilter) -> list[sa.ColumnElement[bool]]:
    """The WHERE conditions of ``f`` on the messages table."""
    # A handed-over status (a retry's "sent") means those delivered to some recipients only.
    handed = [s for s in f.statuses if s in HANDED_OVER]
    status = messages.c.status.in_([s for s in f.statuses if s not in HANDED_OVER])
    if handed:
        status = sa.or_(status, partly_delivered(handed))
    cond: list[sa.ColumnElement[bool]] = [status]
    if f.workspace_id:
        cond.append(messages.c.workspace_id == f.workspace_id)
    if f.campaign_id:
        cond.append(messages.c.campaign_id == f.campaign_id)
    if f.sender:
        cond.append(sa.func.lower(messages.c.mail_from) == f.sender.lower())
    if f.recipient_domain:
        domain = f.recipient_domain.lower().lstrip("@")
        cond.append(
            messages.c.id.in_(
                sa.select(message_recipients.c.message_id).where(
                    sa.func.lower(message_recipients.c.address).like(
                        "%@" + _like_escape(domain), escape="\\"
                    )
                )
            )
        )
    if f.queued_before:
        cond.append(messages.c.queued_at < f.queued_before)
    if f.queued_after:
        cond.append(messages.c.queued_at > f.queued_after)
    if f.provider:
        cond.append(messages.c.provider == f.provider)
    if f.error_contains:
        cond.append(
            sa.func.lower(messages.c.error).like(
                "%" + _like_escape(f.error_contains.lower()) + "%", escape="\\"
            )
        )
    return cond


def matching_ids(
    conn: Connection, f: QueueFilter, after: str = "", limit: int = BATCH
) -> list[str]:
    """Up to ``limit`` matching ids greater than ``after``, in id order."""
    return list(
        conn.execute(
            sa.select(messages.c.id)
            .where(*filter_conditions(f), messages.c.id > after)
            .order_by(messages.c.id)
            .limit(limit)
        ).scalars()
    )


def retry_batch(conn: Connection, ids: Sequence[str], now: datetime) -> list[str]:
    """Queue ``ids`` again now: those a single retry takes (failed, auth_error, or sent to
    some recipients only) as it does, for their recipients that did not get it; queued
    (deferred) ones by making them due at once. Returns the ids actually changed."""
    if not ids:
        return []
    failed = [r.id for r in requeue(conn, [messages.c.id.in_(ids)], now)]
    deferred = list(
        conn.execute(
            messages.update()
            .where(
                messages.c.id.in_(ids),
                messages.c.id.not_in(failed or [""]),
                messages.c.status == "queued",
            )
            .values(next_attempt_at=now, updated_at=now)
            .returning(messages.c.id)
        ).scalars()
    )
    return sorted([*failed, *deferred])


def cancel_batch(conn: Connection, ids: Sequence[str], now: datetime) -> list[str]:
    """Cancel the queued or scheduled messages among ``ids``; returns those cancelled."""
    if not ids:
        return []
    cancelled = conn.execute(
        messages.update()
        .where(messages.c.id.in_(ids), messages.c.status.in_(CANCELLABLE_STATUSES))
        .values(status="cancelled", updated_at=now, processed_at=now)
        .returning(messages.c.id, messages.c.workspace_id, messages.c.campaign_id)
    ).all()
    for (workspace_id, campaign_id), rows in counters.by_campaign(cancelled).items():
        counters.on_pending_changed(conn, workspace_id, campaign_id, -len(rows), now)
    return sorted(r.id for r in cancelled)


# -- cleanup -----------------------------------------------------------------------------


def _stored_bytes(table: sa.Table) -> sa.ColumnElement[Any]:
    """Bytes of the values stored in one row: text/JSON/binary by length, others 8 each."""
    parts: list[sa.ColumnElement[Any]] = []
    fixed = 0
    for column in table.columns:
        kind = column.type
        if isinstance(kind, sa.LargeBinary):
            parts.append(sa.func.coalesce(sa.func.length(column), 0))
        elif isinstance(kind, sa.String | sa.Text | sa.JSON):
            parts.append(sa.func.coalesce(sa.func.length(sa.cast(column, sa.Text)), 0))
        else:
            fixed += 8
    return sum(parts, sa.literal(fixed))


def cleanup_conditions(statuses: Sequence[str], cutoff: datetime) -> list[sa.ColumnElement[bool]]:
    """Finished messages in ``statuses`` whose last activity is older than ``cutoff``."""
    last = sa.func.coalesce(messages.c.processed_at, messages.c.queued_at)
    return [messages.c.status.in_(list(statuses)), last < cutoff]


def bytes_of_messages(conn: Connection, cond: Sequence[sa.ColumnElement[bool]]) -> tuple[int, int]:
    """(count, stored bytes) of the messages matching ``cond`` with their content,
    recipients and attempts."""
    ids = sa.select(messages.c.id).where(*cond)
    count, own = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_stored_bytes(messages)), 0)).where(
            *cond
        )
    ).one()
    total = int(own)
    for table, key in (
        (message_content, message_content.c.message_id),
        (message_recipients, message_recipients.c.message_id),
        (delivery_attempts, delivery_attempts.c.message_id),
    ):
        total += int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(_stored_bytes(table)), 0)).where(
                    key.in_(ids)
                )
            ).scalar_one()
        )
    return int(count), total


@dataclass(frozen=True)
class Deleted:
    """What one cleanup batch removed."""

    messages: int = 0
    events: dict[str, int] | None = None
    bytes: int = 0
    last_id: str = ""


def event_tables(conn: Connection) -> dict[str, sa.Table]:
    """The event tables that exist in this database, reflected."""
    inspector = sa.inspect(conn)
    found: dict[str, sa.Table] = {}
    for name in EVENT_TABLES:
        if inspector.has_table(name):
            found[name] = sa.Table(name, sa.MetaData(), autoload_with=conn)
    return found


def delete_message_batch(
    conn: Connection,
    statuses: Sequence[str],
    cutoff: datetime,
    after: str,
    events: dict[str, sa.Table],
) -> Deleted:
    """Delete the next batch of old messages (ids after ``after``) with everything of theirs."""
    cond = [*cleanup_conditions(statuses, cutoff), messages.c.id > after]
    ids = list(
        conn.execute(
            sa.select(messages.c.id).where(*cond).order_by(messages.c.id).limit(BATCH)
        ).scalars()
    )
    if not ids:
        return Deleted(last_id=after)
    _, size = bytes_of_messages(conn, [messages.c.id.in_(ids)])
    removed_events: dict[str, int] = {}
    for name, table in events.items():
        if "message_id" in table.c:
            rows = conn.execute(table.delete().where(table.c.message_id.in_(ids))).rowcount
            removed_events[name] = int(rows)
    for table, key in (
        (message_content, message_content.c.message_id),
        (message_recipients, message_recipients.c.message_id),
        (delivery_attempts, delivery_attempts.c.message_id),
    ):
        conn.execute(table.delete().where(key.in_(ids)))
    count = conn.execute(messages.delete().where(messages.c.id.in_(ids))).rowcount
    return Deleted(int(count), removed_events, size, ids[-1])


def _event_time(table: sa.Table) -> sa.Column[Any] | None:
    for name in _EVENT_TIME_COLUMNS:
        if name in table.c:
            return table.c[name]
    return None


def old_event_count(conn: Connection, table: sa.Table, cutoff: datetime) -> tuple[int, int]:
    """(count, stored bytes) of the rows of an event table older than ``cutoff``."""
    when = _event_time(table)
    if when is None:
        return 0, 0
    count, size = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_stored_bytes(table)), 0)).where(
            when < cutoff
        )
    ).one()
    return int(count), int(size)


def delete_event_batch(conn: Connection, table: sa.Table, cutoff: datetime) -> tuple[int, int]:
    """Delete up to one batch of event rows older than ``cutoff``: (rows, bytes)."""
    when = _event_time(table)
    keys = list(table.primary_key.columns)
    if when is None or len(keys) != 1:
        return 0, 0
    key = keys[0]
    batch = list(conn.execute(sa.select(key).where(when < cutoff).limit(BATCH)).scalars())
    if not batch:
        return 0, 0
    size = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(_stored_bytes(table)), 0)).where(key.in_(batch))
    ).scalar_one()
    count = conn.execute(table.delete().where(key.in_(batch))).rowcount
    return int(count), int(size)


def reclaim_space(engine: Engine, tables: Sequence[str]) -> None:
    """Give freed pages back: SQLite ``incremental_vacuum`` (+ WAL truncate), PostgreSQL
    a plain ``VACUUM`` of ``tables`` (never FULL: it would lock them)."""
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()
        try:
            # executescript steps the pragma to completion; a plain execute frees one page.
            driver: Any = raw.driver_connection
            driver.executescript("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
        finally:
            raw.close()
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        preparer = engine.dialect.identifier_preparer
        for name in tables:
            conn.exec_driver_sql(f"VACUUM {preparer.quote(name)}")


def database_file_bytes(engine: Engine) -> int | None:
    """The SQLite file's size (with its WAL), or None for a server database."""
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database
    if not path or path == ":memory:":
        return None
    return sum(
        Path(path + suffix).stat().st_size
        for suffix in ("", "-wal")
        if Path(path + suffix).exists()
    )
