"""Integer ids that leave the database are never handed out twice (migration 0010).

SQLite without AUTOINCREMENT gives a new row max(rowid) + 1, so the id of the newest
recipient, once deleted, went to the next one created: an API client holding that id,
the ``rid`` in tracking URLs of mail already sent and message_tracking.recipient_id
all came to name someone else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from daemon.store import audience
from daemon.store.engine import make_engine
from daemon.store.migrate import current_revision, downgrade, head_revision, upgrade
from daemon.store.schema import NEVER_REUSED_IDS, metadata
from tests.conftest import StartServer

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
ADMIN = {"Authorization": "Bearer test-admin-token", "X-Workspace-ID": "ws-ids"}

# Integer-keyed tables whose ids never leave their rows: reusing one changes nothing a
# reader can see, so they keep SQLite's cheaper allocation (these are on the SMTP and
# delivery hot paths). A new integer-keyed table must join one list or the other.
INTERNAL_IDS = {
    "message_recipients": "read only with its message, ordered by id within it",
    "delivery_attempts": "read only with its message, ordered by id within it",
    "recipient_events": "deduplicated by dedupe_key; the id is never read",
    "webhook_events": "deduplicated by dedupe_key; the id is never read",
}


async def test_a_deleted_recipients_id_goes_to_no_one_else(start_server: StartServer) -> None:
    """Through the API, on SQLite and PostgreSQL: create, delete the newest, create."""
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.base_url, headers=ADMIN) as client:

        async def add(email: str) -> int:
            response = await client.post("/api/recipients", json={"email": email})
            assert response.status_code == 201, response.text
            return int(response.json()["data"]["id"])

        first = await add("first@example.com")
        newest = await add("newest@example.com")
        assert (await client.delete("/api/recipients/newest@example.com")).status_code == 200
        after = await add("after@example.com")
        assert after > newest > first
        # Every row gone: still no id handed out before.
        for email in ("first@example.com", "after@example.com"):
            assert (await client.delete(f"/api/recipients/{email}")).status_code == 200
        assert await add("again@example.com") > after


def test_every_integer_id_is_either_never_reused_or_internal() -> None:
    integer_keyed = {
        table.name
        for table in metadata.tables.values()
        if len(table.primary_key.columns) == 1
        and isinstance(next(iter(table.primary_key.columns)).type, sa.Integer)
    }
    never_reused = {table.name for table in NEVER_REUSED_IDS}
    assert never_reused.isdisjoint(INTERNAL_IDS)
    assert integer_keyed == never_reused | set(INTERNAL_IDS)
    for table in metadata.tables.values():
        assert table.dialect_options["sqlite"]["autoincrement"] == (table.name in never_reused)


def _recipient(conn: Connection, email: str, **extra: Any) -> Any:
    values = {"workspace_id": "ws", "email": email, "created_at": NOW, "updated_at": NOW}
    return audience.insert_recipient(conn, {"metadata": {"k": email}, **values, **extra})


def _tracked(conn: Connection, message_id: str, recipient_id: int) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO messages (id, uuid, workspace_id, source, mail_from, from_header,"
            " to_addrs, cc_addrs, bcc_addrs, subject, headers, attachments, metadata,"
            " priority, status, size, retry_count, queued_at, next_attempt_at) VALUES"
            " (:id, :id, 'ws', 'api', '', '', '[]', '[]', '[]', '', '{}', '[]', '{}',"
            " 1, 'sent', 1, 0, :t, :t)"
        ),
        {"id": message_id, "t": NOW.replace(tzinfo=None)},
    )
    conn.execute(
        sa.text(
            "INSERT INTO message_tracking (message_id, workspace_id, rid, recipient_id,"
            " prepared_at) VALUES (:id, 'ws', :rid, :rid, :t)"
        ),
        {"id": message_id, "rid": recipient_id, "t": NOW.replace(tzinfo=None)},
    )


def test_migration_0010_keeps_every_row_and_id(sqlite_url: str) -> None:
    """An existing SQLite database: rows and ids kept, deleted ids still remembered."""
    engine = make_engine(sqlite_url)
    try:
        upgrade(engine)
        downgrade(engine, "0010@-1")  # a database from before this revision
        with engine.connect() as conn:
            sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'recipients'")
            ).scalar_one()
            assert "AUTOINCREMENT" not in sql
        with engine.begin() as conn:
            ids = [_recipient(conn, f"r{i}@example.com", first_name=f"R{i}").id for i in range(5)]
            assert ids == [1, 2, 3, 4, 5]
            audience.delete_recipient(conn, "ws", "r2@example.com")
            # Mail went to recipient 7 once; 5, 6 and 7 are then deleted.
            _recipient(conn, "r6@example.com")
            _recipient(conn, "r7@example.com")
            _tracked(conn, "msg-old", 7)
            for email in ("r4@example.com", "r6@example.com", "r7@example.com"):
                audience.delete_recipient(conn, "ws", email)
            before = [tuple(r) for r in conn.execute(sa.select(audience.recipients)).all()]
        assert [r[0] for r in before] == [1, 2, 4]

        assert upgrade(engine)[1] == head_revision()
        with engine.begin() as conn:
            after = [tuple(r) for r in conn.execute(sa.select(audience.recipients)).all()]
            assert after == before
            # Past 7, the highest id message_tracking still names.
            assert _recipient(conn, "new@example.com").id == 8
            # The unique (workspace, email) constraint and the indexes came through.
            try:
                _recipient(conn, "r1@example.com")
                raise AssertionError("a second r1@example.com was accepted")
            except audience.RecipientExists:
                pass
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("recipients")}
            assert {"ix_recipients_ws_status", "ix_recipients_status_email"} <= indexes
    finally:
        engine.dispose()


def test_migration_0010_downgrades_and_upgrades_with_rows(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            for i in range(3):
                _recipient(conn, f"r{i}@example.com")
        downgrade(engine, "0010@-1")
        assert "0010" not in (current_revision(engine) or "")
        upgrade(engine)
        with engine.begin() as conn:
            rows = conn.execute(sa.select(audience.recipients.c.id)).scalars().all()
            assert rows == [1, 2, 3]
            audience.delete_recipient(conn, "ws", "r2@example.com")
            assert _recipient(conn, "r3@example.com").id == 4
    finally:
        engine.dispose()
