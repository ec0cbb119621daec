"""SMTP ingest inside the whole daemon: what smtplib hands over is what the API shows."""

from __future__ import annotations

import smtplib
import ssl
from typing import Any

import httpx

from tests.smtp.conftest import in_thread


async def test_message_submitted_over_smtp_is_listed_by_the_api(relay: Any) -> None:
    data = (
        b"From: a@example.com\r\nTo: b@example.org\r\nSubject: via relayd\r\n"
        b"X-Campaign-ID: camp-9\r\nX-Priority: low\r\n\r\nhello\r\n"
    )

    def send() -> str:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            code, reply = client.data(data)
            assert code == 250
            return reply.decode().rsplit(" ", 1)[1]

    message_id = await in_thread(send)
    headers = {"Authorization": f"Bearer {relay.admin_token}"}
    async with httpx.AsyncClient(base_url=relay.base_url, headers=headers) as client:
        response = await client.get(f"/api/messages/{message_id}")
    assert response.status_code == 200
    body = response.json()["data"]
    assert body["id"] == message_id
    assert body["subject"] == "via relayd"
    assert body["campaign_id"] == "camp-9"
    assert body["priority"] == "low"


async def test_auth_with_a_workspace_key_binds_the_workspace(relay: Any) -> None:
    headers = {"Authorization": f"Bearer {relay.admin_token}"}
    async with httpx.AsyncClient(base_url=relay.base_url, headers=headers) as client:
        created = await client.post("/api/admin/workspaces", json={"id": "acme"})
        assert created.status_code == 201, created.text
        issued = await client.post("/api/admin/keys", json={"workspace_id": "acme"})
        assert issued.status_code == 201, issued.text
        key = issued.json()["data"]["key"]
    context = ssl.create_default_context(cafile=str(relay.data_dir / "tls" / "relay.crt"))

    def send() -> tuple[int, int, str]:
        with smtplib.SMTP_SSL("127.0.0.1", relay.smtp_tls_port, context=context) as client:
            client.ehlo("client.test")
            try:
                client.login("other-workspace", key)
            except smtplib.SMTPAuthenticationError as exc:
                wrong_user = exc.smtp_code
            code = client.login("acme", key)[0]
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            _, reply = client.data(b"X-Workspace-ID: someone-else\r\nSubject: k\r\n\r\nx\r\n")
            return wrong_user, code, reply.decode().rsplit(" ", 1)[1]

    wrong_user, code, message_id = await in_thread(send)
    assert (wrong_user, code) == (535, 235)
    async with httpx.AsyncClient(base_url=relay.base_url, headers=headers) as client:
        response = await client.get(f"/api/messages/{message_id}")
    assert response.json()["data"]["workspace_id"] == "acme"
