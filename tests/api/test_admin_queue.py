"""Bulk retry and cancel: filters, dry runs, batches, workspace scope, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from daemon.service import RelayService
from daemon.store import admin
from daemon.store.models import messages
from tests.api.conftest import AUTH, assert_envelope, finish, send


async def status(client: httpx.AsyncClient, message_id: str) -> str:
    return str((await client.get(f"/api/messages/{message_id}")).json()["data"]["status"])


async def bulk(client: httpx.AsyncClient, action: str, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/api/admin/queue/{action}", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def failed(client: httpx.AsyncClient, service: RelayService, **fields: Any) -> str:
    message_id = await send(client, **fields)
    await finish(service, message_id, "failed")
    return message_id


async def test_retry_by_recipient_domain_with_dry_run(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    gmail = [await failed(client, service, to=[f"u{i}@gmail.example"]) for i in range(3)]
    other = await failed(client, service, to=["x@other.example"])

    preview = await bulk(client, "retry", recipient_domain="gmail.example", dry_run=True)
    assert preview == {
        "action": "retry",
        "dry_run": True,
        "matched": 3,
        "count": 3,
        "ids": sorted(gmail),
        "skipped": [],
    }
    assert {await status(client, i) for i in gmail} == {"failed"}

    done = await bulk(client, "retry", recipient_domain="@GMAIL.example")
    assert done["count"] == 3 and done["ids"] == sorted(gmail)
    assert {await status(client, i) for i in gmail} == {"queued"}
    assert await status(client, other) == "failed"
    detail = (await client.get(f"/api/messages/{gmail[0]}")).json()["data"]
    assert detail["recipients"][0]["status"] == "pending"
    assert detail["error"] is None


async def test_retry_filters_by_sender_campaign_error_and_age(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    a = await failed(client, service, **{"from": "alerts@example.com", "campaign_id": "c-1"})
    b = await failed(client, service, **{"from": "news@example.com", "campaign_id": "c-2"})
    assert (await bulk(client, "retry", sender="ALERTS@example.com", dry_run=True))["ids"] == [a]
    assert (await bulk(client, "retry", campaign_id="c-2", dry_run=True))["ids"] == [b]
    assert (await bulk(client, "retry", error_contains="MAILBOX", dry_run=True))["matched"] == 2
    assert (await bulk(client, "retry", error_contains="quota", dry_run=True))["matched"] == 0
    assert (await bulk(client, "retry", provider="outbox", dry_run=True))["matched"] == 2
    assert (await bulk(client, "retry", older_than="1h", dry_run=True))["matched"] == 0
    assert (await bulk(client, "retry", newer_than="1h", dry_run=True))["matched"] == 2
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert (await bulk(client, "retry", newer_than=past, dry_run=True))["matched"] == 2
    assert (await bulk(client, "retry", older_than=past, dry_run=True))["matched"] == 0


async def test_retry_of_partly_delivered_messages_sends_only_to_who_did_not_get_them(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    """A single retry took a partly delivered (sent) message, but the bulk retry refused
    status "sent": an outage's partial deliveries had to be retried one by one."""
    to = ["got@example.org", "not@example.org"]
    partly = await send(client, to=to)
    await finish(service, partly, "sent", refused=["not@example.org"])
    everyone = await send(client, to=to)
    await finish(service, everyone, "sent")
    failed_one = await failed(client, service)

    preview = await bulk(client, "retry", status="sent", dry_run=True)
    assert (preview["matched"], preview["ids"]) == (1, [partly])
    done = await bulk(client, "retry", status=["sent", "failed"])
    assert done["ids"] == sorted([partly, failed_one]) and done["skipped"] == []
    assert await status(client, partly) == "queued"
    assert await status(client, everyone) == "sent"
    detail = (await client.get(f"/api/messages/{partly}")).json()["data"]
    got = {r["address"]: r["status"] for r in detail["recipients"]}
    assert got == {"got@example.org": "sent", "not@example.org": "pending"}
    assert (await bulk(client, "retry", status="sent"))["matched"] == 0


async def test_retry_of_deferred_queued_messages_makes_them_due(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    message_id = await send(client)
    later = datetime.now(UTC) + timedelta(hours=1)
    await service.committer.run(
        lambda c: c.execute(
            messages.update().where(messages.c.id == message_id).values(next_attempt_at=later)
        )
    )
    data = await bulk(client, "retry", status="queued")
    assert data["ids"] == [message_id]
    due = await service.reader.run(
        lambda c: c.execute(
            sa.select(messages.c.next_attempt_at).where(messages.c.id == message_id)
        ).scalar_one()
    )
    assert due <= datetime.now(UTC)


async def test_cancel_in_batches_across_many_messages(
    client: httpx.AsyncClient, service: RelayService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "BATCH", 4)
    ids = [await send(client, campaign_id="big") for _ in range(10)]
    kept = await send(client, campaign_id="small")
    data = await bulk(client, "cancel", campaign_id="big")
    assert data["matched"] == 10 and data["count"] == 10
    assert data["ids"] == sorted(ids)
    assert {await status(client, i) for i in ids} == {"cancelled"}
    assert await status(client, kept) == "queued"
    again = await bulk(client, "cancel", campaign_id="big")
    assert again["matched"] == 0


async def test_cancel_scheduled_only(client: httpx.AsyncClient, service: RelayService) -> None:
    now = await send(client)
    later = await send(
        client,
        scheduling={"send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
    )
    data = await bulk(client, "cancel", status="scheduled")
    assert data["ids"] == [later]
    assert await status(client, now) == "queued"


async def test_workspace_scope(client: httpx.AsyncClient, service: RelayService) -> None:
    mine = await failed(client, service, workspace_id="ws-a")
    await failed(client, service, workspace_id="ws-b")
    scoped = await client.post(
        "/api/admin/queue/retry",
        json={"status": "failed", "dry_run": True},
        headers={**AUTH, "X-Workspace-ID": "ws-a"},
    )
    assert scoped.json()["data"]["ids"] == [mine]
    other = await client.post(
        "/api/admin/queue/retry",
        json={"workspace_id": "ws-b"},
        headers={**AUTH, "X-Workspace-ID": "ws-a"},
    )
    assert_envelope(other, 400, "INVALID_REQUEST")  # the admin's header and body disagree
    assert (await bulk(client, "retry", workspace_id="ws-b", dry_run=True))["matched"] == 1


@pytest.mark.parametrize(
    ("action", "body", "fragment"),
    [
        ("retry", {}, "at least one filter"),
        ("retry", {"dry_run": True}, "at least one filter"),
        ("retry", {"status": "processing"}, "not processing"),
        ("cancel", {"status": "failed"}, "not failed"),
        ("retry", {"older_than": "yesterday"}, "older_than"),
        ("retry", {"status": "failed", "bogus": 1}, "bogus"),
        ("retry", {"recipient_domain": "a b"}, "recipient_domain"),
        ("cancel", {"status": "queued", "dry_run": "yes"}, "dry_run"),
    ],
)
async def test_refusals(
    client: httpx.AsyncClient, action: str, body: dict[str, Any], fragment: str
) -> None:
    response = await client.post(f"/api/admin/queue/{action}", json=body)
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert fragment in error["message"]
