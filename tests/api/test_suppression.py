"""Suppression: mail to a recipient whose status is not ACTIVE is not delivered (API and SMTP)."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

import httpx

from daemon.server import Server
from tests.api.conftest import assert_envelope, message
from tests.api.live import http, live_relay, outbox_recipients, wait_final

__all__ = ["live_relay"]


async def suppress(client: httpx.AsyncClient, email: str, status: str = "UNSUBSCRIBED") -> None:
    response = await client.post(
        "/api/recipients",
        json={"email": email, "status": status, "suppression_reason": "clicked unsubscribe"},
    )
    assert response.status_code == 201, response.text


async def send(client: httpx.AsyncClient, to: list[str], **fields: object) -> str:
    response = await client.post("/api/messages", json=message(to=to, **fields))
    assert response.status_code == 202, response.text
    return str(response.json()["data"]["message_id"])


async def test_api_mail_to_a_suppressed_recipient_fails_with_the_reason(
    live_relay: Server,
) -> None:
    async with http(live_relay) as client:
        await suppress(client, "gone@example.org")
        message_id = await send(client, ["Gone@Example.org"])
        detail = await wait_final(client, message_id)
    assert detail["status"] == "failed"
    assert detail["error"] == (
        "Gone@example.org: suppressed: recipient is UNSUBSCRIBED (clicked unsubscribe)"
    )
    assert detail["recipients"] == [
        {
            "address": "Gone@example.org",
            "status": "suppressed",
            "error": "suppressed: recipient is UNSUBSCRIBED (clicked unsubscribe)",
        }
    ]
    assert detail["attempts"] == []
    assert outbox_recipients(live_relay, message_id) is None


async def test_retrying_mail_every_recipient_of_which_is_suppressed(live_relay: Server) -> None:
    """Refused with why (one message), or failed again with why (bulk); sent once lifted."""
    why = "suppressed: recipient is UNSUBSCRIBED (clicked unsubscribe)"
    async with http(live_relay) as client:
        await suppress(client, "gone@example.org")
        message_id = await send(client, ["Gone@Example.org"])
        first = await wait_final(client, message_id)
        assert (first["status"], first["error"]) == ("failed", f"Gone@example.org: {why}")

        refused = await client.put(f"/api/messages/{message_id}/retry")
        error = assert_envelope(refused, 409, "INVALID_STATE")
        assert "every recipient is suppressed" in error["message"]
        assert f"Gone@example.org: {why}" in error["message"]
        assert error["details"]["suppressed"] == [{"address": "Gone@example.org", "reason": why}]
        unchanged = (await client.get(f"/api/messages/{message_id}")).json()["data"]
        assert (unchanged["status"], unchanged["retry_count"]) == ("failed", 0)

        # A bulk retry takes it along; delivery says again why, not "no recipients left".
        bulk = await client.post("/api/admin/queue/retry", json={"status": "failed"})
        assert bulk.json()["data"]["ids"] == [message_id]
        again = await wait_final(client, message_id)
        assert (again["status"], again["error"]) == ("failed", f"Gone@example.org: {why}")
        assert [r["status"] for r in again["recipients"]] == ["suppressed"]

        # Once the address is active again, a retry delivers to it.
        lifted = await client.put("/api/recipients/gone@example.org", json={"status": "ACTIVE"})
        assert lifted.status_code == 200
        retried = await client.put(f"/api/messages/{message_id}/retry")
        assert retried.status_code == 200, retried.text
        done = await wait_final(client, message_id)
    assert (done["status"], done["error"]) == ("sent", None)
    assert outbox_recipients(live_relay, message_id) == ["Gone@example.org"]


async def test_mixed_recipients_only_active_ones_are_delivered(live_relay: Server) -> None:
    async with http(live_relay) as client:
        await suppress(client, "bounced@example.org", "BOUNCED")
        await client.post("/api/recipients", json={"email": "fine@example.org"})
        message_id = await send(
            client, ["fine@example.org", "bounced@example.org", "stranger@example.org"]
        )
        detail = await wait_final(client, message_id)
    assert detail["status"] == "sent"
    assert outbox_recipients(live_relay, message_id) == ["fine@example.org", "stranger@example.org"]
    statuses = {r["address"]: r["status"] for r in detail["recipients"]}
    assert statuses == {
        "fine@example.org": "sent",
        "bounced@example.org": "suppressed",
        "stranger@example.org": "sent",
    }
    assert "bounced@example.org: suppressed: recipient is BOUNCED" in detail["error"]


async def test_suppression_is_per_workspace(live_relay: Server) -> None:
    async with http(live_relay, **{"X-Workspace-ID": "ws-a"}) as client:
        await suppress(client, "someone@example.org")
        suppressed = await send(client, ["someone@example.org"])
        assert (await wait_final(client, suppressed))["status"] == "failed"
    async with http(live_relay, **{"X-Workspace-ID": "ws-b"}) as client:
        delivered = await send(client, ["someone@example.org"])
        assert (await wait_final(client, delivered))["status"] == "sent"
    assert outbox_recipients(live_relay, delivered) == ["someone@example.org"]


def _smtp_send(port: int, to: list[str]) -> str:
    mail = EmailMessage()
    mail["From"] = "sender@example.com"
    mail["To"] = ", ".join(to)
    mail["Subject"] = "over smtp"
    mail["X-Campaign-ID"] = "camp-smtp"
    mail.set_content("hello")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(mail)
        code, reply = smtp.noop()
        assert code == 250
    return reply.decode()


async def test_smtp_mail_is_suppressed_too(live_relay: Server) -> None:
    async with http(live_relay) as client:
        await suppress(client, "optout@example.org")
        await asyncio.to_thread(
            _smtp_send, live_relay.smtp_port, ["optout@example.org", "ok@example.org"]
        )
        await asyncio.to_thread(_smtp_send, live_relay.smtp_port, ["optout@example.org"])
        listed = (await client.get("/api/messages?limit=10")).json()["data"]["messages"]
        assert len(listed) == 2
        finals = {m["id"]: await wait_final(client, m["id"]) for m in listed}
        stats = (await client.get("/api/campaigns/camp-smtp/stats")).json()["data"]
    by_count = {len(d["recipients"]): d for d in finals.values()}
    mixed, alone = by_count[2], by_count[1]
    assert mixed["status"] == "sent"
    assert outbox_recipients(live_relay, mixed["id"]) == ["ok@example.org"]
    assert alone["status"] == "failed"
    assert alone["error"].endswith("suppressed: recipient is UNSUBSCRIBED (clicked unsubscribe)")
    assert outbox_recipients(live_relay, alone["id"]) is None
    # Suppressed recipients are neither delivered nor bounced in the campaign's figures.
    assert stats["status"] == "completed"
    assert stats["stats"]["total_recipients"] == 3
    assert stats["stats"]["delivered"] == 1
    assert stats["stats"]["bounced"] == 0
