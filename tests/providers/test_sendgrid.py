"""The sendgrid provider against the loopback SendGrid fake, and the JSON it builds."""

from __future__ import annotations

import base64
import time
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import SMTP
from typing import cast

import httpx
import pytest

from daemon.providers import SendgridProvider
from daemon.providers.rest import requested_wait
from daemon.providers.sendgrid import encode_body, mail_send_body
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


# -- addresses, subject, headers and attachments SendGrid's Mail Send refuses ---------


async def test_idn_domains_go_as_punycode_and_utf8_local_parts_fail_alone(
    sendgrid: SendgridFake,
) -> None:
    """Mail Send's address fields are ``format: email`` (ASCII): an internationalized domain
    goes as its IDNA 2008 A-label; a non-ASCII local part cannot be expressed, so that one
    recipient fails for good instead of SendGrid refusing the whole request (400)."""
    raw = (
        "From: Jörg <joerg@bücher.example>\r\nTo: Bob <bob@Bücher.example>, carol@example.org\r\n"
        "Reply-To: antwort@bücher.example\r\nSubject: Grüße\r\n\r\nHallo.\r\n"
    ).encode()
    rcpts = ("bob@bücher.example", "josé@example.org", "carol@example.org", "x@☃.example")
    p = provider(sendgrid)
    try:
        result = await p.send(envelope(*rcpts, raw=raw, mail_from="bounce@example.com"))
    finally:
        await p.close()
    assert result.outcome == "sent"
    outcomes = {r.address: (r.outcome, r.reply) for r in result.recipients}
    assert outcomes["bob@bücher.example"][0] == outcomes["carol@example.org"][0] == "sent"
    assert outcomes["josé@example.org"][0] == "permanent"
    assert outcomes["josé@example.org"][1].startswith("553 5.6.7 ")  # RFC 6531's status
    assert "non-ASCII local part" in outcomes["josé@example.org"][1]
    assert outcomes["x@☃.example"][0] == "permanent"
    assert outcomes["x@☃.example"][1].startswith("553 5.1.3 ☃.example is not a valid")
    (mail,) = sendgrid.mails
    assert mail["personalizations"] == [
        {
            "to": [
                {"email": "bob@xn--bcher-kva.example", "name": "Bob"},
                {"email": "carol@example.org"},
            ]
        }
    ]
    assert mail["from"] == {"email": "joerg@xn--bcher-kva.example", "name": "Jörg"}
    assert mail["reply_to"] == {"email": "antwort@xn--bcher-kva.example"}


async def test_a_from_address_sendgrid_cannot_take_fails_without_a_request(
    sendgrid: SendgridFake,
) -> None:
    raw = b"From: =?utf-8?q?J=C3=B6rg?= <j\xc3\xb6rg@example.com>\r\nSubject: x\r\n\r\nHi.\r\n"
    p = provider(sendgrid)
    try:
        result = await p.send(envelope("bob@example.org", raw=raw))
    finally:
        await p.close()
    assert result.outcome == "permanent"
    assert "jörg@example.com" in result.reply and "non-ASCII local part" in result.reply
    assert sendgrid.requests == []


async def test_a_message_without_subject_is_delivered(sendgrid: SendgridFake) -> None:
    """Mail Send: "The subject is required" and its minLength is 1, so a message accepted
    without a Subject (or with an empty one) goes out with a single space."""
    no_subject = b"From: a@example.com\r\nTo: bob@example.org\r\n\r\nHi.\r\n"
    empty_subject = b"From: a@example.com\r\nTo: bob@example.org\r\nSubject: \r\n\r\nHi.\r\n"
    p = provider(sendgrid)
    try:
        results = [
            await p.send(envelope(raw=no_subject)),
            await p.send(envelope(raw=empty_subject)),
        ]
    finally:
        await p.close()
    assert [r.outcome for r in results] == ["sent", "sent"]
    assert [m["subject"] for m in sendgrid.mails] == [" ", " "]


