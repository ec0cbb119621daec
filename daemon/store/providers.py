"""Provider figures that survive a restart: running delivery counters and the last health check.

One row per provider id. The counters move in the same transaction as the
delivery attempts they count (the dispatcher's result writer calls
:func:`count_attempts`), by increments, so several daemons sharing a database
add up rather than overwrite each other. ``day``/``day_count`` carry today's
sends, so a restarted daemon keeps honouring a provider's daily rate limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import Field, SQLModel

from daemon.core.message import Attempt
from daemon.core.retry import SENT
from daemon.store.direct import Direct
from daemon.store.models import UTCDateTime, messages


def _counter() -> Any:
    return Field(default=0, sa_column=sa.Column(sa.BigInteger(), nullable=False, default=0))


class ProviderStats(SQLModel, table=True):
    """Delivery counters and the last health check of one provider."""

    __tablename__ = "provider_stats"

    provider_id: str = Field(primary_key=True, max_length=100)
    attempts: int = _counter()
    sent: int = _counter()
    latency_ms_total: int = _counter()
    day: str = Field(default="", max_length=10)
    day_count: int = _counter()
    last_check_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    last_check_ok: bool | None = Field(default=None)
    last_check_latency_ms: int | None = Field(default=None)
    last_check_detail: str = Field(default="", sa_column=sa.Column(sa.Text(), nullable=False))
    updated_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )


provider_stats = ProviderStats.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Figures:
    """What the admin API shows for one provider."""

    attempts: int = 0
    sent: int = 0
    latency_ms_total: int = 0
    day: str = ""
    day_count: int = 0
    last_check_at: datetime | None = None
    last_check_ok: bool | None = None
    last_check_latency_ms: int | None = None
    last_check_detail: str = ""

    @property
    def success_rate(self) -> float | None:
        return round(self.sent / self.attempts, 4) if self.attempts else None

    @property
    def avg_latency_ms(self) -> int | None:
        return round(self.latency_ms_total / self.attempts) if self.attempts else None


_EMPTY = {
    "attempts": 0,
    "sent": 0,
    "latency_ms_total": 0,
    "day": "",
    "day_count": 0,
    "last_check_detail": "",
}


def _ensure(conn: Connection, provider_ids: Iterable[str]) -> None:
    ids = sorted(set(provider_ids))
    if not ids:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        insert(provider_stats)
        .values([{**_EMPTY, "provider_id": pid} for pid in ids])
        .on_conflict_do_nothing()
    )


def _count_statement(dialect: str) -> Any:
    """Create-or-add a provider's counters: one upsert, executemany over the providers.

    A new row gets what ``_ensure`` then the increment would give it (today's day
    and count, zero check fields); an existing row is incremented in place.
    """
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    c = provider_stats.c
    statement = insert(provider_stats).values(
        provider_id=sa.bindparam("b_pid"),
        attempts=sa.bindparam("b_n"),
        sent=sa.bindparam("b_sent"),
        latency_ms_total=sa.bindparam("b_ms"),
        day=sa.bindparam("b_day"),
        day_count=sa.bindparam("b_n"),
        last_check_detail="",
    )
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[c.provider_id],
        set_={
            "attempts": c.attempts + new.attempts,
            "sent": c.sent + new.sent,
            "latency_ms_total": c.latency_ms_total + new.latency_ms_total,
            "day_count": sa.case(
                (c.day == new.day, c.day_count + new.day_count), else_=new.day_count
            ),
            "day": new.day,
        },
    )


_COUNT = Direct(_count_statement)


def count_attempts(conn: Connection, attempts: Iterable[Attempt], day: str) -> None:
    """Add provider calls to the running counters (one upsert for all providers)."""
    totals: dict[str, list[int]] = {}
    for a in attempts:
        if a.provider == "none":
            continue
        t = totals.setdefault(a.provider, [0, 0, 0])
        t[0] += 1
        t[1] += int(a.outcome == SENT)
        t[2] += max(a.duration_ms, 0)
    if not totals:
        return
    _COUNT.executemany(
        conn,
        [
            {"b_pid": pid, "b_n": n, "b_sent": sent, "b_ms": ms, "b_day": day}
            for pid, (n, sent, ms) in sorted(totals.items())
        ],
    )


def record_check(
    conn: Connection, provider_id: str, at: datetime, ok: bool, latency_ms: int, detail: str
) -> None:
    """Store the result of a health check."""
    _ensure(conn, [provider_id])
    conn.execute(
        provider_stats.update()
        .where(provider_stats.c.provider_id == provider_id)
        .values(
            last_check_at=at,
            last_check_ok=ok,
            last_check_latency_ms=latency_ms,
            last_check_detail=detail[:1000],
            updated_at=at,
        )
    )


def read_figures(conn: Connection, provider_ids: Iterable[str] | None = None) -> dict[str, Figures]:
    """Figures per provider id (all rows, or only ``provider_ids``)."""
    query = sa.select(provider_stats)
    if provider_ids is not None:
        query = query.where(provider_stats.c.provider_id.in_(list(provider_ids)))
    return {
        r.provider_id: Figures(
            attempts=r.attempts,
            sent=r.sent,
            latency_ms_total=r.latency_ms_total,
            day=r.day,
            day_count=r.day_count,
            last_check_at=r.last_check_at,
            last_check_ok=r.last_check_ok,
            last_check_latency_ms=r.last_check_latency_ms,
            last_check_detail=r.last_check_detail,
        )
        for r in conn.execute(query)
    }


WAITING_PREFIX = "ALL_PROVIDERS_DOWN"


def release_waiting(conn: Connection, now: datetime) -> int:
    """Make messages that wait for a provider due now (one came back); returns how many."""
    c = messages.c
    result = conn.execute(
        messages.update()
        .where(
            c.status == "queued",
            c.next_attempt_at > now,
            c.error.like(f"{WAITING_PREFIX}%"),
        )
        .values(next_attempt_at=now)
    )
    return int(result.rowcount or 0)
