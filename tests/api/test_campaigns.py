"""Campaign endpoints (reference 2.5) on SQLite and PostgreSQL: counters kept by the queue."""

from __future__ import annotations

import httpx
import pytest

from daemon.service import RelayService
from daemon.store import counters
from tests.api.conftest import assert_envelope, finish, send


async def stats(client: httpx.AsyncClient, campaign_id: str = "camp-123") -> dict[str, object]:
    response = await client.get(f"/api/campaigns/{campaign_id}/stats")
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()["data"]
    return data


async def test_a_campaign_exists_from_its_first_message(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/api/campaigns/camp-123/stats"), 404, "CAMPAIGN_NOT_FOUND")
    missing = await client.put("/api/campaigns/camp-123", json={"name": "January"})
    assert_envelope(missing, 404, "CAMPAIGN_NOT_FOUND")
    await send(client, to=["a@example.org", "b@example.org"], campaign_id="camp-123")
    data = await stats(client)
    assert set(data) == {"campaign_id", "name", "status", "stats", "rates", "timeline"}
    assert data["campaign_id"] == "camp-123"
    assert data["name"] is None
    assert data["status"] == "active"
    assert data["stats"] == {
        "total_recipients": 2,
        "sent": 0,
        "delivered": 0,
        "bounced": 0,
        "opened": 0,
        "clicked": 0,
        "unsubscribed": 0,
        "complained": 0,
    }
    assert data["rates"] == {
        "delivery_rate": 0.0,
        "open_rate": 0.0,
        "click_rate": 0.0,
        "bounce_rate": 0.0,
        "unsubscribe_rate": 0.0,
        "complaint_rate": 0.0,
    }
    timeline = data["timeline"]
    assert isinstance(timeline, dict)
    assert timeline["created_at"] is not None
    assert timeline["started_at"] is None
    assert timeline["completed_at"] is None


async def test_put_names_the_campaign(client: httpx.AsyncClient) -> None:
    await send(client, campaign_id="camp-123")
    response = await client.put("/api/campaigns/camp-123", json={"name": "January Newsletter"})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["name"] == "January Newsletter"
    assert (await stats(client))["name"] == "January Newsletter"
    for body, code in (
        ({}, "MISSING_REQUIRED_FIELD"),
        ({"name": ""}, "INVALID_REQUEST"),
        ({"name": 3}, "INVALID_REQUEST"),
        ({"name": "x", "colour": "red"}, "INVALID_REQUEST"),
    ):
        assert_envelope(await client.put("/api/campaigns/camp-123", json=body), 400, code)


async def test_stats_follow_deliveries_and_failures(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    sent = [await send(client, to=[f"r{i}@example.org"], campaign_id="camp-123") for i in range(3)]
    failed = await send(client, to=["x@example.org", "y@example.org"], campaign_id="camp-123")
    await send(client, campaign_id="other")
    for message_id in sent:
        await finish(service, message_id, "sent")
    data = await stats(client)
    assert data["status"] == "active"  # one message still queued
    await finish(service, failed, "failed")
    data = await stats(client)
    assert data["status"] == "completed"
    assert data["stats"] == {
        "total_recipients": 5,
        "sent": 5,
        "delivered": 3,
        "bounced": 2,
        "opened": 0,
        "clicked": 0,
        "unsubscribed": 0,
        "complained": 0,
    }
    rates = data["rates"]
    assert isinstance(rates, dict)
    assert rates["delivery_rate"] == 0.6
    assert rates["bounce_rate"] == 0.4
    timeline = data["timeline"]
    assert isinstance(timeline, dict)
    assert timeline["started_at"] is not None
    assert timeline["completed_at"] is not None
    # Engagement events (issue 7) count opens over delivered, unsubscribes over all.
    now = service.clock()

    def events(conn: object) -> None:
        for email, event in (
            ("r0@example.org", "opened"),
            ("r1@example.org", "opened"),
            ("r0@example.org", "clicked"),
            ("r2@example.org", "unsubscribed"),
            ("r1@example.org", "complained"),
        ):
            counters.record_event(
                conn,  # type: ignore[arg-type]
                workspace_id="default",
                email=email,
                event=event,
                at=now,
                campaign_id="camp-123",
            )

    await service.committer.run(events)
    rates = (await stats(client))["rates"]
    assert rates == {
        "delivery_rate": 0.6,
        "open_rate": pytest.approx(2 / 3, abs=1e-4),
        "click_rate": pytest.approx(1 / 3, abs=1e-4),
        "bounce_rate": 0.4,
        "unsubscribe_rate": 0.2,
        "complaint_rate": 0.2,
    }


async def test_cancel_and_retry_move_the_status(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    queued = await send(client, campaign_id="camp-123")
    failed = await send(client, campaign_id="camp-123")
    await finish(service, failed, "failed")
    assert (await stats(client))["status"] == "active"
    assert (await client.delete(f"/api/messages/{queued}")).status_code == 200
    assert (await stats(client))["status"] == "completed"
    assert (await client.put(f"/api/messages/{failed}/retry")).status_code == 200
    data = await stats(client)
    assert data["status"] == "active"
    assert isinstance(data["timeline"], dict)
    assert data["timeline"]["completed_at"] is None
    await finish(service, failed, "sent")
    data = await stats(client)
    assert data["status"] == "completed"
    assert isinstance(data["stats"], dict)
    assert data["stats"]["delivered"] == 1


async def test_campaigns_are_per_workspace(client: httpx.AsyncClient) -> None:
    await send(client, campaign_id="camp-1", workspace_id="ws-a")
    await send(client, campaign_id="camp-1", workspace_id="ws-b")
    await send(client, to=["x@example.org", "y@example.org"], campaign_id="camp-1",
               workspace_id="ws-b")  # fmt: skip
    ambiguous = await client.get("/api/campaigns/camp-1/stats")
    assert_envelope(ambiguous, 400, "INVALID_REQUEST")
    scoped = await client.get("/api/campaigns/camp-1/stats", headers={"X-Workspace-ID": "ws-b"})
    assert scoped.json()["data"]["stats"]["total_recipients"] == 3
    query = await client.get("/api/campaigns/camp-1/stats?workspace_id=ws-a")
    assert query.json()["data"]["stats"]["total_recipients"] == 1
    denied = await client.get(
        "/api/campaigns/camp-1/stats?workspace_id=ws-a", headers={"X-Workspace-ID": "ws-b"}
    )
    assert_envelope(denied, 400, "INVALID_REQUEST")  # the admin's header and query disagree
    hidden = await client.get("/api/campaigns/camp-1/stats", headers={"X-Workspace-ID": "ws-c"})
    assert_envelope(hidden, 404, "CAMPAIGN_NOT_FOUND")


async def test_campaign_routes_need_a_token(anon: httpx.AsyncClient) -> None:
    assert_envelope(await anon.get("/api/campaigns/c/stats"), 401, "AUTH_REQUIRED")
    assert_envelope(await anon.put("/api/campaigns/c", json={"name": "n"}), 401, "AUTH_REQUIRED")
