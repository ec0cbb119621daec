"""daemon.core.compose: the MIME an API send becomes, and how stored bytes are read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime

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
    compose_message,
    read_message,
    split_content_type,
    top_headers,
    write_direct,
    write_stdlib,
)
from daemon.core.mime import Unsupported, rfc5322_date

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
    plain = message.get_body(("plain",))
    assert plain is not None
    text = plain.get_content().replace("\r\n", "\n")
    expected = body.replace("\r\n", "\n").replace("\r", "\n")
    assert text == (expected if expected.endswith("\n") else expected + "\n")


# The direct writer (daemon.core.mime) against the stdlib parser and the stdlib writer.

_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,8}"
_ADDRESSES = st.from_regex(
    rf"{_ATOM}(\.{_ATOM}){{0,2}}@[a-z0-9]{{1,12}}(\.[a-z]{{2,6}}){{1,2}}", fullmatch=True
)
_ODD = st.sampled_from(
    [
        "",
        " leading",
        "trailing ",
        "two  spaces\tand a tab",
        "=?utf-8?q?looks_encoded?=",
        "caf\u00e9 \u00e0 la cr\u00e8me",
        "\u65e5\u672c\u8a9e\u306e\u4ef6\u540d" * 20,
        "\U0001f600 emoji",
        "x" * 990,
        "word " * 190,
        'quote " and \\ backslash',
        "a.b, (c) <d> @e;f:g[h]",
    ]
)
_TEXT = st.one_of(
    _ODD,
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=120).filter(
        lambda s: not CONTROL_CHARS.search(s)
    ),
)
_BODIES = st.one_of(
    st.none(),
    _ODD,
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=400),
)


def _mailboxes(min_size: int) -> st.SearchStrategy[list[Mailbox]]:
    return st.lists(
        st.builds(Mailbox, _ADDRESSES, _TEXT.map(lambda s: s[:200])), min_size=min_size, max_size=4
    )


_DRAFTS = st.builds(
    Draft,
    sender=_mailboxes(1).map(lambda boxes: boxes[0]),
    to=_mailboxes(1),
    subject=_TEXT,
    text_body=_BODIES,
    html_body=_BODIES,
    cc=_mailboxes(0),
    attachments=st.lists(
        st.builds(
            Attachment,
            st.one_of(_ODD, _TEXT).filter(lambda s: s.strip() != ""),
            st.sampled_from(["application/pdf", "text/plain", "image/png"]),
            st.binary(max_size=300),
        ),
        max_size=3,
    ),
    headers=st.lists(
        st.tuples(st.sampled_from(["X-Note", "X-Campaign", "List-Unsubscribe"]), _TEXT),
        max_size=3,
        unique_by=lambda h: h[0],
    ),
)


def _expected_text(body: str) -> str:
    lines = body.encode("utf-8").splitlines()
    return b"".join(line + b"\n" for line in lines).decode("utf-8") if lines else "\n"


def _leaves(message: EmailMessage) -> list[tuple[str, object, str | None]]:
    found = []
    for part in message.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        content = part.get_payload(decode=True) if filename else part.get_content()
        if isinstance(content, str):
            content = content.replace("\r\n", "\n")
        found.append((part.get_content_type(), content, filename))
    return found


def _direct(d: Draft) -> bool:
    try:
        write_direct(d, "<msg-01HZZ@relay.test>", "Mon, 15 Jan 2024 10:00:00 +0000")
    except Unsupported:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(d=_DRAFTS)
def test_direct_writer_round_trips_exactly(d: Draft) -> None:
    try:
        composed = compose_message(d, queue_id="msg-01HZZ", hostname="relay.test", date=WHEN)
    except ComposeError:  # only where the stdlib writer, the fallback, breaks the header block
        assert not _direct(d)
        assert parse(write_stdlib(d, "<msg-01HZZ@relay.test>", WHEN))["MIME-Version"] is None
        return
    raw = composed.raw
    assert raw.isascii()
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert composed.headers == top_headers(raw)
    message = parse(raw)
    direct = _direct(d)

    def agrees(parsed: str, wanted: str) -> bool:
        if direct:
            return parsed == wanted
        # The stdlib writer collapses whitespace and leaves "=?...?=" text for readers to decode.
        return "=?" in wanted or _words(parsed) == _words(wanted)

    assert agrees(message["Subject"], d.subject)
    for name, value in d.headers:
        assert agrees(message[name], value)
    if direct:
        assert composed == write_direct(d, "<msg-01HZZ@relay.test>", message["Date"])
        head = raw.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n"):  # 78 columns unless a single word is longer
            assert len(line) <= 78 or b'"' in line or max(len(w) for w in line.split()) > 40
        assert message["From"].addresses[0].display_name == d.sender.display_name
        for name, boxes in (("To", d.to), ("Cc", d.cc)):
            if boxes:
                parsed = message[name].addresses
                assert [(a.addr_spec, a.display_name) for a in parsed] == [
                    (m.address, m.display_name) for m in boxes
                ]
    texts = [t for t in (d.text_body, d.html_body) if t is not None] or [""]
    expected: list[tuple[str, object, str | None]] = [
        (f"text/{kind}", _expected_text(t), None)
        for kind, t in zip(
            ["plain", "html"] if d.text_body is not None or d.html_body is None else ["html"],
            texts,
            strict=False,
        )
    ]
    # get_filename() strips surrounding whitespace, whatever the encoding.
    expected += [(a.content_type, a.data, a.filename.strip()) for a in d.attachments]
    leaves = _leaves(message)
    assert [leaf[:2] for leaf in leaves] == [leaf[:2] for leaf in expected]
    for (*_, parsed), (*_, wanted) in zip(leaves, expected, strict=True):
        assert parsed == wanted or (parsed and wanted and agrees(parsed, wanted))
    # The stdlib writer, given the same draft, says the same thing, when its folding
    # has not broken the header block (it can emit an empty continuation line).
    legacy = parse(write_stdlib(d, "<msg-01HZZ@relay.test>", WHEN))
    if legacy["MIME-Version"] is None:
        return
    if not any("=?" in a.filename for a in d.attachments):  # the stdlib leaves those as is
        assert _leaves(legacy) == _leaves(message)
    assert [k for k, _ in legacy.items()] == [k for k, _ in message.items()]
    if "=?" not in d.subject:  # the stdlib writes such text as is: readers decode it
        assert _words(str(legacy["Subject"])) == _words(str(message["Subject"]))


def test_the_direct_writer_handles_the_common_shapes() -> None:
    shapes = [
        draft(),
        draft(text_body=None, html_body="<p>\u00e9</p>"),
        draft(html_body="<p>x</p>", subject="R\u00e9sum\u00e9 " * 30),
        draft(attachments=[Attachment("\u00e9t\u00e9.pdf", "application/pdf", b"%PDF")]),
        draft(headers=[("X-Tag", "a"), ("Message-ID", "<own@example.com>")]),
    ]
    for d in shapes:
        composed = write_direct(d, "<id@relay.test>", "Mon, 15 Jan 2024 10:00:00 +0000")
        assert composed.headers == top_headers(composed.raw)


def test_structured_custom_headers_go_through_the_stdlib() -> None:
    d = draft(headers=[("Reply-To", "R\u00e9n\u00e9e <r@example.org>")])
    with pytest.raises(Unsupported):
        write_direct(d, "<id@relay.test>", "Mon, 15 Jan 2024 10:00:00 +0000")
    composed = compose_message(d, queue_id="msg-1", hostname="relay.test", date=WHEN)
    assert composed.raw.isascii()
    assert parse(composed.raw)["Reply-To"].addresses[0].display_name == "R\u00e9n\u00e9e"
    assert composed.headers == top_headers(composed.raw)


def test_plain_text_is_7bit_and_exactly_what_the_stdlib_wrote() -> None:
    d = draft(text_body="Hello,\n\nthis is a message.\n", headers=[("X-Tag", "a b")])
    assert build(d) == write_stdlib(d, "<msg-01HZZZZZZZZZZZZZZZZZZZZZZZ@relay.test>", WHEN)


def test_long_file_names_use_rfc2231_continuations() -> None:
    name = "r\u00e9sum\u00e9 " * 12 + ".pdf"
    raw = build(draft(attachments=[Attachment(name, "application/pdf", b"%PDF")]))
    assert b"filename*0*=utf-8''r%C3%A9sum%C3%A9" in raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    _, attachment = parse(raw).iter_parts()
    assert attachment.get_filename() == name


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(9999, 12, 31),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(0)), timezone(timedelta(hours=5, minutes=30)), None]
        ),
    )
)
@settings(max_examples=300, deadline=None)
def test_date_header_text_is_the_stdlib_one(date: datetime) -> None:
    """One RFC 5322 date writer for the Date of API mail and SMTP's Received line."""
    assert rfc5322_date(date) == format_datetime(date)
