"""POST /api/admin/maintenance/cleanup: what it deletes, dry runs, space, the file shrinking."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from daemon.service import RelayService
from daemon.store import admin
from daemon.store.engagement import RecipientEvent, WebhookEvent
from daemon.store.models import delivery_attempts, message_content, message_recipients, messages
from tests.api.conftest import AUTH, assert_envelope, finish, send


async def age(service: RelayService, ids: list[str], days: int) -> None:
    """Move messages ``days`` into the past (the test's time machine)."""
    then = datetime.now(UTC) - timedelta(days=days)
    await service.committer.run(
        lambda c: c.execute(
            messages.update()
            .where(messages.c.id.in_(ids))
            .values(queued_at=then, processed_at=then)
        )
    )


async def count(service: RelayService, table: sa.Table) -> int:
    return int(
        await service.reader.run(
            lambda c: c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        )
    )


async def cleanup(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/admin/maintenance/cleanup", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_deletes_old_finished_mail_only(
    client: httpx.AsyncClient, service: RelayService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "BATCH", 2)  # several batches
    sent = [await send(client) for _ in range(3)]
    for message_id in sent:
        await finish(service, message_id, "sent", 250)
    bad = await send(client)
    await finish(service, bad, "failed")
    pending = await send(client)
    recent = await send(client)
    await finish(service, recent, "sent", 250)
    await age(service, [*sent, bad, pending], 100)

    dry = await cleanup(client, older_than_days=90, dry_run=True)
    assert dry["deleted"] == {"messages": 4, "webhook_events": 0, "recipient_events": 0}
    assert dry["dry_run"] is True
    assert dry["space_freed_mb"] > 0
    assert await count(service, messages) == 6

    only_failed = await cleanup(client, older_than_days=90, include_sent=False)
    assert only_failed["deleted"]["messages"] == 1
    assert (await client.get(f"/api/messages/{bad}")).status_code == 404

    done = await cleanup(client, older_than_days=90)
    assert done["deleted"]["messages"] == 3
    assert done["space_freed_mb"] == pytest.approx(dry["space_freed_mb"] * 3 / 4, rel=0.2)
    for message_id in sent:
        assert (await client.get(f"/api/messages/{message_id}")).status_code == 404
    # The pending message stays however old it is; the recent one stays too.
    assert (await client.get(f"/api/messages/{pending}")).status_code == 200
    assert (await client.get(f"/api/messages/{recent}")).status_code == 200
    assert await count(service, messages) == 2
    for table in (message_content, message_recipients):
        assert await count(service, table) == 2
    assert await count(service, delivery_attempts) == 1  # the recent one's attempt
    assert (await cleanup(client, older_than_days=90))["deleted"]["messages"] == 0


async def test_space_freed_is_the_stored_size(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    blob = base64.b64encode(os.urandom(300_000)).decode()
    ids = []
    for _ in range(4):
        message_id = await send(
            client,
            attachments=[{"filename": "a.bin", "content": blob, "content_type": "x/y"}],
        )
        await finish(service, message_id, "sent", 250)
        ids.append(message_id)
    await age(service, ids, 200)
    sizes = await service.reader.run(
        lambda c: c.execute(sa.select(sa.func.sum(messages.c.size))).scalar_one()
    )
    data = await cleanup(client, older_than_days=90)
    freed = data["space_freed_mb"] * 1024 * 1024
    # Every raw byte, plus the columns: more than the content, not much more.
    assert sizes < freed < sizes * 1.05 + 64 * 1024


@pytest.fixture
def sqlite_only(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the file shrinking is SQLite's; PostgreSQL gets VACUUM (covered above)")


async def test_sqlite_file_really_shrinks(
    sqlite_only: None, client: httpx.AsyncClient, service: RelayService, db_url: str
) -> None:
    path = Path(sa.engine.make_url(db_url).database or "")
    blob = base64.b64encode(os.urandom(400_000)).decode()
    ids = []
    for _ in range(12):
        message_id = await send(
            client, attachments=[{"filename": "a.bin", "content": blob, "content_type": "x/y"}]
        )
        await finish(service, message_id, "sent", 250)
        ids.append(message_id)
    await age(service, ids, 100)
    await service.reader.run(lambda c: c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").all())
    before = path.stat().st_size
    assert before > 4_500_000
    data = await cleanup(client, older_than_days=90)
    after = path.stat().st_size
    assert data["deleted"]["messages"] == 12
    assert before - after > 4_000_000, (before, after)
    assert data["database_file_mb"]["after"] < data["database_file_mb"]["before"]


async def test_deletes_old_engagement_events(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    old = datetime.now(UTC) - timedelta(days=120)
    new = datetime.now(UTC)
    webhook_events = WebhookEvent.__table__  # type: ignore[attr-defined]
    recipient_events = RecipientEvent.__table__  # type: ignore[attr-defined]

    def create(conn: sa.Connection) -> None:
        conn.execute(
            webhook_events.insert(),
            [
                {
                    "source": "mandrill",
                    "event": "open",
                    "dedupe_key": f"wh-{i}",
                    "payload": {"n": i, "pad": "x" * 100},
                    "received_at": when,
                }
                for i, when in enumerate([old] * 5 + [new])
            ],
        )
        conn.execute(
            recipient_events.insert(),
            [
                {
                    "workspace_id": "default",
                    "type": "open",
                    "source": "pixel",
                    "data": {},
                    "occurred_at": when,
                    "dedupe_key": f"re-{i}",
                }
                for i, when in enumerate([old] * 3 + [new] * 2)
            ],
        )

    await service.committer.run(create)
    dry = await cleanup(client, older_than_days=90, dry_run=True)
    assert dry["deleted"] == {"messages": 0, "webhook_events": 5, "recipient_events": 3}
    done = await cleanup(client, older_than_days=90)
    assert done["deleted"] == {"messages": 0, "webhook_events": 5, "recipient_events": 3}
    assert await count(service, webhook_events) == 1
    assert await count(service, recipient_events) == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "MISSING_REQUIRED_FIELD"),
        ({"older_than_days": "90"}, 400, "INVALID_REQUEST"),
        ({"older_than_days": -1}, 400, "INVALID_REQUEST"),
        ({"older_than_days": 9, "include_sent": "no"}, 400, "INVALID_REQUEST"),
        ({"older_than_days": 9, "vacuum_full": True}, 400, "INVALID_REQUEST"),
    ],
)
async def test_refusals(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    assert_envelope(await client.post("/api/admin/maintenance/cleanup", json=body), status, code)


async def test_scoped_call_is_refused(anon: httpx.AsyncClient) -> None:
    response = await anon.post(
        "/api/admin/maintenance/cleanup",
        json={"older_than_days": 90},
        headers={**AUTH, "X-Workspace-ID": "ws-1"},
    )
    assert_envelope(response, 403, "INSUFFICIENT_PERMISSIONS")
