"""Apply Alembic migrations (on start, or alone with ``relayd migrate``).

How a run is held together, per database:

- PostgreSQL: one transaction per migration (env.py), so a migration may step out of
  its transaction with ``autocommit_block()`` (``CREATE INDEX CONCURRENTLY``). Concurrent
  daemons are serialised by a session-level advisory lock, taken by polling so that a
  daemon waiting for it holds no snapshot that a concurrent index build would wait for.
- SQLite: the whole run is one ``BEGIN IMMEDIATE`` transaction, so it is all or nothing
  (pysqlite would otherwise run DDL outside any transaction and leave a half-built schema
  behind a failure) and a second migrator waits for the first. Foreign keys are off for
  the run, as SQLite's table rebuilds (Alembic batch mode) need: with them on, dropping
  the old copy of a parent table deletes every child row through ON DELETE CASCADE.
  ``PRAGMA foreign_key_check`` must find nothing before the run commits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).parent / "migrations"
# Serialises concurrent daemons migrating one PostgreSQL database.
_PG_LOCK_KEY = 0x52454C4159
_PG_LOCK_POLL = (0.05, 1.0)  # seconds: first and longest wait between tries


class MigrationError(Exception):
    """The database's schema cannot be brought to this version's (one line, for the operator)."""


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    """The head revisions, comma-joined (feature branches each have their own head)."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return ",".join(sorted(heads)) or None


def _current(conn: sa.Connection) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return _current(conn)


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def _pg_lock(conn: sa.Connection) -> None:
    """Take the migration lock for this session, each try in its own short transaction."""
    wait = _PG_LOCK_POLL[0]
    query = sa.text("SELECT pg_try_advisory_lock(:k)")
    while True:
        got = conn.execute(query, {"k": _PG_LOCK_KEY}).scalar()
        conn.commit()
        if got:
            return
        time.sleep(wait)
        wait = min(wait * 2, _PG_LOCK_POLL[1])


def _orphans(conn: sa.Connection) -> set[tuple[str, str]]:
    """(child table, parent table) of every SQLite foreign key some row breaks."""
    return {(row[0], row[2]) for row in conn.exec_driver_sql("PRAGMA foreign_key_check")}


@contextmanager
def _migrating(engine: Engine) -> Iterator[sa.Connection]:
    """A connection that alone migrates the database (see the module docstring)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            _pg_lock(conn)
            try:
                yield conn
                conn.commit()
            finally:
                try:
                    conn.rollback()
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                    conn.commit()
                except sa.exc.SQLAlchemyError:
                    # Never hand a connection that may still hold the lock back to the pool.
                    conn.invalidate()
            return
        conn.rollback()
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            # Rows broken before (a database edited by hand) do not stop the run.
            already = _orphans(conn)
            yield conn
            broken = _orphans(conn) - already
            if broken:
                child, parent = sorted(broken)[0]
                raise MigrationError(
                    f"migrating would leave rows of {child} whose foreign key into {parent}"
                    " matches nothing; nothing was changed"
                )
            conn.commit()
        finally:
            try:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            except sa.exc.SQLAlchemyError:
                conn.invalidate()  # not back to the pool with foreign keys off


def _check_known(cfg: AlembicConfig, current: str | None) -> None:
    script = ScriptDirectory.from_config(cfg)
    unknown = [rev for rev in (current or "").split(",") if rev and not _known(script, rev)]
    if unknown:
        raise MigrationError(
            f"the database is at schema revision {', '.join(unknown)}, which this relayd"
            " does not know: a newer relayd has migrated it; run that version (or restore"
            " a backup taken before the upgrade)"
        )


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the schema to every head; returns (revisions before, revisions after)."""
    cfg = alembic_config()
    head = head_revision()
    # Already there (every start but the first after an upgrade): no lock, no write.
    now = current_revision(engine)
    if now == head:
        return now, now
    with _migrating(engine) as conn:
        before = _current(conn)
        _check_known(cfg, before)
        if conn.dialect.name == "postgresql":
            conn.commit()  # each migration then runs in a transaction of its own
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
        after = _current(conn)
    return before, after


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Take the schema back to ``revision`` ("base": empty); returns (before, after).

    For an operator undoing an upgrade (with a backup at hand) and for the tests that
    keep every downgrade path working.
    """
    cfg = alembic_config()
    with _migrating(engine) as conn:
        before = _current(conn)
        _check_known(cfg, before)
        if conn.dialect.name == "postgresql":
            conn.commit()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        after = _current(conn)
    return before, after
