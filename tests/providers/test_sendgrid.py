"""The sendgrid provider against the loopback SendGrid fake, and the JSON it builds."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from email.policy import SMTP
from typing import cast

import httpx
import pytest

from daemon.providers import SendgridProvider
from daemon.providers.sendgrid import mail_send_body
from tests.providers.conftest import envelope
from tests.providers.fakes import Answer, SendgridFake


def provider(
    fake: SendgridFake, key: str = "SG.test-key", timeout: float = 5.0
) -> SendgridProvider:
    client = httpx.AsyncClient(base_url=fake.base_url, timeout=timeout)
    return SendgridProvider("sg", key, client)


def rich_message() -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = "Bob <bob@example.org>, carol@example.org"
    msg["Cc"] = "Dan <dan@example.org>"
    msg["Reply-To"] = "replies@example.com"
    msg["Subject"] = "Quarterly report é"
    msg["Message-ID"] = "<r1@example.com>"
    msg["List-Unsubscribe"] = "<https://example.com/u/1>"
    msg["X-Campaign"] = "q3"
    msg["Received"] = "from somewhere"
    msg.set_content("Plain body")
    msg.add_alternative("<p>HTML body <img src='cid:logo1'></p>", subtype="html")
    html = cast(list[EmailMessage], msg.get_payload())[1]  # multipart/alternative by now
    html.add_related(b"\x89PNG fake", "image", "png", cid="<logo1>")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="q3.pdf")
    return msg.as_bytes()


def test_body_from_a_parsed_message() -> None:
    rcpts = ["bob@example.org", "CAROL@example.org", "dan@example.org", "eve@example.org"]
    body = mail_send_body(rich_message(), "bounce@example.com", rcpts)
    assert body["personalizations"] == [
        {
            "to": [{"email": "bob@example.org", "name": "Bob"}, {"email": "CAROL@example.org"}],
            "cc": [{"email": "dan@example.org", "name": "Dan"}],
            "bcc": [{"email": "eve@example.org"}],
        }
    ]
    assert body["from"] == {"email": "alice@example.com", "name": "Alice"}
    assert body["reply_to"] == {"email": "replies@example.com"}
    assert body["subject"] == "Quarterly report é"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["content"][0]["value"].strip() == "Plain body"
    inline, pdf = body["attachments"]
    assert inline["disposition"] == "inline" and inline["content_id"] == "logo1"
    assert base64.b64decode(inline["content"]) == b"\x89PNG fake"
    assert pdf == {
        "content": base64.b64encode(b"%PDF-1.4 fake").decode(),
        "type": "application/pdf",
        "filename": "q3.pdf",
        "disposition": "attachment",
    }
    assert body["headers"] == {
        "Message-ID": "<r1@example.com>",
        "List-Unsubscribe": "<https://example.com/u/1>",
        "X-Campaign": "q3",
    }


def test_only_blind_recipients_get_a_personalization_each() -> None:
    body = mail_send_body(rich_message(), "a@example.com", ["x@example.net", "y@example.net"])
    assert body["personalizations"] == [
        {"to": [{"email": "x@example.net"}]},
        {"to": [{"email": "y@example.net"}]},
    ]


async def test_sends_and_takes_the_message_id(sendgrid: SendgridFake) -> None:
    p = provider(sendgrid)
    try:
        result = await p.send(envelope("bob@example.org", raw=rich_message()))
    finally:
        await p.close()
    assert result.outcome == "sent"
    assert result.code == 202
    assert result.provider_message_id == "sg-1-fakemessageid"
    assert len(sendgrid.mails) == 1


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(400, "permanent"), (401, "auth_error"), (403, "auth_error"), (413, "permanent"),
     (429, "temporary"), (500, "temporary"), (503, "temporary")],
)  # fmt: skip
async def test_status_codes_are_classified(
    sendgrid: SendgridFake, status: int, outcome: str
) -> None:
    sendgrid.script(Answer(status, body={"errors": [{"message": "nope"}]}))
    p = provider(sendgrid)
    try:
        result = await p.send(envelope())
    finally:
        await p.close()
    assert result.outcome == outcome
    assert "nope" in result.reply


async def test_bad_key_timeouts_and_health(sendgrid: SendgridFake) -> None:
    bad = provider(sendgrid, key="SG.wrong")
    good = provider(sendgrid)
    impatient = provider(sendgrid, timeout=0.3)  # only for the call that never answers
    try:
        refused = await bad.send(envelope())
        bad_health = await bad.check()
        good_health = await good.check()
        sendgrid.script(Answer(hang=True))
        timed_out = await impatient.send(envelope())
        sendgrid.scopes = ["stats.read"]
        no_scope = await good.check()
    finally:
        await bad.close()
        await good.close()
        await impatient.close()
    assert refused.outcome == "auth_error"
    assert not bad_health.healthy
    assert good_health.healthy
    assert timed_out.outcome == "temporary"
    assert not no_scope.healthy and "mail.send" in no_scope.detail
