"""GET/DELETE /api/messages/{id}, PUT .../retry and GET /api/messages with its pagination."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import httpx
import pytest

from daemon.service import RelayService
from tests.api.conftest import assert_envelope, finish, send

UNKNOWN_ID = "msg-01J00000000000000000000000"

SUMMARY_KEYS = {
    "id",
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "status",
    "workspace_id",
    "campaign_id",
    "queued_at",
    "processed_at",
    "error",
    "retry_count",
    "metadata",
    "priority",
    "estimated_send_time",
}


def links(response: httpx.Response) -> dict[str, str]:
    """rel -> URL of the Link header."""
    return {
        rel: url for url, rel in re.findall(r'<([^>]*)>; rel="([^"]+)"', response.headers["Link"])
    }


async def test_list_shape_and_filters(
    client: httpx.AsyncClient, service: RelayService, clear_of_midnight: None
) -> None:
    first = await send(client, campaign_id="camp-1", metadata={"source": "api"})
    second = await send(
        client, **{"from": "other@example.com"}, to=["x@example.net"], cc=["c@example.net"]
    )
    await finish(service, first, "failed")
    response = await client.get("/api/messages")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["pagination"] == {"total": 2, "limit": 50, "offset": 0, "has_more": False}
    newest, oldest = data["messages"]
    assert (newest["id"], oldest["id"]) == (second, first)
    assert set(newest) == SUMMARY_KEYS
    assert newest["cc"] == ["c@example.net"]
    assert newest["estimated_send_time"] is not None
    assert oldest["status"] == "failed"
    assert oldest["error"].startswith("550")
    assert oldest["processed_at"].endswith("Z")
    assert oldest["estimated_send_time"] is None
    assert oldest["metadata"] == {"source": "api"}
    assert oldest["campaign_id"] == "camp-1"

    async def ids(query: str) -> list[str]:
        result = await client.get(f"/api/messages?{query}")
        assert result.status_code == 200, result.text
        return [m["id"] for m in result.json()["data"]["messages"]]

    assert await ids("status=failed") == [first]
    assert await ids("status=queued") == [second]
    assert await ids("from=other@example.com") == [second]
    assert await ids("from=Other@Example.COM") == [second]  # on PostgreSQL too
    assert await ids("from=%25") == []  # "%" and "_" are themselves, not wildcards
    assert await ids("from=_ther@example.com") == []
    assert await ids("to=rcpt@example.org") == [first]
    assert await ids("to=c@example.net") == [second]
    assert await ids("workspace_id=default") == [second, first]
    assert await ids("workspace_id=nobody") == []
    assert await ids("date_from=2000-01-01&date_to=2999-01-01T00:00:00Z") == [second, first]
    assert await ids("date_from=2999-01-01") == []
    today = datetime.now(UTC).date().isoformat()
    assert await ids(f"date_from={today}&date_to={today}") == [second, first]  # the whole day
    assert await ids("date_to=2000-01-01T00:00:00 00:00") == []  # '+' decoded as a space


async def test_to_filter_ignores_case(client: httpx.AsyncClient) -> None:
    """Any envelope recipient (to, cc, bcc), matched whatever the case, on both databases."""
    mixed = await send(client, to=["Ann.Lee@Example.ORG"], bcc=["Hidden@Example.net"])
    other = await send(client, to=["ann.lee@example.org.uk"])

    async def ids(to: str) -> list[str]:
        result = await client.get("/api/messages", params={"to": to})
        assert result.status_code == 200, result.text
        return [m["id"] for m in result.json()["data"]["messages"]]

    assert await ids("Ann.Lee@Example.ORG") == [mixed]
    assert await ids("ann.lee@example.org") == [mixed]
    assert await ids("ANN.LEE@EXAMPLE.ORG") == [mixed]
    assert await ids("hidden@EXAMPLE.NET") == [mixed]
    assert await ids("ann.lee@example.org.UK") == [other]
    assert await ids("ann_lee@example.org") == []  # literal, no wildcards
    assert await ids("%") == []


@pytest.mark.parametrize(
    "query",
    [
        "status=lost",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "offset=-1",
        "page=0",
        "per_page=5000",
        "page=2&offset=10",
        "date_from=yesterday",
        "workspace_id=a%20b",
        "to=%00",
    ],
)
async def test_bad_list_parameters(client: httpx.AsyncClient, query: str) -> None:
    assert_envelope(await client.get(f"/api/messages?{query}"), 400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=-1", "limit must be between 1 and 1000"),
        ("offset=-5", "offset must be between 0 and 1000000000000"),
        ("limit=%2B2000", "limit must be between 1 and 1000"),
        ("limit=1.5", "limit must be an integer"),
        ("limit=-", "limit must be an integer"),
    ],
)
async def test_a_number_out_of_range_names_the_range(
    client: httpx.AsyncClient, query: str, message: str
) -> None:
    error = assert_envelope(await client.get(f"/api/messages?{query}"), 400, "INVALID_REQUEST")
    assert error["message"] == message


async def test_pagination_body_headers_and_links(client: httpx.AsyncClient) -> None:
    sent = [await send(client, subject=f"n{i}") for i in range(5)]
    newest_first = list(reversed(sent))

    page = await client.get("/api/messages?limit=2&offset=0&status=queued")
    assert [m["id"] for m in page.json()["data"]["messages"]] == newest_first[:2]
    assert page.json()["data"]["pagination"] == {
        "total": 5,
        "limit": 2,
        "offset": 0,
        "has_more": True,
    }
    assert page.headers["X-Total-Count"] == "5"
    assert page.headers["X-Page-Count"] == "3"
    assert page.headers["X-Current-Page"] == "1"
    assert page.headers["X-Per-Page"] == "2"
    rels = links(page)
    assert rels["next"] == "/api/messages?status=queued&page=2&per_page=2"
    assert rels["last"] == "/api/messages?status=queued&page=3&per_page=2"
    assert "prev" not in rels

    # Following the Link header walks every message exactly once.
    seen: list[str] = []
    url: str | None = rels["next"]
    seen += [m["id"] for m in page.json()["data"]["messages"]]
    while url:
        following = await client.get(url)
        seen += [m["id"] for m in following.json()["data"]["messages"]]
        url = links(following).get("next")
    assert seen == newest_first

    last = await client.get("/api/messages?page=3&per_page=2")
    assert [m["id"] for m in last.json()["data"]["messages"]] == newest_first[4:]
    assert last.json()["data"]["pagination"]["offset"] == 4
    assert last.json()["data"]["pagination"]["has_more"] is False
    assert last.headers["X-Current-Page"] == "3"
    assert links(last)["prev"] == "/api/messages?page=2&per_page=2"
    assert links(last)["first"] == "/api/messages?page=1&per_page=2"

    v1 = await client.get("/v1/messages?per_page=4")
    assert links(v1)["next"] == "/v1/messages?page=2&per_page=4"


async def test_pagination_from_an_offset_between_pages(client: httpx.AsyncClient) -> None:
    """?limit=3&offset=2: the links go on from row 2 and back to row 0, no row twice or lost."""
    newest_first = list(reversed([await send(client, subject=f"n{i}") for i in range(10)]))

    def rows(response: httpx.Response) -> list[str]:
        return [m["id"] for m in response.json()["data"]["messages"]]

    page = await client.get("/api/messages?status=queued&limit=3&offset=2")
    assert rows(page) == newest_first[2:5]
    # Pages cut at offset 2: [0, 2) [2, 5) [5, 8) [8, 10); this is the second of four.
    assert page.headers["X-Current-Page"] == "2"
    assert page.headers["X-Page-Count"] == "4"
    assert page.headers["X-Per-Page"] == "3"
    rels = links(page)
    assert rels == {
        "next": "/api/messages?status=queued&offset=5&limit=3",
        "prev": "/api/messages?status=queued&offset=0&limit=2",
        "first": "/api/messages?status=queued&offset=0&limit=2",
        "last": "/api/messages?status=queued&offset=8&limit=3",
    }
    forward: list[str] = []
    url: str | None = rels["next"]
    while url:
        following = await client.get(url)
        forward += rows(following)
        last_url, url = url, links(following).get("next")
    assert last_url == rels["last"]
    backward = rows(await client.get(rels["prev"]))
    assert backward + rows(page) + forward == newest_first

    # An aligned offset keeps the page links of reference 6.4.
    aligned = await client.get("/api/messages?limit=3&offset=3")
    assert aligned.headers["X-Current-Page"] == "2"
    assert links(aligned)["next"] == "/api/messages?page=3&per_page=3"
    assert links(aligned)["last"] == "/api/messages?page=4&per_page=3"
    # Past the end: no next, and last is the last page of the same cut.
    beyond = await client.get("/api/messages?limit=4&offset=13")
    assert rows(beyond) == [] and "next" not in links(beyond)
    assert links(beyond)["last"] == "/api/messages?offset=9&limit=4"
    assert links(beyond)["prev"] == "/api/messages?offset=9&limit=4"


async def test_detail_shape_with_attempts_and_recipients(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    message_id = await send(
        client,
        to=["to@example.org"],
        cc=["cc@example.org"],
        bcc=["bcc@example.org"],
        text_body="Plain text content",
        html_body="<html><p>Hi</p></html>",
        attachments=[
            {
                "filename": "document.pdf",
                "content_type": "application/pdf",
                "content": base64.b64encode(b"x" * 1000).decode(),
            }
        ],
        headers={"X-Priority": "high"},
        workspace_id="ws-001",
        campaign_id="camp-123",
        metadata={"user_id": "user-456", "version": "2.0"},
    )
    await finish(service, message_id, "sent", code=250)
    response = await client.get(f"/api/messages/{message_id}")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["id"] == message_id
    assert (data["to"], data["cc"], data["bcc"]) == (
        ["to@example.org"],
        ["cc@example.org"],
        ["bcc@example.org"],
    )
    assert data["text_body"] == "Plain text content\n"
    assert data["html_body"] == "<html><p>Hi</p></html>\n"
    assert data["headers"]["Message-ID"] == f"<{message_id}@relay.test>"
    assert "Date" in data["headers"]
    assert "Bcc" not in data["headers"]
    assert data["attachments"] == [
        {"filename": "document.pdf", "content_type": "application/pdf", "size": 1000}
    ]
    assert data["status"] == "sent"
    assert (data["workspace_id"], data["campaign_id"], data["user_id"]) == (
        "ws-001",
        "camp-123",
        "user-456",
    )
    assert data["provider"] == "outbox"
    assert data["provider_message_id"] == "prov-1"
    assert data["priority"] == "high"
    assert data["retry_count"] == 0
    assert data["error"] is None
    assert data["metadata"] == {"user_id": "user-456", "version": "2.0"}
    assert data["processed_at"].endswith("Z")
    [attempt] = data["attempts"]
    assert attempt["provider"] == "outbox"
    assert attempt["outcome"] == "sent"
    assert attempt["code"] == 250
    assert attempt["duration_ms"] == 12
    assert attempt["attempted_at"].endswith("Z")
    assert data["recipients"] == [
        {"address": a, "status": "sent", "error": None}
        for a in ("to@example.org", "cc@example.org", "bcc@example.org")
    ]


@pytest.mark.parametrize("message_id", [UNKNOWN_ID, "msg-123456", "nothing", "msg-%00"])
async def test_unknown_message_is_not_found(client: httpx.AsyncClient, message_id: str) -> None:
    for response in [
        await client.get(f"/api/messages/{message_id}"),
        await client.delete(f"/api/messages/{message_id}"),
        await client.put(f"/api/messages/{message_id}/retry"),
    ]:
        assert_envelope(response, 404, "MESSAGE_NOT_FOUND")


async def test_cancel_queued_and_scheduled(client: httpx.AsyncClient) -> None:
    queued = await send(client)
    scheduled = await send(client, scheduling={"send_at": "2000-01-01T00:00:00Z"})
    for message_id in (queued, scheduled):
        response = await client.delete(f"/api/messages/{message_id}")
        assert response.status_code == 200
        assert response.json() == {"success": True, "message": "Message cancelled successfully"}
        detail = (await client.get(f"/api/messages/{message_id}")).json()["data"]
        assert detail["status"] == "cancelled"
        assert detail["estimated_send_time"] is None


async def test_cancel_in_the_wrong_state_is_invalid_state(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    message_id = await send(client)
    await finish(service, message_id, "sent", code=250)
    error = assert_envelope(
        await client.delete(f"/api/messages/{message_id}"), 409, "INVALID_STATE"
    )
    assert "sent" in error["message"]
    assert error["details"]["status"] == "sent"
    assert (await client.get(f"/api/messages/{message_id}")).json()["data"]["status"] == "sent"


@pytest.mark.parametrize("status", ["failed", "auth_error"])
async def test_retry_failed_message(
    client: httpx.AsyncClient, service: RelayService, status: str
) -> None:
    message_id = await send(client)
    await finish(service, message_id, status)
    response = await client.put(f"/api/messages/{message_id}/retry")
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "data": {"message_id": message_id, "status": "queued", "retry_count": 1},
    }
    detail = (await client.get(f"/api/messages/{message_id}")).json()["data"]
    assert detail["status"] == "queued"
    assert detail["error"] is None
    assert {r["status"] for r in detail["recipients"]} == {"pending"}


async def test_retry_in_the_wrong_state_is_invalid_state(client: httpx.AsyncClient) -> None:
    message_id = await send(client)
    error = assert_envelope(
        await client.put(f"/api/messages/{message_id}/retry"), 409, "INVALID_STATE"
    )
    assert "queued" in error["message"]
    assert error["details"]["allowed_statuses"] == ["failed", "auth_error"]
