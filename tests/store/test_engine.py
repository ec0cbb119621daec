"""SQLite is durable by construction: WAL, synchronous=FULL on every pooled connection."""

from __future__ import annotations

import sqlalchemy as sa

from daemon.store.engine import make_engine
from daemon.store.migrate import current_revision, head_revision, upgrade


def test_every_sqlite_connection_is_wal_and_fsynced(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    conns = [engine.connect() for _ in range(3)]
    try:
        for conn in conns:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(sa.text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert conn.execute(sa.text("PRAGMA auto_vacuum")).scalar() == 2  # INCREMENTAL
            assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        for conn in conns:
            conn.close()
        engine.dispose()


def test_migrations_reach_head_and_are_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert upgrade(engine) == (None, head_revision())
        assert upgrade(engine) == (head_revision(), head_revision())
        assert current_revision(engine) == head_revision()
        tables = set(sa.inspect(engine).get_table_names())
        assert {"messages", "message_content", "message_recipients", "delivery_attempts"} <= tables
    finally:
        engine.dispose()
