"""Migration 0009 on PostgreSQL: the lower(address) index is built CONCURRENTLY.

A plain CREATE INDEX inside the migration's transaction waits for every open writer of
message_recipients and then holds a SHARE lock for the whole build, so each new message
(its recipient rows) queues behind it. These tests hold a writer open while 0009 runs
and check that another writer still goes through, and that a build cut short (which
leaves an INVALID index) is rebuilt by the next run.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from daemon.store.engine import make_engine
from daemon.store.migrate import current_revision, downgrade, head_revision, upgrade
from tests.conftest import PG_URL

INDEX = "ix_message_recipients_address_lower"
PLAIN = "ix_message_recipients_address"


class Migrator:
    """upgrade() in a thread, on an engine whose sessions pg_stat_activity can pick out."""

    def __init__(self, url: str) -> None:
        self.app = "store-mig-" + secrets.token_hex(4)
        self.engine = make_engine(f"{url}&application_name={self.app}")
        self.result: tuple[str | None, str | None] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = upgrade(self.engine)
        except BaseException as exc:  # handed to the test
            self.error = exc

    def start(self) -> Migrator:
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the migration did not finish"
        self.engine.dispose()


def _wait_for(probe: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _building(admin: Connection, app: str) -> tuple[int, str] | None:
    """(pid, statement) of the migration's DDL while it waits for a lock."""
    row = admin.execute(
        sa.text(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = :app"
            " AND wait_event_type = 'Lock'"
        ),
        {"app": app},
    ).first()
    return None if row is None else (int(row[0]), str(row[1]))


def _polling(admin: Connection, app: str) -> bool:
    """Whether ``app`` has a session, outside any transaction (between tries at the lock)."""
    return bool(
        admin.execute(
            sa.text(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = :app"
                " AND state = 'idle' AND backend_xmin IS NULL"
            ),
            {"app": app},
        ).first()
    )


def _index_state(conn: Connection, name: str) -> list[bool]:
    """indisvalid of each index called ``name`` on message_recipients (in this schema)."""
    return [
        bool(v)
        for v in conn.execute(
            sa.text(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relname = :n AND i.indrelid = 'message_recipients'::regclass"
            ),
            {"n": name},
        ).scalars()
    ]


def _add_recipient(conn: Connection, address: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO message_recipients (message_id, address, status)"
            " VALUES ('msg-1', :a, 'pending')"
        ),
        {"a": address},
    )


def _before_0009(url: str) -> Engine:
    """A populated database at every head but 0009 (as one released before 0009 is)."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO messages (id, uuid, workspace_id, source, mail_from, from_header,"
                " to_addrs, cc_addrs, bcc_addrs, subject, headers, attachments, metadata,"
                " priority, status, size, retry_count, queued_at, next_attempt_at) VALUES"
                " ('msg-1', 'u-1', 'default', 'api', 'a@example.com', '', '[]', '[]', '[]',"
                " '', '{}', '[]', '{}', 1, 'sent', 1, 0, now(), now())"
            )
        )
        for i in range(200):
            _add_recipient(conn, f"User{i}@Example.com")
    downgrade(engine, "0009@-1")
    assert "0009" not in (current_revision(engine) or "")
    with engine.connect() as conn:
        assert _index_state(conn, INDEX) == [] and _index_state(conn, PLAIN) == [True]
    return engine


def test_writers_are_not_blocked_while_the_index_builds(pg_url: str) -> None:
    engine = _before_0009(pg_url)
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    holder = engine.connect()
    try:
        # A writer whose transaction stays open: any index build must wait for it.
        _add_recipient(holder, "held@example.com")
        migrator = Migrator(pg_url).start()
        with admin.connect() as watch:
            _, statement = _wait_for(
                lambda: _building(watch, migrator.app), "the index build to wait"
            )
            assert "CONCURRENTLY" in statement.upper(), statement
            # A second daemon starting meanwhile waits for the first without stalling it
            # (waiting inside one long statement, its snapshot would hold the build up).
            second = Migrator(pg_url).start()
            _wait_for(lambda: _polling(watch, second.app), "the second daemon to wait")
            time.sleep(0.5)
            assert second.thread.is_alive()
            # Another writer, meanwhile: a plain CREATE INDEX would queue it behind the
            # build's SHARE lock (here: lock_timeout).
            with engine.connect() as writer:
                writer.execute(sa.text("SET lock_timeout = '3s'"))
                _add_recipient(writer, "during@example.com")
                writer.commit()
            assert migrator.thread.is_alive(), "the build did not wait for the open writer"
        holder.commit()
        migrator.join()
        second.join()
        assert migrator.error is None and second.error is None, (migrator.error, second.error)
        assert migrator.result is not None and migrator.result[1] == head_revision()
        assert second.result == (head_revision(), head_revision())
        with engine.connect() as conn:
            assert _index_state(conn, INDEX) == [True]
            assert _index_state(conn, PLAIN) == []
            count = conn.execute(sa.text("SELECT COUNT(*) FROM message_recipients")).scalar()
            assert count == 202
    finally:
        holder.close()
        admin.dispose()
        engine.dispose()


def test_a_build_cut_short_is_built_again(pg_url: str) -> None:
    engine = _before_0009(pg_url)
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    holder = engine.connect()
    try:
        _add_recipient(holder, "held@example.com")
        migrator = Migrator(pg_url).start()
        with admin.connect() as watch:
            pid, _ = _wait_for(lambda: _building(watch, migrator.app), "the index build")
            watch.execute(sa.text("SELECT pg_cancel_backend(:p)"), {"p": pid})
        migrator.join()
        holder.commit()
        assert isinstance(migrator.error, sa.exc.DBAPIError), migrator.error
        with engine.connect() as conn:
            # What a cancelled or failed CREATE INDEX CONCURRENTLY leaves behind.
            assert _index_state(conn, INDEX) == [False]
        assert "0009" not in (current_revision(engine) or "")

        assert upgrade(engine)[1] == head_revision()
        with engine.connect() as conn:
            assert _index_state(conn, INDEX) == [True]
            assert _index_state(conn, PLAIN) == []
            # The planner can use it: to= filters through lower(address).
            conn.execute(sa.text("SET enable_seqscan = off"))
            plan = "\n".join(
                conn.execute(
                    sa.text(
                        "EXPLAIN SELECT id FROM message_recipients"
                        " WHERE lower(address) = 'user7@example.com'"
                    )
                ).scalars()
            )
            assert INDEX in plan, plan
    finally:
        holder.close()
        admin.dispose()
        engine.dispose()


def test_downgrade_builds_the_plain_index_back(pg_url: str) -> None:
    engine = _before_0009(pg_url)
    try:
        assert upgrade(engine)[1] == head_revision()
        downgrade(engine, "0009@-1")
        with engine.connect() as conn:
            assert _index_state(conn, INDEX) == [] and _index_state(conn, PLAIN) == [True]
    finally:
        engine.dispose()
