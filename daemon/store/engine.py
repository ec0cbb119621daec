"""Engine construction: SQLite tuned for durable group commit, or PostgreSQL via psycopg.

Also what the rest of the daemon needs to live through the database being unavailable:
bounded waits (lock, connect), :func:`is_unavailable` to tell an outage from a refused
operation, and :class:`FailureLog` to say so in a line, not in one per failed round."""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

# Seconds a statement waits for a lock another process holds (SQLite's busy timeout;
# on PostgreSQL, once bound_lock_waits is called): then it fails (SMTP 451) rather than
# keeping sessions waiting for as long as, say, an operator's transaction stays open.
LOCK_TIMEOUT = 30.0
# Seconds a new PostgreSQL connection may take (libpq waits for ever by default): with
# the server out of reach, a write fails (SMTP 451) instead of hanging every session.
CONNECT_TIMEOUT = 10
# TCP keepalives on PostgreSQL connections, so a connection whose server vanished
# (network partition, host gone) is found dead in about a minute, not two hours.
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    # Sent data left unacknowledged this long (milliseconds) ends the connection too.
    "tcp_user_timeout": 60000,
}

# SQLite primary result codes of a database that cannot be used right now (busy or
# locked by another process, out of memory, read-only, I/O error, disk full, cannot
# open the file, WAL protocol): the same statement may well succeed later.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 7, 8, 10, 13, 14, 15})
# PostgreSQL SQLSTATE classes of the same: connection exception, insufficient
# resources (disk full, too many connections), operator intervention (terminated,
# shutting down, starting up, statement timeout), transaction rollback (serialization,
# deadlock), system error (I/O); and lock_timeout's "lock not available".
_PG_UNAVAILABLE = frozenset({"08", "53", "57", "40", "58"})
_PG_LOCK_NOT_AVAILABLE = "55P03"


class StoreError(Exception):
    """The database could not take a write; ``disk_full`` tells SMTP to answer 452.

    ``unavailable``: the database could not be used at all (connection lost or
    refused, locked, disk full, I/O error), as opposed to refusing this operation:
    the same operation may succeed once it is back.
    """

    def __init__(self, message: str, disk_full: bool = False, unavailable: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full
        self.unavailable = unavailable or disk_full


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # auto_vacuum only takes effect before the first table exists. Set afterwards it
    # still waits for the write lock: with another process holding it, every new
    # connection (readers too) would wait out the busy timeout and then fail.
    if not cursor.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: every commit is fsynced before we acknowledge the message.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT * 1000)}")
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
            connect_args={"check_same_thread": False, "timeout": LOCK_TIMEOUT},
            pool_size=8,
            max_overflow=8,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        connect_args=_pg_connect_args(sa.engine.make_url(url)),
    )


def bound_lock_waits(engine: Engine, seconds: float = LOCK_TIMEOUT) -> None:
    """From now on, a statement on ``engine`` waits at most ``seconds`` for a lock another
    process holds (PostgreSQL ``lock_timeout``, SQLite ``busy_timeout``), then fails.

    For the running daemon, after its migrations (an index built concurrently may
    rightly wait longer for the transactions before it). Pooled connections are
    replaced, so every connection from now on has the bound.
    """
    milliseconds = max(1, int(seconds * 1000))

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.execute(f"PRAGMA busy_timeout={milliseconds}")
            return
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        try:
            dbapi_conn.execute(f"SET lock_timeout = {milliseconds}")
        finally:
            dbapi_conn.autocommit = autocommit

    event.listen(engine, "connect", on_connect)
    engine.dispose()


def _pg_connect_args(url: sa.engine.URL) -> dict[str, Any]:
    """Connection timeouts and keepalives for psycopg, unless the URL sets them itself."""
    if not url.drivername.startswith("postgresql"):
        return {}
    defaults: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, **PG_KEEPALIVES}
    return {key: value for key, value in defaults.items() if key not in url.query}


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be used right now, whatever the operation
    (see :class:`StoreError`); False for a refusal of the operation itself (a constraint,
    a value too long, a bad statement)."""
    if isinstance(exc, OSError | sa.exc.DisconnectionError | sa.exc.TimeoutError):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_UNAVAILABLE
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    # No SQLSTATE: the client's own error (the connection failed, or was lost).
    return (
        sqlstate is None
        or str(sqlstate)[:2] in _PG_UNAVAILABLE
        or sqlstate == _PG_LOCK_NOT_AVAILABLE
    )


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
    return StoreError(
        "disk full" if disk_full else "database unavailable",
        disk_full=disk_full,
        unavailable=is_unavailable(exc),
    )


def store_unavailable(exc: BaseException) -> bool:
    """``exc`` is a StoreError for a database that cannot be used right now (see
    :class:`StoreError`): the same write may succeed once it is back."""
    return isinstance(exc, StoreError) and exc.unavailable


class FailureLog:
    """Logs a recurring activity's failures once per run of failures and reason (a
    database outage fails every round of every loop), then once when it works again."""

    def __init__(self, logger: logging.Logger, activity: str) -> None:
        self._log = logger
        self.activity = activity
        self._since: float | None = None
        self._failures = 0
        self._reason = ""

    def failed(self, exc: BaseException) -> None:
        """One failure: logged when it is the first of a run or says something new."""
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self._failures += 1
        if self._since is None:
            self._since = time.monotonic()
        if reason != self._reason:
            self._reason = reason
            self._log.warning("%s: %s", self.activity, reason)
        else:
            self._log.debug("%s: %s", self.activity, reason)

    def worked(self) -> None:
        """A success: ends a run of failures, said in one line."""
        if self._since is None:
            return
        self._log.warning(
            "%s: working again after %.1fs (%d failed round%s)",
            self.activity,
            time.monotonic() - self._since,
            self._failures,
            "" if self._failures == 1 else "s",
        )
        self._since = None
        self._failures = 0
        self._reason = ""
