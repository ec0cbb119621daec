"""Defects found by the second API audit (campaigns, stats, admin, webhooks, Mandrill,
Maylng), each pinned by the request that showed it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from daemon.server import Server
from daemon.service import RelayService
from tests.api.conftest import assert_envelope, finish, send
from tests.api.live import http, live_relay  # noqa: F401  (the live_relay fixture)
from tests.api.tenants import make_key, make_workspace


async def _campaign(client: httpx.AsyncClient, campaign_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/campaigns/{campaign_id}/stats")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


# -- campaigns: counters through bulk queue operations and retries -----------------------


async def test_bulk_cancel_completes_the_campaign(client: httpx.AsyncClient) -> None:
    await send(client, campaign_id="camp-bulk-cancel")
    cancelled = await client.post(
        "/api/admin/queue/cancel", json={"campaign_id": "camp-bulk-cancel"}
    )
    assert cancelled.json()["data"]["count"] == 1
    data = await _campaign(client, "camp-bulk-cancel")
    assert data["status"] == "completed"  # nothing of it is pending any more
    assert data["timeline"]["completed_at"] is not None


async def test_bulk_retry_makes_the_campaign_active_again(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    mid = await send(client, campaign_id="camp-bulk-retry")
    await finish(service, mid, "failed")
    assert (await _campaign(client, "camp-bulk-retry"))["status"] == "completed"
    retried = await client.post("/api/admin/queue/retry", json={"campaign_id": "camp-bulk-retry"})
    assert retried.json()["data"]["count"] == 1
    data = await _campaign(client, "camp-bulk-retry")
    assert data["status"] == "active"
    assert data["timeline"]["completed_at"] is None
    await finish(service, mid, "sent")
    data = await _campaign(client, "camp-bulk-retry")
    assert data["status"] == "completed"
    stats = data["stats"]
    assert (stats["total_recipients"], stats["sent"], stats["delivered"], stats["bounced"]) == (
        1,
        1,
        1,
        0,
    )


async def test_a_retried_recipient_counts_once(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    mid = await send(client, campaign_id="camp-retry", to=["a@example.org", "b@example.org"])
    await finish(service, mid, "failed")
    stats = (await _campaign(client, "camp-retry"))["stats"]
    assert (stats["sent"], stats["bounced"]) == (2, 2)
    assert (await client.put(f"/api/messages/{mid}/retry")).status_code == 200
    await finish(service, mid, "sent")
    data = await _campaign(client, "camp-retry")
    stats, rates = data["stats"], data["rates"]
    # sent == delivered + bounced, and no count passes total_recipients.
    assert (stats["total_recipients"], stats["sent"], stats["delivered"], stats["bounced"]) == (
        2,
        2,
        2,
        0,
    )
    assert rates["delivery_rate"] == 1.0 and rates["bounce_rate"] == 0.0


# -- stats/realtime ------------------------------------------------------------------------


async def test_head_of_the_realtime_stream_leaves_the_connection_usable(
    live_relay: Server,  # noqa: F811
) -> None:
    async with http(live_relay) as client:
        head = await client.head("/api/stats/realtime")
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        # The same keep-alive connection answers the next request.
        after = await asyncio.wait_for(client.get("/api/stats"), 5)
        assert after.status_code == 200


# -- admin config, keys ----------------------------------------------------------------------


async def test_config_never_shows_a_password_in_a_url(client: httpx.AsyncClient) -> None:
    url = "postgresql+psycopg://relay:hunter2@db.example/relay"
    changed = await client.put("/api/admin/config", json={"database": {"url": url}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["restart_required"] is True
    shown = await client.get("/api/admin/config")
    assert "hunter2" not in shown.text
    assert shown.json()["data"]["database"]["url"] == (
        "postgresql+psycopg://relay:********@db.example/relay"
    )


async def test_key_list_refuses_two_workspaces(client: httpx.AsyncClient) -> None:
    await make_workspace(client, "ws-a")
    await make_workspace(client, "ws-b")
    await make_key(client, "ws-a")
    listed = await client.get(
        "/api/admin/keys", params={"workspace_id": "ws-a"}, headers={"X-Workspace-ID": "ws-b"}
    )
    assert_envelope(listed, 400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/api/webhooks/a%00b", "WEBHOOK_NOT_FOUND"),
        ("PUT", "/api/webhooks/a%00b", "WEBHOOK_NOT_FOUND"),
        ("DELETE", "/api/webhooks/a%00b", "WEBHOOK_NOT_FOUND"),
        ("POST", "/api/webhooks/a%00b/test", "WEBHOOK_NOT_FOUND"),
        ("POST", "/api/webhooks/a%00b/replay", "WEBHOOK_NOT_FOUND"),
        ("POST", "/api/webhooks/deliveries/a%00b/replay", "WEBHOOK_NOT_FOUND"),
        ("GET", "/api/webhooks/deliveries?webhook_id=a%00b", "INVALID_REQUEST"),
        ("DELETE", "/api/admin/keys/key_%00", "API_KEY_NOT_FOUND"),
    ],
)
async def test_ids_with_nul_are_not_found_not_a_database_error(
    client: httpx.AsyncClient, method: str, path: str, code: str
) -> None:
    body = {"enabled": False} if method == "PUT" else None
    response = await client.request(method, path, json=body)
    assert_envelope(response, 400 if code == "INVALID_REQUEST" else 404, code)


# -- Mandrill: unsigned posts -------------------------------------------------------------


def _event(kind: str, mid: str, email: str, **metadata: str) -> dict[str, Any]:
    return {
        "event": kind,
        "_id": mid,
        "ts": 1705320000,
        "msg": {"_id": mid, "email": email, "metadata": metadata},
    }


async def _status(client: httpx.AsyncClient, email: str, workspace_id: str) -> str:
    response = await client.get(
        f"/api/recipients/{email}", headers={"X-Workspace-ID": workspace_id}
    )
    return str(response.json()["data"]["status"])


async def test_unsigned_mandrill_events_act_only_on_our_mail(
    client: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    await make_workspace(client, "ws-victim")
    for email in ("vip@example.org", "bystander@example.org"):
        added = await client.post(
            "/api/recipients", json={"email": email}, headers={"X-Workspace-ID": "ws-victim"}
        )
        assert added.status_code == 201, added.text
    mid = await send(client, workspace_id="ws-victim", to=["vip@example.org"])
    forged = [
        # A message id the relay never issued, aimed at a workspace by metadata.
        _event("unsub", "made-up-id", "vip@example.org", workspace_id="ws-victim"),
        # A real message id, but an address the message did not go to.
        _event("spam", mid, "bystander@example.org"),
    ]
    response = await anon.post("/webhook/mandrill", json={"mandrill_events": forged})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"applied": 0, "duplicates": 0, "skipped": 2}
    assert await _status(client, "vip@example.org", "ws-victim") == "ACTIVE"
    assert await _status(client, "bystander@example.org", "ws-victim") == "ACTIVE"
    # The event about the message's own recipient still applies.
    real = await anon.post(
        "/webhook/mandrill", json={"mandrill_events": [_event("unsub", mid, "vip@example.org")]}
    )
    assert real.json()["data"] == {"applied": 1, "duplicates": 0, "skipped": 0}
    assert await _status(client, "vip@example.org", "ws-victim") == "UNSUBSCRIBED"


async def test_mandrill_events_with_nul_are_refused(
    client: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    mid = await send(client)
    events = [_event("open", mid + "\x00", "rcpt@example.org", workspace_id="w\x00")]
    response = await anon.post("/webhook/mandrill", json={"mandrill_events": events})
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"]["field"].startswith("mandrill_events")


# -- Maylng --------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", ["99999999999999999999", "\u00b2", "1" * 5000])
async def test_maylng_email_list_refuses_an_offset_out_of_range(
    client: httpx.AsyncClient, offset: str
) -> None:
    account = await client.post("/v1/accounts", json={"plan": "free"})
    assert account.status_code == 201, account.text
    auth = {"Authorization": f"Bearer {account.json()['api_key']}"}
    response = await client.get("/v1/emails", params={"offset": offset}, headers=auth)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
