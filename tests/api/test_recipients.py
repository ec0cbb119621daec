"""Recipient endpoints (reference 2.4) on SQLite and PostgreSQL, through the ASGI app."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from daemon.service import RelayService
from daemon.store import audience
from tests.api.conftest import assert_envelope, send

WS = {"X-Workspace-ID": "ws-001"}
JOHN = {
    "email": "John.Doe@Example.com",
    "first_name": "John",
    "last_name": "Doe",
    "opt_in": True,
    "metadata": {
        "source": "signup",
        "tags": ["newsletter", "updates"],
        "preferences": {"frequency": "weekly", "topics": ["medical", "research"]},
    },
}
DETAIL_KEYS = {
    "id", "email", "workspace_id", "user_id", "campaign_id", "first_name", "last_name",
    "status", "opt_in_date", "opt_out_date", "bounce_count", "last_bounce_date", "bounce_type",
    "engagement", "metadata", "suppression_reason", "suppressed_at", "created_at", "updated_at",
}  # fmt: skip


async def add(client: httpx.AsyncClient, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return await client.post("/api/recipients", json=body, **kw)


async def test_add_answers_201_with_the_reference_shape(client: httpx.AsyncClient) -> None:
    response = await add(client, JOHN, headers=WS)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == {"id", "email", "status", "created_at"}
    assert isinstance(data["id"], int)
    assert data["email"] == "john.doe@example.com"
    assert data["status"] == "ACTIVE"
    assert data["created_at"].endswith("Z")


async def test_second_add_of_the_same_address_is_409(client: httpx.AsyncClient) -> None:
    assert (await add(client, JOHN, headers=WS)).status_code == 201
    again = await add(client, {**JOHN, "email": "john.doe@example.com"}, headers=WS)
    error = assert_envelope(again, 409, "RECIPIENT_EXISTS")
    assert error["details"] == {"email": "john.doe@example.com", "workspace_id": "ws-001"}
    # The same address in another workspace is another recipient.
    other = await add(client, {**JOHN, "workspace_id": "ws-002"})
    assert other.status_code == 201


async def test_add_refuses_bad_input(client: httpx.AsyncClient) -> None:
    bad = await add(client, {**JOHN, "email": "not-an-address"})
    assert assert_envelope(bad, 400, "INVALID_EMAIL_FORMAT")["details"]["field"] == "email"
    named = await add(client, {**JOHN, "email": "John <john@example.com>"})
    assert_envelope(named, 400, "INVALID_EMAIL_FORMAT")
    absent = await add(client, {"first_name": "x"})
    assert assert_envelope(absent, 400, "MISSING_REQUIRED_FIELD")["details"]["field"] == "email"
    unknown = await add(client, {**JOHN, "nickname": "JD"})
    assert assert_envelope(unknown, 400, "INVALID_REQUEST")["details"]["field"] == "nickname"
    status = await add(client, {**JOHN, "status": "GONE"})
    assert assert_envelope(status, 400, "INVALID_REQUEST")["details"]["field"] == "status"
    tags = await add(client, {**JOHN, "metadata": {"tags": "newsletter"}})
    assert assert_envelope(tags, 400, "INVALID_REQUEST")["details"]["field"] == "metadata.tags"
    malformed = await client.post("/api/recipients", content=b"{", headers=WS)
    assert_envelope(malformed, 400, "INVALID_REQUEST")


async def test_get_shows_every_field(client: httpx.AsyncClient) -> None:
    created = (await add(client, {**JOHN, "user_id": "user-789"}, headers=WS)).json()["data"]
    response = await client.get("/api/recipients/john.doe@example.com", headers=WS)
    assert response.status_code == 200
    data = response.json()["data"]
    assert set(data) == DETAIL_KEYS
    assert data["id"] == created["id"]
    assert data["workspace_id"] == "ws-001"
    assert data["user_id"] == "user-789"
    assert data["campaign_id"] is None
    assert data["status"] == "ACTIVE"
    assert data["opt_in_date"] == created["created_at"]
    assert data["opt_out_date"] is None
    assert data["bounce_count"] == 0
    assert data["bounce_type"] is None
    assert data["engagement"] == {
        "total_received": 0,
        "total_opened": 0,
        "total_clicked": 0,
        "last_open_date": None,
        "last_click_date": None,
    }
    assert data["metadata"] == JOHN["metadata"]
    assert data["suppression_reason"] is None


async def test_unknown_recipient_is_404(client: httpx.AsyncClient) -> None:
    await add(client, JOHN, headers=WS)
    # Looked up in another workspace, it does not exist.
    for method in ("GET", "DELETE"):
        response = await client.request(
            method, "/api/recipients/john.doe@example.com", headers={"X-Workspace-ID": "default"}
        )
        error = assert_envelope(response, 404, "RECIPIENT_NOT_FOUND")
        assert error["details"] == {"email": "john.doe@example.com", "workspace_id": "default"}
    put = await client.put("/api/recipients/nobody@example.com", json={"first_name": "N"})
    error = assert_envelope(put, 404, "RECIPIENT_NOT_FOUND")
    assert error["message"] == "no recipient nobody@example.com in any workspace"
    bad = await client.get("/api/recipients/not-an-address")
    assert_envelope(bad, 400, "INVALID_EMAIL_FORMAT")


async def test_put_updates_and_answers_the_reference_shape(client: httpx.AsyncClient) -> None:
    await add(client, JOHN, headers=WS)
    response = await client.put(
        "/api/recipients/john.doe@example.com",
        headers=WS,
        json={
            "first_name": "Jonathan",
            "status": "ACTIVE",
            "metadata": {"tags": ["newsletter", "premium"], "preferences": {"frequency": "daily"}},
        },
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert set(data) == {"id", "email", "first_name", "status", "updated_at"}
    assert data["first_name"] == "Jonathan"
    assert data["status"] == "ACTIVE"
    detail = (await client.get("/api/recipients/john.doe@example.com", headers=WS)).json()
    metadata = detail["data"]["metadata"]
    # A merge patch: objects merge, lists are replaced, untouched keys stay.
    assert metadata == {
        "source": "signup",
        "tags": ["newsletter", "premium"],
        "preferences": {"frequency": "daily", "topics": ["medical", "research"]},
    }
    assert detail["data"]["last_name"] == "Doe"
    bad = await client.put("/api/recipients/john.doe@example.com", headers=WS, json={"id": 3})
    assert_envelope(bad, 400, "INVALID_REQUEST")


async def test_status_change_records_suppression(client: httpx.AsyncClient) -> None:
    await add(client, JOHN, headers=WS)
    url = "/api/recipients/john.doe@example.com"
    put = await client.put(
        url, headers=WS, json={"status": "UNSUBSCRIBED", "suppression_reason": "asked by phone"}
    )
    assert put.json()["data"]["status"] == "UNSUBSCRIBED"
    data = (await client.get(url, headers=WS)).json()["data"]
    assert data["suppression_reason"] == "asked by phone"
    assert data["suppressed_at"] is not None
    assert data["opt_out_date"] == data["suppressed_at"]
    await client.put(url, headers=WS, json={"status": "ACTIVE"})
    data = (await client.get(url, headers=WS)).json()["data"]
    assert data["status"] == "ACTIVE"
    assert data["suppression_reason"] is None
    assert data["suppressed_at"] is None
    await client.put(url, headers=WS, json={"status": "bounced"})
    data = (await client.get(url, headers=WS)).json()["data"]
    assert data["status"] == "BOUNCED"
    assert data["suppression_reason"] == "status set to BOUNCED through the API"


async def test_delete_removes(client: httpx.AsyncClient) -> None:
    await add(client, JOHN, headers=WS)
    response = await client.delete("/api/recipients/john.doe@example.com", headers=WS)
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Recipient removed successfully"}
    gone = await client.get("/api/recipients/john.doe@example.com", headers=WS)
    assert_envelope(gone, 404, "RECIPIENT_NOT_FOUND")


async def test_the_admin_without_a_workspace_finds_the_address_in_any_one(
    client: httpx.AsyncClient,
) -> None:
    """As the list shows every workspace, so do the single-recipient routes; never a guess."""
    url = "/api/recipients/john.doe@example.com"
    await add(client, JOHN, headers=WS)
    listed = (await client.get("/api/recipients")).json()["data"]["recipients"]
    assert [(r["email"], r["workspace_id"]) for r in listed] == [("john.doe@example.com", "ws-001")]
    shown = await client.get(url)
    assert shown.status_code == 200, shown.text
    assert shown.json()["data"]["workspace_id"] == "ws-001"
    updated = await client.put(url, json={"first_name": "Jonathan"})
    assert updated.status_code == 200, updated.text
    assert (await client.get(url, headers=WS)).json()["data"]["first_name"] == "Jonathan"

    # In two workspaces: which one is meant is the caller's to say, for reads and writes.
    await add(client, {"email": "john.doe@example.com"})  # the admin adds to default
    for method, body in (("GET", None), ("PUT", {"first_name": "X"}), ("DELETE", None)):
        ambiguous = await client.request(method, url, json=body)
        error = assert_envelope(ambiguous, 400, "INVALID_REQUEST")
        assert "X-Workspace-ID" in error["message"]
        assert error["details"]["workspace_ids"] == ["default", "ws-001"]
    for workspace, name in (("ws-001", "Jonathan"), ("default", None)):
        one = await client.get(url, params={"workspace_id": workspace})
        assert one.json()["data"]["first_name"] == name  # neither was changed
    removed = await client.delete(url, params={"workspace_id": "default"})
    assert removed.status_code == 200
    # One workspace holds it again: found without naming it, and removed from there.
    assert (await client.delete(url)).status_code == 200
    assert (await client.get("/api/recipients")).json()["data"]["recipients"] == []
    assert_envelope(await client.get(url), 404, "RECIPIENT_NOT_FOUND")


async def test_list_filters_and_paginates(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await add(client, {"email": f"user{i}@example.com"}, headers=WS)
    await add(client, {"email": "gone@example.com", "status": "UNSUBSCRIBED"}, headers=WS)
    await add(client, {"email": "elsewhere@example.com", "workspace_id": "ws-002"})
    response = await client.get("/api/recipients?workspace_id=ws-001&status=ACTIVE&limit=2")
    assert response.status_code == 200
    data = response.json()["data"]
    assert [r["email"] for r in data["recipients"]] == ["user0@example.com", "user1@example.com"]
    assert data["pagination"] == {"total": 5, "limit": 2, "offset": 0, "has_more": True}
    entry = data["recipients"][0]
    assert set(entry) == {
        "id", "email", "workspace_id", "first_name", "last_name", "status", "bounce_count",
        "created_at", "updated_at", "metadata",
    }  # fmt: skip
    assert response.headers["X-Total-Count"] == "5"
    assert response.headers["X-Page-Count"] == "3"
    assert response.headers["X-Per-Page"] == "2"
    assert 'rel="next"' in response.headers["Link"]
    page3 = await client.get("/api/recipients?workspace_id=ws-001&status=ACTIVE&page=3&per_page=2")
    assert [r["email"] for r in page3.json()["data"]["recipients"]] == ["user4@example.com"]
    search = await client.get("/api/recipients?email=GONE")
    assert [r["status"] for r in search.json()["data"]["recipients"]] == ["UNSUBSCRIBED"]
    everything = await client.get("/api/recipients")
    assert everything.json()["data"]["pagination"]["total"] == 7
    scoped = await client.get("/api/recipients", headers={"X-Workspace-ID": "ws-002"})
    assert scoped.json()["data"]["pagination"]["total"] == 1
    denied = await client.get(
        "/api/recipients?workspace_id=ws-001", headers={"X-Workspace-ID": "ws-002"}
    )
    assert_envelope(denied, 400, "INVALID_REQUEST")  # the admin's header and query disagree
    bad = await client.get("/api/recipients?status=MAYBE")
    assert_envelope(bad, 400, "INVALID_REQUEST")


async def test_routes_need_a_token(anon: httpx.AsyncClient) -> None:
    assert_envelope(await anon.get("/api/recipients"), 401, "AUTH_REQUIRED")
    assert_envelope(await anon.post("/api/recipients", json=JOHN), 401, "AUTH_REQUIRED")


async def test_sending_creates_no_recipients(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    await send(client, to=["fresh@example.org"], campaign_id="camp-1")
    count = await service.reader.run(
        lambda c: audience.list_recipients(c, audience.RecipientFilter(), 10, 0)[1]
    )
    assert count == 0
    assert (await client.get("/v1/recipients")).json()["data"]["recipients"] == []


async def test_the_same_address_added_at_once_is_one_201_and_the_rest_409(
    client: httpx.AsyncClient,
) -> None:
    """Adds that meet in one group commit: exactly the one that created the row says so."""
    for round_ in range(3):
        email = f"race{round_}@example.org"
        answers = await asyncio.gather(
            *(client.post("/api/recipients", json={"email": email}) for _ in range(8))
        )
        codes = sorted(response.status_code for response in answers)
        assert codes == [201] + [409] * 7, [r.text for r in answers]
        assert (await client.get(f"/api/recipients/{email}")).status_code == 200
