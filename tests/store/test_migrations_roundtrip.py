"""Migrations on populated databases: downgrade and upgrade again keep the rows each
revision keeps; a failed SQLite run changes nothing; two migrators at once both succeed.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from daemon.store.engine import make_engine
from daemon.store.migrate import current_revision, downgrade, head_revision, upgrade
from daemon.store.schema import metadata

ROOT = Path(__file__).resolve().parents[2]
T = "2024-05-01 12:00:00"
# The tables of revision 0001, which every downgrade short of base keeps, and the
# columns they had then.
KEPT = {
    "messages": "id, uuid, workspace_id, campaign_id, source, status, subject, queued_at",
    "message_content": "message_id, raw",
    "message_recipients": "id, message_id, address, status",
    "delivery_attempts": "id, message_id, provider, outcome, reply",
    "settings": "key, value",
}


def _run(conn: sa.Connection, sql: str, **params: Any) -> None:
    conn.execute(sa.text(sql), params)


def _populate(engine: Engine) -> None:
    """Rows in the tables of every revision (at head)."""
    with engine.begin() as conn:
        for i in range(3):
            mid = f"msg-{i}"
            _run(
                conn,
                "INSERT INTO messages (id, uuid, workspace_id, campaign_id, source, mail_from,"
                " from_header, to_addrs, cc_addrs, bcc_addrs, subject, headers, attachments,"
                " metadata, priority, status, size, retry_count, queued_at, next_attempt_at,"
                " thread_id, dsn_delayed_at) VALUES (:id, :u, 'ws', 'spring', 'api',"
                " 'a@example.com', '', '[\"b@example.com\"]', '[]', '[]', :s, '{}', '[]',"
                " '{}', 1, 'sent', 10, 0, :t, :t, 'thread', :t)",
                id=mid,
                u=f"uuid-{i}",
                s=f"subject {i}",
                t=T,
            )
            _run(conn, "INSERT INTO message_content VALUES (:id, :raw)", id=mid, raw=b"raw\0")
            _run(
                conn,
                "INSERT INTO message_recipients (message_id, address, status)"
                " VALUES (:id, 'B@example.com', 'sent')",
                id=mid,
            )
            _run(
                conn,
                "INSERT INTO delivery_attempts (message_id, attempted_at, provider, outcome,"
                " reply, duration_ms) VALUES (:id, :t, 'outbox', 'sent', '250 ok', 3)",
                id=mid,
                t=T,
            )
            _run(
                conn,
                "INSERT INTO message_tracking (message_id, workspace_id, rid, recipient_id,"
                " prepared_at) VALUES (:id, 'ws', 'r', 1, :t)",
                id=mid,
                t=T,
            )
        _run(conn, "INSERT INTO settings VALUES ('maintenance', '{\"on\": false}', :t)", t=T)
        _run(
            conn,
            "INSERT INTO recipients (workspace_id, email, status, bounce_count,"
            " total_received, total_opened, total_clicked, metadata, created_at, updated_at)"
            " VALUES ('ws', 'b@example.com', 'ACTIVE', 0, 0, 0, 0, '{}', :t, :t)",
            t=T,
        )
        _run(
            conn,
            "INSERT INTO workspaces VALUES ('ws', 'WS', 'free', NULL, NULL, NULL, :t, :t)",
            t=T,
        )
        _run(
            conn,
            "INSERT INTO webhooks VALUES ('wh_1', 'ws', 'https://example.com/h', 's',"
            " '[\"opened\"]', NULL, :on, :t, :t)",
            on=True,
            t=T,
        )
        _run(
            conn,
            "INSERT INTO webhook_deliveries (id, webhook_id, workspace_id, event_type, body,"
            " status, attempts, next_attempt_at, created_at, updated_at) VALUES ('dlv_1',"
            " 'wh_1', 'ws', 'opened', '{}', 'pending', 0, :t, :t, :t)",
            t=T,
        )


def _kept(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table: [tuple(r) for r in conn.execute(sa.text(f"SELECT {cols} FROM {table}"))]
            for table, cols in KEPT.items()
        }


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def _assert_models_agree(engine: Engine) -> None:
    with engine.connect() as conn, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*expression-based index")
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        assert compare_metadata(context, metadata) == []


def test_downgrade_and_upgrade_again_with_data(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        _populate(engine)
        kept = _kept(engine)
        assert all(len(rows) > 0 for rows in kept.values())

        # Every branch back to 0001: its tables and rows stay as they were (on SQLite the
        # 0006 and 0008 downgrades rebuild messages, whose old copy is then dropped).
        assert downgrade(engine, "0001")[1] == "0001"
        assert _tables(engine) == set(KEPT)
        assert _kept(engine) == kept

        assert upgrade(engine)[1] == head_revision()
        assert _kept(engine) == kept
        _assert_models_agree(engine)
        with engine.connect() as conn:
            # 0003 derived the campaign of the mail already there again.
            campaign = conn.execute(sa.text("SELECT id, messages FROM campaigns")).all()
            assert [tuple(r) for r in campaign] == [("spring", 3)]

        assert downgrade(engine, "base") == (head_revision(), None)
        assert _tables(engine) == set()
        assert upgrade(engine) == (None, head_revision())
        _assert_models_agree(engine)
    finally:
        engine.dispose()


def test_a_failed_sqlite_migration_changes_nothing(sqlite_url: str) -> None:
    """One transaction for the run: no half-built schema that the next start trips on."""
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            # Something in the way of migration 0009, which runs after 0001, 0003, 0010.
            conn.execute(sa.text("CREATE TABLE operator_notes (x TEXT)"))
            conn.execute(
                sa.text("CREATE INDEX ix_message_recipients_address_lower ON operator_notes (x)")
            )
        try:
            upgrade(engine)
            raise AssertionError("the migration went through an existing index name")
        except sa.exc.OperationalError as exc:
            assert "ix_message_recipients_address_lower already exists" in str(exc)
        assert _tables(engine) == {"operator_notes"}
        assert current_revision(engine) is None
        with engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1

        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE operator_notes"))
        assert upgrade(engine) == (None, head_revision())
    finally:
        engine.dispose()


MIGRATOR = """
import sys
from daemon.store.engine import make_engine
from daemon.store.migrate import upgrade
before, after = upgrade(make_engine(sys.argv[1]))
print(before or "empty", after)
"""


def test_two_daemons_migrating_at_once_both_succeed(db_url: str) -> None:
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, db_url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        results.append(out.split())
    head = head_revision()
    assert sorted(results) == sorted([["empty", head]] + [[head, head]] * 2)
