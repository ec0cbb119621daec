"""relayd end to end through SendGrid: mail accepted over SMTP reaches the SendGrid fake as
Mail Send takes it (on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator

import httpx
import pytest

from daemon.server import Server
from tests.api.conftest import AUTH
from tests.conftest import StartServer
from tests.providers.fakes import SendgridFake


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendgridFake]:
    async with SendgridFake() as fake:
        yield fake
    assert fake.problems == []


def smtp_send(port: int, mail_from: str, rcpts: list[str], data: bytes) -> str:
    """One SMTP transaction; the queue id from the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail(mail_from)
        for rcpt in rcpts:
            code, text = smtp.rcpt(rcpt)
            assert code == 250, text
        code, text = smtp.data(data)
        assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


async def wait_sent(relay: Server, message_id: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=relay.base_url, headers=AUTH, timeout=10) as http:
        for _ in range(500):
            response = await http.get(f"/api/messages/{message_id}")
            assert response.status_code == 200, response.text
            data: dict[str, object] = response.json()["data"]
            if data["status"] not in ("queued", "processing", "pending", "scheduled"):
                return data
            await asyncio.sleep(0.02)
    raise AssertionError(f"{message_id} is still {data['status']}")


async def test_smtp_mail_without_subject_and_with_a_listed_name_is_delivered(
    start_server: StartServer, sendgrid: SendgridFake
) -> None:
    """No Subject header (SendGrid requires one: it gets a single space), a To name with a
    comma (SendGrid drops such a recipient unless the name is quoted) and a From in raw
    UTF-8 (RFC 6532) whose domain is internationalized (Mail Send takes its A-label)."""
    relay = await start_server(
        providers={
            "sg": {"type": "sendgrid", "api_key": sendgrid.api_key, "base_url": sendgrid.base_url}
        }
    )
    data = (
        'From: Jörg <joerg@bücher.example>\r\nTo: "Doe, John" <john@example.org>\r\n'
        "Message-ID: <nosubject@example.com>\r\n\r\nNo subject here.\r\n"
    ).encode()
    message_id = await asyncio.to_thread(
        smtp_send, relay.smtp_port, "alice@example.com", ["john@example.org"], data
    )
    result = await wait_sent(relay, message_id)
    assert result["status"] == "sent", result
    (mail,) = sendgrid.mails
    assert mail["subject"] == " "
    assert mail["personalizations"] == [
        {"to": [{"email": "john@example.org", "name": '"Doe, John"'}]}
    ]
    assert mail["from"] == {"email": "joerg@xn--bcher-kva.example", "name": "Jörg"}
    assert mail["headers"]["Message-ID"] == "<nosubject@example.com>"