async def test_raw_utf8_headers_and_odd_attachments_are_expressed(sendgrid: SendgridFake) -> None:
    """An RFC 6532 header in raw UTF-8 used to reach the JSON as undecodable surrogates
    (an exception, so a retry every round); attachment names with ';' or ',', an empty
    attachment and a content type SendGrid refuses used to fail the whole message (400)."""
    raw = (
        b"From: a@example.com\r\nTo: bob@example.org\r\nSubject: x\r\n"
        b"X-Note: caf\xc3\xa9 cr\xe8me\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nHi.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="Q3, final; v2.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n"
        b"--b\r\nContent-Type: text/plain\r\n"
        b'Content-Disposition: attachment; filename="empty.txt"\r\n\r\n\r\n'
        b"--b\r\nContent-Type: application/x,y\r\n"
        b'Content-Disposition: attachment; filename="odd.bin"\r\n\r\nxyz\r\n--b--\r\n'
    )
    p = provider(sendgrid)
    try:
        result = await p.send(envelope(raw=raw))
    finally:
        await p.close()
    assert result.outcome == "sent", result.reply
    (mail,) = sendgrid.mails
    assert mail["headers"]["X-Note"].isascii()
    assert str(make_header(decode_header(mail["headers"]["X-Note"]))) == "café cr\ufffdme"
    assert [(a["filename"], a["type"]) for a in mail["attachments"]] == [
        ("Q3_ final_ v2.pdf", "application/pdf"),
        ("odd.bin", "application/octet-stream"),
    ]


async def test_a_429_carries_the_time_sendgrid_lets_us_back_in(sendgrid: SendgridFake) -> None:
    """SendGrid's rate-limit answer: 429 with ``X-RateLimit-Reset``, the epoch second its
    window resets ("Rate Limits", v3 API reference)."""
    reset = int(time.time()) + 120
    headers = {
        "X-RateLimit-Limit": "600",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(reset),
    }
    too_many = {"errors": [{"field": None, "message": "too many requests"}]}
    sendgrid.script(Answer(429, body=too_many, headers=headers))
    p = provider(sendgrid)
    try:
        result = await p.send(envelope())
    finally:
        await p.close()
    assert result.outcome == "temporary"
    wait = int(result.reply.rsplit("within ", 1)[1].removesuffix("s)"))
    assert 110 <= wait <= 121
    assert "too many requests" in result.reply


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"X-RateLimit-Reset": "1700000120"}, 120.0),  # SendGrid: epoch seconds
        (429, {"X-RateLimit-Reset": "30"}, 30.0),  # seconds to wait
        (503, {"Retry-After": "45"}, 45.0),
        (429, {"Retry-After": "Tue, 14 Nov 2023 22:30:00 GMT"}, 1000.0),  # an HTTP date
        (429, {"Retry-After": "soon"}, None),
        (429, {"X-RateLimit-Reset": "1699999990"}, None),  # already past
        (202, {"X-RateLimit-Reset": "1700000120"}, None),  # only a 429 is told to wait
        (429, {"Retry-After": "999999999"}, 86400.0),  # believed for a day at most
    ],
)
def test_requested_wait_reads_retry_after_and_rate_limit_reset(
    status: int, headers: dict[str, str], expected: float | None
) -> None:
    response = httpx.Response(status, headers=headers)
    assert requested_wait(response, now=1_700_000_000.0) == expected


async def test_recipient_names_with_commas_go_quoted(sendgrid: SendgridFake) -> None:
    """Mail Send limitation: to/cc/bcc names cannot include commas or semicolons (SendGrid
    takes the request and then drops the mail as an invalid address); SendGrid's own
    Node.js library quotes such a name."""
    raw = (
        b'From: "Acme, Inc." <a@example.com>\r\nTo: "Doe, John" <john@example.org>\r\n'
        b'Cc: "Smith; \\"JJ\\" Jane" <jane@example.org>\r\nSubject: x\r\n\r\nHi.\r\n'
    )
    p = provider(sendgrid)
    try:
        result = await p.send(envelope("john@example.org", "jane@example.org", raw=raw))
    finally:
        await p.close()
    assert result.outcome == "sent", result.reply
    (mail,) = sendgrid.mails
    assert mail["personalizations"] == [
        {
            "to": [{"email": "john@example.org", "name": '"Doe, John"'}],
            "cc": [{"email": "jane@example.org", "name": '"Smith; \\"JJ\\" Jane"'}],
        }
    ]
    assert mail["from"] == {"email": "a@example.com", "name": "Acme, Inc."}


def test_request_bodies_are_always_valid_utf8() -> None:
    """Mail Send answers "Invalid UTF8 in request": bytes of the message that were not
    UTF-8 (kept as surrogates by the parser) go as U+FFFD rather than raise."""
    assert encode_body({"subject": "café"}) == '{"subject":"café"}'.encode()
    assert encode_body({"subject": "caf\udce9"}) == '{"subject":"caf\ufffd"}'.encode()
