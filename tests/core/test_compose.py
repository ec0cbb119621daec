"""daemon.core.compose: the MIME an API send becomes, and how stored bytes are read back."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.compose import (
    CONTROL_CHARS,
    Attachment,
    ComposeError,
    Draft,
    Mailbox,
    check_header,
    compose,
    read_message,
    split_content_type,
    top_headers,
)

WHEN = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)


def draft(**fields: object) -> Draft:
    base: dict[str, object] = {
        "sender": Mailbox("sender@example.com", "Sender"),
        "to": [Mailbox("to@example.org")],
        "subject": "Subject",
        "text_body": "text",
    }
    base.update(fields)
    return Draft(**base)  # type: ignore[arg-type]


def build(d: Draft) -> bytes:
    return compose(d, queue_id="msg-01HZZZZZZZZZZZZZZZZZZZZZZZ", hostname="relay.test", date=WHEN)


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def test_headers_and_crlf() -> None:
    raw = build(draft(cc=[Mailbox("cc@example.org", "C, Jr")], headers=[("X-Tag", "a")]))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    message = parse(raw)
    assert message["From"] == "Sender <sender@example.com>"
    assert message["To"] == "to@example.org"
    assert message["Cc"] == '"C, Jr" <cc@example.org>'
    assert message["Date"] == "Mon, 15 Jan 2024 10:00:00 +0000"
    assert message["Message-ID"] == "<msg-01HZZZZZZZZZZZZZZZZZZZZZZZ@relay.test>"
    assert message["MIME-Version"] == "1.0"
    assert message["X-Tag"] == "a"


def test_structure_follows_the_parts() -> None:
    assert parse(build(draft())).get_content_type() == "text/plain"
    html_only = parse(build(draft(text_body=None, html_body="<p>x</p>")))
    assert html_only.get_content_type() == "text/html"
    both = parse(build(draft(html_body="<p>x</p>")))
    assert both.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in both.iter_parts()] == ["text/plain", "text/html"]
    mixed = parse(
        build(
            draft(
                html_body="<p>x</p>",
                attachments=[Attachment("a.bin", "application/octet-stream", b"\x00\xff" * 100)],
            )
        )
    )
    assert mixed.get_content_type() == "multipart/mixed"
    body, attachment = mixed.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert attachment.get_content() == b"\x00\xff" * 100
    assert attachment.get_content_disposition() == "attachment"
    # Sub-parts carry no MIME-Version of their own.
    assert all("MIME-Version" not in p for p in mixed.walk() if p is not mixed)


def test_same_draft_same_bytes_and_content_derived_boundaries() -> None:
    d = draft(html_body="<p>x</p>")
    assert build(d) == build(d)
    assert build(d) != build(draft(html_body="<p>y</p>"))


def test_non_ascii_is_encoded_to_7bit() -> None:
    raw = build(draft(subject="\u00e9t\u00e9", text_body="caf\u00e9 " * 50))
    assert raw.isascii()
    message = parse(raw)
    assert message["Subject"] == "\u00e9t\u00e9"
    assert message.get_content().replace("\r\n", "\n") == "caf\u00e9 " * 50 + "\n"


def test_long_ascii_lines_stay_under_the_smtp_limit() -> None:
    raw = build(draft(text_body="x" * 5000))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert parse(raw).get_content().rstrip() == "x" * 5000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Evil", "a\r\nBcc: v@example.org"),
        ("X-Evil", "a\nb"),
        ("X-Evil", "a\u2028b"),
        ("X Evil", "a"),
        ("X:Evil", "a"),
        ("", "a"),
        ("Content-Type", "text/html"),
        ("content-transfer-encoding", "8bit"),
        ("MIME-Version", "1.0"),
        ("Bcc", "v@example.org"),
        ("From", "x@example.org"),
        ("Message-ID", "not-an-id"),
    ],
)
def test_check_header_refuses(name: str, value: str) -> None:
    with pytest.raises(ComposeError) as caught:
        check_header(name, value)
    assert caught.value.field == f"headers.{name}"


def test_compose_refuses_injection_and_duplicates() -> None:
    with pytest.raises(ComposeError, match="subject"):
        build(draft(subject="a\r\nBcc: v@example.org"))
    with pytest.raises(ComposeError):
        build(draft(headers=[("X-A", "1"), ("x-a", "2")]))
    with pytest.raises(ComposeError):
        build(draft(sender=Mailbox("a@example.com", "Name\nX-Evil: 1")))


def test_message_id_may_be_given() -> None:
    message = parse(build(draft(headers=[("Message-ID", "<own@example.com>")])))
    assert message.get_all("Message-ID") == ["<own@example.com>"]


@pytest.mark.parametrize("value", ["pdf", "application/", "multipart/mixed", "message/rfc822"])
def test_split_content_type_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        split_content_type(value)


def test_read_message_gives_bodies_headers_attachments() -> None:
    raw = build(
        draft(
            text_body="plain\n",
            html_body="<b>rich</b>",
            attachments=[Attachment("r.pdf", "application/pdf", b"%PDF" * 10)],
        )
    )
    view = read_message(raw)
    assert view.text_body == "plain\n"
    assert view.html_body == "<b>rich</b>\n"
    assert view.headers["Subject"] == "Subject"
    assert view.attachments == [
        {"filename": "r.pdf", "content_type": "application/pdf", "size": 40}
    ]
    assert top_headers(raw) == view.headers


def test_read_message_tolerates_odd_bytes() -> None:
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\nbody\r\n"
    assert read_message(raw).text_body == "body\n"
    assert read_message(b"garbage without headers").text_body is not None


def _words(text: str) -> str:
    return " ".join(text.split())


@settings(max_examples=200, deadline=None)
@given(
    subject=st.text().filter(lambda s: not CONTROL_CHARS.search(s)),
    body=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    note=st.text().filter(lambda s: not CONTROL_CHARS.search(s)),
    filename=st.text(min_size=1).filter(lambda s: not CONTROL_CHARS.search(s)),
)
def test_text_fields_round_trip(subject: str, body: str, note: str, filename: str) -> None:
    try:
        (subject + note + filename).encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates are refused before composing
    raw = build(
        draft(
            subject=subject,
            text_body=body,
            headers=[("X-Note", note)],
            attachments=[Attachment(filename, "application/octet-stream", b"x")],
        )
    )
    assert raw.isascii()
    message = parse(raw)
    assert _words(message["Subject"]) == _words(subject)
    assert _words(message["X-Note"]) == _words(note)
    _, attachment = message.iter_parts()
    assert _words(attachment.get_filename() or "") == _words(filename)
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    expected = body.replace("\r\n", "\n").replace("\r", "\n")
    assert text == (expected if expected.endswith("\n") else expected + "\n")
