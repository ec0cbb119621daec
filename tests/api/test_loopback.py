"""The API served by a real relayd on loopback: uvicorn in front, delivery behind."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from tests.api.conftest import AUTH, message


async def test_send_over_http_is_delivered_to_the_outbox(relay: Any) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url, headers=AUTH, timeout=10) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.headers["X-Request-ID"].startswith("req-")
        response = await client.post(
            "/api/messages", json=message(bcc=["hidden@example.net"], subject="over http")
        )
        assert response.status_code == 202
        message_id = response.json()["data"]["message_id"]
        deadline = time.monotonic() + 20
        while True:
            detail = (await client.get(f"/api/messages/{message_id}")).json()["data"]
            if detail["status"] == "sent" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert detail["status"] == "sent"
        assert detail["attempts"][0]["outcome"] == "sent"
        missing = await client.get("/api/nowhere")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "ROUTE_NOT_FOUND"
    delivered = list((relay.data_dir / "outbox").glob("*.eml"))
    assert len(delivered) == 1
    raw = delivered[0].read_bytes()
    assert b"Subject: over http" in raw
    assert b"hidden@example.net" not in raw


async def test_a_client_leaving_mid_body_is_no_error(relay: Any, caplog: Any) -> None:
    """Starlette's ClientDisconnect while the body is read: no 500 line in the log."""
    host, port = relay.base_url.removeprefix("http://").rsplit(":", 1)
    with caplog.at_level(logging.DEBUG, logger="relayd.api"):
        _, writer = await asyncio.open_connection(host, int(port))
        token = AUTH["Authorization"]
        writer.write(
            b"POST /api/messages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"Authorization: {token}\r\nContent-Length: 5000\r\n\r\n".encode()
            + b'{"from": "a@example.com", "to": '
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is waiting for the rest of the body
        writer.close()
        await writer.wait_closed()
        for _ in range(50):
            if any("disconnected" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
    assert any("disconnected" in r.getMessage() for r in caplog.records)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    async with httpx.AsyncClient(base_url=relay.base_url, headers=AUTH, timeout=10) as client:
        assert (await client.get("/health")).status_code == 200


async def test_ids_holding_a_slash_or_a_percent_are_addressable(relay: Any) -> None:
    """uvicorn decodes %2F before routing; an id holding "/" still reaches its route."""
    odd = "a/b%2fc%@example.com"  # "/" and "%" are legal in a local part
    in_path = "a%2Fb%252fc%25@example.com"
    async with httpx.AsyncClient(base_url=relay.base_url, headers=AUTH, timeout=10) as client:
        added = await client.post("/api/recipients", json={"email": odd})
        assert added.status_code == 201, added.text
        shown = await client.get(f"/api/recipients/{in_path}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["data"]["email"] == odd
        # The plain one next to it is another recipient: nothing was decoded twice.
        other = await client.get("/api/recipients/a%2Fb%2Fc%25@example.com")
        assert other.json()["error"]["code"] == "RECIPIENT_NOT_FOUND"
        changed = await client.put(f"/api/recipients/{in_path}", json={"status": "BOUNCED"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["data"]["status"] == "BOUNCED"

        campaign = "spring/2026 50%"
        sent = await client.post("/api/messages", json=message(campaign_id=campaign))
        assert sent.status_code == 202, sent.text
        encoded = "spring%2F2026%2050%25"
        named = await client.put(f"/api/campaigns/{encoded}", json={"name": "Spring"})
        assert named.status_code == 200, named.text
        assert named.json()["data"]["campaign_id"] == campaign
        stats = await client.get(f"/api/campaigns/{encoded}/stats")
        assert stats.status_code == 200, stats.text
        assert stats.json()["data"]["campaign_id"] == campaign

        # A slash that is not encoded still separates segments: no such route.
        split = await client.get("/api/recipients/a/b@example.com")
        assert split.status_code == 404
        assert split.json()["error"]["code"] == "ROUTE_NOT_FOUND"
        removed = await client.delete(f"/api/recipients/{in_path}")
        assert removed.status_code == 200, removed.text
