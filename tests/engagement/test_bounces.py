"""Bounces: VERP on the wire, a DSN sent over SMTP to the bounce domain by an untrusted
client, provider refusals in the same pipeline, and the soft-bounce threshold."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from daemon.server import Server
from daemon.service import RelayService
from tests.api.conftest import finish
from tests.engagement.conftest import AUTH, BOUNCE_DOMAIN, send
from tests.sink import Sink


def dsn(message_id: str, recipient: str, status: str, action: str = "failed") -> bytes:
    """A delivery status notification as a remote MTA (Postfix) writes one."""
    return (
        "From: MAILER-DAEMON@mx.example.org\r\n"
        f"To: bounces+{message_id}@{BOUNCE_DOMAIN}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nThe mail system could not deliver.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} mailbox unavailable\r\n"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{message_id}@relay.test>\r\nSubject: News\r\n"
        "\r\n--B--\r\n"
    ).encode()


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with Sink(rcpt_replies={"gone@example.org": "550 5.1.1 no such user"}) as s:
        yield s


@pytest.fixture
async def relay(
    make_config: Callable[..., Any], sqlite_url: str, sink: Sink
) -> AsyncIterator[Server]:
    """relayd with VERP on, loopback NOT trusted, delivering to the sink."""
    config = make_config(
        sqlite_url,
        smtp={"trusted_networks": ["10.99.0.0/16"]},
        bounces={"domain": BOUNCE_DOMAIN},
        providers={"up": {"type": "smtp", "host": "127.0.0.1", "port": sink.port}},
    )
    server = Server(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _status(api: httpx.AsyncClient, mid: str, *wanted: str) -> dict[str, Any]:
    for _ in range(500):
        data: dict[str, Any] = (await api.get(f"/api/messages/{mid}")).json()["data"]
        if data["status"] in wanted:
            return data
        await asyncio.sleep(0.02)
    raise AssertionError(f"{mid} never reached {wanted}")


def _smtp(port: int, rcpts: list[str], data: bytes) -> dict[str, Any]:
    replies: dict[str, Any] = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("mx.example.org")
        smtp.mail("<>")
        for rcpt in rcpts:
            replies[rcpt] = smtp.rcpt(rcpt)
        if any(code == 250 for code, _ in replies.values()):
            replies["DATA"] = smtp.data(data)
    return replies


async def test_dsn_over_smtp_is_a_hard_bounce(relay: Server, sink: Sink) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url, headers=AUTH) as api:
        await api.post("/api/recipients", json={"email": "reader@example.org"})
        mid = await send(api, campaign_id="camp-b", html_body=None)
        await _status(api, mid, "sent")
        (wire,) = sink.messages
        assert wire.mail_from == f"bounces+{mid}@{BOUNCE_DOMAIN}"  # VERP on the wire
        verp = f"bounces+{mid}@{BOUNCE_DOMAIN}"
        replies = await asyncio.to_thread(
            _smtp,
            relay.smtp_port,
            [f"postmaster@{BOUNCE_DOMAIN}", "someone@example.com", verp],
            dsn(mid, "reader@example.org", "5.1.1"),
        )
        assert replies[f"postmaster@{BOUNCE_DOMAIN}"][0] == 550
        assert replies["someone@example.com"][0] == 554  # still no relaying for strangers
        assert replies[verp][0] == 250
        assert replies["DATA"][0] == 250
        detail = (await api.get("/api/recipients/reader@example.org")).json()["data"]
        assert detail["status"] == "BOUNCED" and detail["bounce_type"] == "hard"
        assert "5.1.1" in detail["suppression_reason"] and detail["suppressed_at"]
        stats = (await api.get("/api/campaigns/camp-b/stats")).json()["data"]["stats"]
        assert (stats["bounced"], stats["delivered"]) == (1, 0)
        assert (await _status(api, mid, "failed"))["status"] == "failed"
        # The same DSN again changes nothing; the bounce was not relayed anywhere.
        await asyncio.to_thread(
            _smtp, relay.smtp_port, [verp], dsn(mid, "reader@example.org", "5.1.1")
        )
        again = (await api.get("/api/recipients/reader@example.org")).json()["data"]
        assert again["bounce_count"] == 1
        assert len(sink.messages) == 1
        # Later sends to the bounced address are suppressed.
        later = await send(api, html_body=None)
        data = await _status(api, later, "failed")
        assert "BOUNCED" in (data.get("error") or "")


async def test_provider_refusal_feeds_the_same_pipeline(relay: Server, sink: Sink) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url, headers=AUTH) as api:
        mid = await send(api, to=["gone@example.org"], html_body=None)
        await _status(api, mid, "failed")
        # The bounce is recorded in a commit after the failure's own.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            response = await api.get("/api/recipients/gone@example.org")
            if response.status_code == 200 and response.json()["data"]["status"] == "BOUNCED":
                break
            await asyncio.sleep(0.02)
        detail = response.json()["data"]
        assert detail["status"] == "BOUNCED"
        assert "550" in detail["suppression_reason"]
        listed = await api.get("/api/recipients", params={"status": "BOUNCED"})
        assert [r["email"] for r in listed.json()["data"]["recipients"]] == ["gone@example.org"]
        cleared = await api.put("/api/recipients/gone@example.org", json={"status": "ACTIVE"})
        assert cleared.json()["data"]["status"] == "ACTIVE"


async def test_soft_bounces_past_the_threshold(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    await client.post("/api/recipients", json={"email": "reader@example.org"})
    statuses = []
    for _ in range(3):
        mid = await send(client, html_body=None)
        await finish(service, mid, status="sent")
        raw = dsn(mid, "reader@example.org", "4.2.2", action="delayed")
        assert await service.engagement.bounce_mail(raw, [f"bounces+{mid}@{BOUNCE_DOMAIN}"]) == 1
        detail = (await client.get("/api/recipients/reader@example.org")).json()["data"]
        statuses.append((detail["status"], detail["bounce_count"]))
    assert statuses == [("ACTIVE", 1), ("ACTIVE", 2), ("BOUNCED", 3)]
    assert "3 soft bounces within 7 days" in detail["suppression_reason"]
    # A soft bounce leaves the message as it was.
    assert (await client.get(f"/api/messages/{mid}")).json()["data"]["status"] == "sent"
