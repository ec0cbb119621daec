"""Provider requests checked against the published APIs' limits and error handling.

Each test fails without the fix it names: the fakes refuse what the real API
refuses (SendGrid's 1,000 recipients per request and non-empty content values,
Mailgun's 1,000 recipients, Gmail's metadata-URI size limit and its 401 advice).
"""

from __future__ import annotations

import base64
from email.message import EmailMessage
from email.policy import SMTP

import httpx

from daemon.providers import GmailProvider, MailgunProvider, SendgridProvider
from daemon.providers.gmail import MAX_MESSAGE_BYTES
from daemon.providers.google_token import ServiceAccount
from tests.providers.conftest import ServiceAccountKey, envelope
from tests.providers.fakes import Answer, GoogleFake, MailgunFake, SendgridFake

MANY = [f"reader{i}@example.net" for i in range(1500)]


def sendgrid_provider(fake: SendgridFake) -> SendgridProvider:
    return SendgridProvider("sg", fake.api_key, httpx.AsyncClient(base_url=fake.base_url))


def mailgun_provider(fake: MailgunFake) -> MailgunProvider:
    client = httpx.AsyncClient(base_url=fake.base_url)
    return MailgunProvider("mg", fake.api_key, "mg.example.com", client)


def gmail_provider(fake: GoogleFake, key: ServiceAccountKey) -> GmailProvider:
    client = httpx.AsyncClient(base_url=fake.base_url, timeout=30.0)
    return GmailProvider("gm", ServiceAccount.parse(key.text), client, fake.token_url)


def message(*, text: str | None = "Hi.", html: str | None = None) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "Grüße ✓"
    if text is not None:
        msg.set_content(text)
    if html is not None:
        if text is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    return msg


# -- SendGrid ------------------------------------------------------------------------


async def test_sendgrid_splits_more_than_1000_recipients(sendgrid: SendgridFake) -> None:
    """Twilio SendGrid, Mail Send errors: "a limit of 1000 total recipients (to + cc + bcc)
    per request"; each address once in the personalizations array."""
    raw = message().as_bytes()
    rcpts = ["bob@example.org", *MANY, "BOB@example.org"]  # bob twice: one result, one copy
    p = sendgrid_provider(sendgrid)
    try:
        result = await p.send(envelope(*rcpts, raw=raw))
    finally:
        await p.close()
    assert result.outcome == "sent"
    assert [r.outcome for r in result.recipients].count("sent") == len(rcpts)
    assert len(sendgrid.mails) == 2
    first, second = sendgrid.mails
    # The To recipient rides in the first request, with the first blind copies as bcc.
    assert first["personalizations"][0]["to"] == [{"email": "bob@example.org"}]
    assert len(first["personalizations"][0]["bcc"]) == 999
    # The rest: each its own personalization (SendGrid needs a "to" in each one).
    assert len(second["personalizations"]) == 501
    delivered = [
        p["email"].lower()
        for mail in sendgrid.mails
        for block in mail["personalizations"]
        for kind in ("to", "cc", "bcc")
        for p in block.get(kind, [])
    ]
    assert sorted(delivered) == sorted({r.lower() for r in rcpts})
    assert second["content"] == first["content"] and second["subject"] == "Grüße ✓"


async def test_sendgrid_batch_failures_are_per_recipient(sendgrid: SendgridFake) -> None:
    sendgrid.script(Answer(), Answer(503, body={"errors": [{"message": "busy"}]}))
    p = sendgrid_provider(sendgrid)
    try:
        result = await p.send(envelope(*MANY, raw=message().as_bytes()))
    finally:
        await p.close()
    assert result.outcome == "sent"
    assert result.provider_message_id == "sg-1-fakemessageid"
    outcomes = [r.outcome for r in result.recipients]
    assert outcomes.count("sent") == 1000 and outcomes.count("temporary") == 500
    assert all("busy" in r.reply for r in result.recipients if r.outcome == "temporary")


async def test_sendgrid_leaves_out_an_empty_text_part(sendgrid: SendgridFake) -> None:
    """support.sendgrid.com: "The content value must be a string at least one character
    in length. for field content.0.value" (an empty text/plain part beside the HTML)."""
    html_and_empty_text = (
        b"From: a@example.com\r\nTo: bob@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\n\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--b--\r\n"
    )
    headers_only = b"From: a@example.com\r\nTo: bob@example.org\r\nSubject: x\r\n\r\n"
    p = sendgrid_provider(sendgrid)
    try:
        with_html = await p.send(envelope(raw=html_and_empty_text))
        empty = await p.send(envelope(raw=headers_only))
    finally:
        await p.close()
    assert with_html.outcome == empty.outcome == "sent"
    assert sendgrid.mails[0]["content"] == [{"type": "text/html", "value": "<p>x</p>"}]
    assert sendgrid.mails[1]["content"] == [{"type": "text/plain", "value": " "}]


