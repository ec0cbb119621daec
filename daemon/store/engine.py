"""Engine construction: SQLite tuned for durable group commit, or PostgreSQL via psycopg."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine


class StoreError(Exception):
    """The database could not take a write; ``disk_full`` tells SMTP to answer 452."""

    def __init__(self, message: str, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # auto_vacuum only takes effect before the first table exists; harmless afterwards.
    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: every commit is fsynced before we acknowledge the message.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create the engine for ``url``; SQLite gets WAL + synchronous=FULL on every connection."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=8,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def classify_error(exc: BaseException) -> StoreError:
    """Turn a driver error into a StoreError, noting whether the disk is full."""
    text = str(exc)
    orig = getattr(exc, "orig", exc)
    disk_full = (
        "database or disk is full" in text
        or (isinstance(orig, OSError) and orig.errno == errno.ENOSPC)
        or type(orig).__name__ == "DiskFull"
        or (isinstance(orig, sqlite3.OperationalError) and "disk" in text and "full" in text)
    )
    return StoreError("disk full" if disk_full else "database unavailable", disk_full=disk_full)
