"""RFC 3464 bounces, parsed back with the stdlib email package."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from typing import Any, cast

import pytest

from daemon.core.dsn import (
    ReportedRecipient,
    build_dsn,
    may_bounce,
    status_code,
    subject,
    wants_report,
    xtext_encode,
)
from daemon.core.retry import AUTH_ERROR, PERMANENT, TEMPORARY

ARRIVAL = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NOW = datetime(2026, 1, 2, 4, 0, 0, tzinfo=UTC)
ORIGINAL = (
    b"From: Alice <a@example.com>\r\nTo: b@example.org\r\nSubject: quarterly report\r\n"
    b"Message-ID: <orig-1@example.com>\r\n\r\nline one\r\n.\r\n..dots\r\n"
)
GONE = ReportedRecipient(
    "gone@example.org", "5.1.1", "550 5.1.1 No such user", orcpt="rfc822;Gone+x@example.org"
)


def build(**kw: Any) -> bytes:
    args: dict[str, Any] = {
        "original": ORIGINAL,
        "mail_from": "a@example.com",
        "recipients": [GONE],
        "hostname": "relay.test",
        "arrival": ARRIVAL,
        "now": NOW,
        "message_id": "msg-BOUNCE1",
    }
    args.update(kw)
    return build_dsn(**args)


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def subparts(part: Message) -> list[Message]:
    """The payload of a part that holds parts (message/delivery-status, message/rfc822)."""
    return cast(list[Message], part.get_payload())


@pytest.mark.parametrize(
    ("notify", "event", "wanted"),
    [
        (None, "failure", True),
        ("", "failure", True),
        (None, "success", False),
        (None, "delay", False),
        ("NEVER", "failure", False),
        ("never", "failure", False),
        ("SUCCESS", "failure", False),
        ("SUCCESS", "success", True),
        ("SUCCESS,FAILURE", "failure", True),
        ("DELAY, FAILURE", "failure", True),
        ("DELAY", "delay", True),
    ],
)
def test_notify_decides_who_is_reported(notify: str | None, event: str, wanted: bool) -> None:
    assert wants_report(notify, event) is wanted


@pytest.mark.parametrize(
    ("mail_from", "allowed"), [("a@example.com", True), ("", False), ("<>", False), (" ", False)]
)
def test_never_bounce_a_bounce(mail_from: str, allowed: bool) -> None:
    assert may_bounce(mail_from) is allowed


@pytest.mark.parametrize(
    ("code", "reply", "kind", "status"),
    [
        (550, "550 5.1.1 No such user", PERMANENT, "5.1.1"),
        (550, "550 mailbox unavailable", PERMANENT, "5.0.0"),
        (451, "451 4.3.0 later", TEMPORARY, "4.3.0"),
        (452, "452 no room", TEMPORARY, "4.0.0"),
        (None, "SMTPConnectError: refused", TEMPORARY, "4.4.1"),
        (None, "", PERMANENT, "5.0.0"),
        (None, "", AUTH_ERROR, "4.7.0"),
    ],
)
def test_status_code(code: int | None, reply: str, kind: str, status: str) -> None:
    assert status_code(code, reply, kind) == status


def test_xtext_encode() -> None:
    assert xtext_encode("a+b=c@example.org") == "a+2Bb+3Dc@example.org"
    assert xtext_encode("plain") == "plain"
    assert xtext_encode("sp ace\u00e9") == "sp+20ace+C3+A9"


def test_report_structure_and_fields() -> None:
    raw = build(envid="QQ+123", ret="HDRS")
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert b"\r" not in raw.replace(b"\r\n", b"")
    msg = parse(raw)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@relay.test>"
    assert msg["To"] == "a@example.com"
    assert msg["Message-ID"] == "<msg-BOUNCE1@relay.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, returned = msg.iter_parts()
    assert human.get_content_type() == "text/plain"
    assert "gone@example.org" in human.get_content()
    assert "No such user" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_rcpt = subparts(status)
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert per_message["Original-Envelope-Id"] == "QQ+123"
    assert per_message["Arrival-Date"] == "Fri, 02 Jan 2026 03:04:05 +0000"
    assert per_rcpt["Original-Recipient"] == "rfc822;Gone+x@example.org"
    assert per_rcpt["Final-Recipient"] == "rfc822; gone@example.org"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
    assert per_rcpt["Last-Attempt-Date"] == "Fri, 02 Jan 2026 04:00:00 +0000"
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: quarterly report" in returned.get_content()
    assert b"line one" not in raw  # headers only


def test_headers_are_returned_by_default() -> None:
    msg = parse(build())
    returned = list(msg.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Original-Envelope-Id" not in subparts(list(msg.iter_parts())[1])[0]


def test_ret_full_returns_the_exact_original() -> None:
    raw = build(ret="FULL")
    assert ORIGINAL in raw
    returned = list(parse(raw).iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = subparts(returned)[0]
    assert inner["Message-ID"] == "<orig-1@example.com>"


def test_eight_bit_original_is_kept_and_labelled() -> None:
    original = b"Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve body\r\n"
    raw = build(original=original, ret="FULL")
    assert original in raw
    returned = list(parse(raw).iter_parts())[2]
    assert returned["Content-Transfer-Encoding"] == "8bit"


def test_several_recipients_and_hostile_reply_text() -> None:
    other = ReportedRecipient(
        "x@example.org", "4.4.1", "no answer\r\nInjected: header", remote_mta="mx.example.org"
    )
    msg = parse(build(recipients=[GONE, other]))
    blocks = subparts(list(msg.iter_parts())[1])
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; gone@example.org",
        "rfc822; x@example.org",
    ]
    assert blocks[2]["Diagnostic-Code"] == "smtp; no answer Injected: header"
    assert blocks[2]["Injected"] is None
    assert blocks[2]["Remote-MTA"] == "dns; mx.example.org"
    assert blocks[2]["Original-Recipient"] is None


def test_boundary_never_occurs_in_the_original() -> None:
    original = b"Subject: tricky\r\n\r\n--=_relay-dsn-msg-BOUNCE1\r\n"
    raw = build(original=original, ret="FULL")
    msg = parse(raw)
    assert msg.get_boundary() != "=_relay-dsn-msg-BOUNCE1"
    assert len(list(msg.iter_parts())) == 3


def test_long_diagnostics_are_cut() -> None:
    long = ReportedRecipient("x@example.org", "5.0.0", "550 " + "x" * 5000)
    raw = build(recipients=[long])
    assert max(len(line) for line in raw.split(b"\r\n")) < 998


def test_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        build(recipients=[])


RELAYED = ReportedRecipient(
    "x@example.org",
    "2.0.0",
    "250 2.0.0 Ok: queued as 4Zx",
    orcpt="rfc822;x@example.org",
    action="relayed",
    remote_mta="mx.example.org",
)
UNTIL = datetime(2026, 1, 2, 11, 30, 0, tzinfo=UTC)
DELAYED = ReportedRecipient(
    "slow@example.org",
    "4.3.0",
    "451 4.3.0 try later",
    orcpt="rfc822;Slow@example.org",
    action="delayed",
    remote_mta="mx.example.org",
    will_retry_until=UNTIL,
)


@pytest.mark.parametrize(
    ("ret", "returned_type"), [(None, "text/rfc822-headers"), ("FULL", "message/rfc822")]
)
def test_relayed_report(ret: str | None, returned_type: str) -> None:
    raw = build(recipients=[RELAYED], envid="abc", ret=ret)
    msg = parse(raw)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    assert msg["To"] == "a@example.com"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, returned = msg.iter_parts()
    assert "was relayed" in human.get_content()
    assert "<x@example.org>: 250 2.0.0 Ok: queued as 4Zx" in human.get_content()
    per_message, per_rcpt = subparts(status)
    assert per_message.items() == [
        ("Reporting-MTA", "dns; relay.test"),
        ("Original-Envelope-Id", "abc"),
        ("Arrival-Date", "Fri, 02 Jan 2026 03:04:05 +0000"),
    ]
    assert per_rcpt.items() == [
        ("Original-Recipient", "rfc822;x@example.org"),
        ("Final-Recipient", "rfc822; x@example.org"),
        ("Action", "relayed"),
        ("Status", "2.0.0"),
        ("Remote-MTA", "dns; mx.example.org"),
        ("Diagnostic-Code", "smtp; 250 2.0.0 Ok: queued as 4Zx"),
        ("Last-Attempt-Date", "Fri, 02 Jan 2026 04:00:00 +0000"),
    ]
    assert returned.get_content_type() == returned_type
    assert (ORIGINAL in raw) is (ret == "FULL")


@pytest.mark.parametrize(
    ("ret", "returned_type"), [("HDRS", "text/rfc822-headers"), ("FULL", "message/rfc822")]
)
def test_delayed_report(ret: str, returned_type: str) -> None:
    raw = build(recipients=[DELAYED], envid="ENV 7", ret=ret)
    msg = parse(raw)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    human, status, returned = msg.iter_parts()
    text = human.get_content()
    assert "THIS IS A WARNING ONLY" in text
    assert "<slow@example.org>: 451 4.3.0 try later" in text
    assert "retried until Fri, 02 Jan 2026 11:30:00 +0000" in text
    per_message, per_rcpt = subparts(status)
    assert per_message["Original-Envelope-Id"] == "ENV 7"
    assert per_rcpt.items() == [
        ("Original-Recipient", "rfc822;Slow@example.org"),
        ("Final-Recipient", "rfc822; slow@example.org"),
        ("Action", "delayed"),
        ("Status", "4.3.0"),
        ("Remote-MTA", "dns; mx.example.org"),
        ("Diagnostic-Code", "smtp; 451 4.3.0 try later"),
        ("Last-Attempt-Date", "Fri, 02 Jan 2026 04:00:00 +0000"),
        ("Will-Retry-Until", "Fri, 02 Jan 2026 11:30:00 +0000"),
    ]
    assert returned.get_content_type() == returned_type
    assert (b"line one" in raw) is (ret == "FULL")


def test_delayed_without_a_give_up_time_leaves_will_retry_until_out() -> None:
    unknown = ReportedRecipient("slow@example.org", "4.4.1", action="delayed")
    msg = parse(build(recipients=[unknown]))
    human, status, _ = msg.iter_parts()
    per_rcpt = subparts(status)[1]
    assert per_rcpt["Will-Retry-Until"] is None
    assert per_rcpt["Diagnostic-Code"] is None
    assert (per_rcpt["Action"], per_rcpt["Status"]) == ("delayed", "4.4.1")
    assert "retried until" not in human.get_content()
    assert "<slow@example.org>: status 4.4.1" in human.get_content()


def test_failure_report_keeps_its_wording() -> None:
    msg = parse(build())
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert "could not" in next(msg.iter_parts()).get_content()
    assert subject([GONE]) == "Undelivered Mail Returned to Sender"
    assert subject([RELAYED]) == "Successful Mail Delivery Report"
    assert subject([DELAYED]) == "Delayed Mail (still being retried)"