async def test_sendgrid_edge_messages_keep_the_published_shape(sendgrid: SendgridFake) -> None:
    """HTML only, a Bcc header, Reply-To, custom headers, an inline image: all accepted."""
    msg = message(text=None, html="<p>Bild: <img src='cid:logo'></p>")
    msg["Bcc"] = "secret@example.net"
    msg["Reply-To"] = "Replies <replies@example.com>"
    msg["X-Campaign"] = "spring"
    html = msg.get_body(("html",))
    assert isinstance(html, EmailMessage)
    html.add_related(b"\x89PNG", "image", "png", cid="<logo>")
    p = sendgrid_provider(sendgrid)
    try:
        result = await p.send(envelope("bob@example.org", "secret@example.net", raw=msg.as_bytes()))
    finally:
        await p.close()
    assert result.outcome == "sent"
    (mail,) = sendgrid.mails
    assert mail["personalizations"] == [
        {"to": [{"email": "bob@example.org"}], "bcc": [{"email": "secret@example.net"}]}
    ]
    assert [c["type"] for c in mail["content"]] == ["text/html"]
    assert mail["reply_to"] == {"email": "replies@example.com", "name": "Replies"}
    assert "Bcc" not in mail["headers"] and mail["headers"]["X-Campaign"] == "spring"
    (image,) = mail["attachments"]
    assert image["content_id"] == "logo" and image["disposition"] == "inline"


# -- Mailgun -------------------------------------------------------------------------


async def test_mailgun_splits_more_than_1000_recipients(mailgun: MailgunFake) -> None:
    """Mailgun's SDKs: at most 1,000 recipients per message (mailgun-ruby MAX_RECIPIENTS)."""
    raw = message().as_bytes()
    mailgun.script(Answer(), Answer(429, body={"message": "slow down"}))
    p = mailgun_provider(mailgun)
    try:
        result = await p.send(envelope(*MANY, raw=raw))
    finally:
        await p.close()
    assert [len(to) for to, _ in mailgun.messages] == [1000]
    assert mailgun.messages[0][1] == raw
    assert len(mailgun.calls("/messages.mime")) == 2
    assert result.outcome == "sent"
    assert result.provider_message_id == "20240115.1@mg.example.com"
    outcomes = [r.outcome for r in result.recipients]
    assert outcomes.count("sent") == 1000 and outcomes.count("temporary") == 500


# -- Gmail ---------------------------------------------------------------------------


async def test_gmail_refreshes_a_refused_token_once(
    google: GoogleFake, service_account: ServiceAccountKey
) -> None:
    """Gmail "Resolve errors": a 401 means the access token expired or is invalid;
    refresh it. A revoked cached token must not turn the message into an auth_error."""
    p = gmail_provider(google, service_account)
    try:
        first = await p.send(envelope())
        google.revoke()
        second = await p.send(envelope())
    finally:
        await p.close()
    assert first.outcome == second.outcome == "sent"
    assert len(google.calls("/token")) == 2
    assert len(google.sent) == 2


async def test_gmail_sends_a_large_message_through_the_upload_uri(
    google: GoogleFake, service_account: ServiceAccountKey
) -> None:
    """messages.send: upload URI ``/upload/gmail/v1/users/{userId}/messages/send`` for
    media (35 MB); the metadata URI answers 413 to a message of a few MB."""
    msg = message()
    msg.add_attachment(b"\x00" * (6 * 1024 * 1024), "application", "octet-stream", filename="x")
    raw = msg.as_bytes()
    p = gmail_provider(google, service_account)
    try:
        result = await p.send(envelope("bob@example.org", "hidden@example.net", raw=raw))
    finally:
        await p.close()
    assert result.outcome == "sent", result.reply
    (call,) = google.calls("/messages/send")
    assert call["path"] == "/upload/gmail/v1/users/me/messages/send"
    sent = google.sent[0][1]
    assert sent == b"Bcc: hidden@example.net\r\n" + raw


async def test_gmail_refuses_a_message_over_35_mb_without_a_request(
    google: GoogleFake, service_account: ServiceAccountKey
) -> None:
    raw = message().as_bytes() + b"x" * MAX_MESSAGE_BYTES
    p = gmail_provider(google, service_account)
    try:
        result = await p.send(envelope(raw=raw))
    finally:
        await p.close()
    assert result.outcome == "permanent" and "35 MB" in result.reply
    assert google.requests == []


# -- secrets -------------------------------------------------------------------------


async def test_failure_replies_never_carry_credentials(
    sendgrid: SendgridFake, mailgun: MailgunFake
) -> None:
    sg_bad = SendgridProvider("sg", "SG.secret-key", httpx.AsyncClient(base_url=sendgrid.base_url))
    mg_bad = MailgunProvider(
        "mg", "key-secret", "mg.example.com", httpx.AsyncClient(base_url=mailgun.base_url)
    )
    try:
        results = [await sg_bad.send(envelope()), await mg_bad.send(envelope())]
    finally:
        await sg_bad.close()
        await mg_bad.close()
    assert [r.outcome for r in results] == ["auth_error", "auth_error"]
    for result in results:
        text = result.reply + "".join(r.reply for r in result.recipients)
        assert "secret" not in text
        assert base64.b64encode(b"api:key-secret").decode() not in text
