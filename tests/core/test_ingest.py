"""From DATA bytes and envelope to NewMessage: checks, fields and the trace header."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.core.ingest import (
    IngestRejected,
    Submission,
    build_message,
    check_bytes,
    parse_headers,
    parse_priority,
)
from daemon.core.message import NewMessage, Recipient

NOW = datetime(2024, 1, 15, 15, 0, 0, tzinfo=UTC)
BODY = b"From: Sender <sender@example.com>\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def submission(**overrides: Any) -> Submission:
    values: dict[str, Any] = {
        "mail_from": "sender@example.com",
        "recipients": (Recipient("b@example.org"),),
        "peer_ip": "192.0.2.7",
        "helo": "client.example",
    }
    values.update(overrides)
    return Submission(**values)


def build(data: bytes, sub: Submission | None = None, **kwargs: Any) -> NewMessage:
    return build_message(
        data,
        sub or submission(),
        message_id="msg-01HM0000000000000000000000",
        uuid="9f1c1a52-7f0e-4a57-9a1a-2f1f3c2b7e11",
        now=NOW,
        hostname="relay.test",
        **kwargs,
    )


def rejected(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(IngestRejected) as info:
        build(data, **kwargs)
    return info.value.reply


def test_raw_is_the_accepted_bytes_after_one_received_header() -> None:
    message = build(BODY)
    trace, _, rest = message.raw.partition(b";\r\n\t" + b"Mon, 15 Jan 2024 15:00:00 +0000\r\n")
    assert rest == BODY
    assert trace == (
        b"Received: from client.example ([192.0.2.7])\r\n"
        b"\tby relay.test (relayd) with ESMTP id msg-01HM0000000000000000000000\r\n"
        b"\tfor <b@example.org>"
    )


@pytest.mark.parametrize(
    ("tls", "authenticated", "protocol"),
    [(False, False, b"ESMTP"), (True, False, b"ESMTPS"), (True, True, b"ESMTPSA")],
)
def test_received_names_the_protocol(tls: bool, authenticated: bool, protocol: bytes) -> None:
    message = build(BODY, submission(tls=tls, authenticated=authenticated))
    assert b" with " + protocol + b" id " in message.raw.split(b"\r\n\r\n")[0]


def test_received_writes_ipv6_address_literals() -> None:
    message = build(BODY, submission(peer_ip="2001:db8::7"))
    assert message.raw.startswith(b"Received: from client.example ([IPv6:2001:db8::7])\r\n")


def test_received_omits_for_clause_with_several_recipients() -> None:
    sub = submission(recipients=(Recipient("b@example.org"), Recipient("c@example.org")))
    assert b"\tfor <" not in build(BODY, sub).raw


def test_summary_fields() -> None:
    data = (
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.com>\r\n"
        b"To: a@example.org, B <b@example.org>\r\n"
        b"Cc: c@example.org\r\n"
        b"Subject: =?utf-8?b?SGVsbG8g4pyT?=\r\n"
        b"Message-ID: <unique-id@example.com>\r\n"
        b"Date: Mon, 15 Jan 2024 10:00:00 -0500\r\n"
        b"X-Unrelated: kept only in raw\r\n"
        b"\r\nbody\r\n"
    )
    sub = submission(
        recipients=(Recipient("a@example.org"), Recipient("B@example.org"), Recipient("h@x.org"))
    )
    message = build(data, sub)
    assert message.from_header == "Jürgen <j@example.com>"
    assert message.to == ["a@example.org", "b@example.org"]
    assert message.cc == ["c@example.org"]
    assert message.bcc == ["h@x.org"]
    assert message.subject == "Hello ✓"
    assert message.headers["Message-ID"] == "<unique-id@example.com>"
    assert message.headers["Date"] == "Mon, 15 Jan 2024 10:00:00 -0500"
    assert "X-Unrelated" not in message.headers
    assert message.source == "smtp"
    assert (message.queued_at, message.next_attempt_at) == (NOW, NOW)
    assert message.mail_from == "sender@example.com"


def test_without_address_headers_the_envelope_is_the_to_list() -> None:
    message = build(b"Subject: no to\r\n\r\nx\r\n")
    assert (message.to, message.cc, message.bcc) == (["b@example.org"], [], [])


def test_undisclosed_recipients_are_bcc() -> None:
    message = build(b"To: undisclosed-recipients:;\r\n\r\nx\r\n")
    assert (message.to, message.bcc) == ([], ["b@example.org"])


def test_extended_headers_become_fields() -> None:
    data = (
        b"X-Workspace-ID: workspace-123\r\n"
        b"X-Campaign-ID: CAMP-2024-001\r\n"
        b"X-User-ID: USER-456\r\n"
        b"X-Priority: high\r\n"
        b"X-Retry-Count: 7\r\n"
        b'X-Metadata: {"source":"api",\r\n  "version":"2.0"}\r\n'
        b"X-Enable-Personalization: true\r\n"
        b"X-LLM-Model: gpt-4\r\n"
        b'X-Personalization-Context: {"tone":"professional"}\r\n'
        b"\r\nbody\r\n"
    )
    message = build(data)
    assert message.workspace_id == "workspace-123"
    assert message.campaign_id == "CAMP-2024-001"
    assert message.user_id == "USER-456"
    assert message.priority == 0
    assert message.max_retries == 7
    assert message.metadata == {"source": "api", "version": "2.0"}
    assert message.personalization == {
        "enabled": True,
        "model": "gpt-4",
        "context": {"tone": "professional"},
    }


def test_defaults_without_extended_headers() -> None:
    message = build(BODY)
    assert message.workspace_id == "default"
    assert (message.campaign_id, message.user_id) == (None, None)
    assert (message.priority, message.max_retries) == (1, None)
    assert message.metadata == {}
    assert message.personalization is None


def test_auth_workspace_overrides_header() -> None:
    message = build(b"X-Workspace-ID: other\r\n\r\nx\r\n", submission(auth_workspace="mine"))
    assert message.workspace_id == "mine"


def test_dsn_parameters_are_carried() -> None:
    sub = submission(
        mail_from="",
        recipients=(Recipient("b@example.org", "SUCCESS,FAILURE", "rfc822;b@example.org"),),
        dsn_ret="HDRS",
        dsn_envid="env-1",
    )
    message = build(BODY, sub)
    assert (message.mail_from, message.dsn_ret, message.dsn_envid) == ("", "HDRS", "env-1")
    assert message.recipients == [
        Recipient("b@example.org", "SUCCESS,FAILURE", "rfc822;b@example.org")
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("high", 0),
        ("HIGH", 0),
        ("normal", 1),
        ("low", 2),
        ("1 (Highest)", 0),
        ("2", 0),
        ("3 (Normal)", 1),
        ("4", 2),
        ("5 (Lowest)", 2),
        ("urgent", 1),
        ("", 1),
        (None, 1),
    ],
)
def test_priority(value: str | None, expected: int) -> None:
    assert parse_priority(value) == expected


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"X-Metadata: {not json}", "Invalid X-Metadata header: not JSON"),
        (b"X-Metadata: [1, 2]", "Invalid X-Metadata header: expected a JSON object"),
        (b'X-Metadata: {"n": 1e400}', "Invalid X-Metadata header: the number 1e400 is out of"),
        (b'X-Metadata: {"n": NaN}', "Invalid X-Metadata header: NaN is not valid JSON"),
        (b"X-Metadata: " + b"[" * 70 + b"]" * 70, "Invalid X-Metadata header: nested deeper"),
        (b"X-Personalization-Context: nope", "Invalid X-Personalization-Context header"),
        (b"X-Enable-Personalization: maybe", "Invalid X-Enable-Personalization header"),
        (b"X-Retry-Count: -1", "Invalid X-Retry-Count header"),
        (b"X-Retry-Count: 101", "Invalid X-Retry-Count header"),
        (b"X-Workspace-ID: " + b"w" * 201, "Invalid X-Workspace-ID header: must be 1-200"),
        # What the API could never name (X-Workspace-ID, /api/admin/workspaces/{id}).
        (b"X-Workspace-ID: a b", "Invalid X-Workspace-ID header: must be 1-200"),
        (b"X-Workspace-ID: ws/1", "Invalid X-Workspace-ID header: must be 1-200"),
        (b"X-Workspace-ID: \xff\xfe", "Invalid X-Workspace-ID header: must be 1-200"),
        (b"X-Campaign-ID: " + b"c" * 201, "X-Campaign-ID is longer than 200"),
        (b"X-Campaign-ID: spring\x01", "Invalid X-Campaign-ID header: UTF-8 text without"),
        (b"X-User-ID: \xc3(", "Invalid X-User-ID header: UTF-8 text without control"),
    ],
)
def test_bad_extended_headers_are_550(header: bytes, reason: str) -> None:
    reply = rejected(header + b"\r\n\r\nbody\r\n")
    assert reply.startswith("550 5.6.0 " + reason)


def test_ids_the_api_can_name_are_taken_as_they_are() -> None:
    message = build(
        b"X-Workspace-ID: acme.prod:eu-1\r\n"
        + "X-Campaign-ID: Frühling/2026 50%\r\nX-User-ID: josé\tm\r\n\r\nbody\r\n".encode()
    )
    assert message.workspace_id == "acme.prod:eu-1"
    assert message.campaign_id == "Frühling/2026 50%"
    assert message.user_id == "josé\tm"


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: x\r\n\r\nbare\nlf\r\n",
        b"Subject: x\r\n\r\nbare\rcr\r\n",
        b"Subject: x\n\nall unix\n",
        b"Subject: x\r\n\r\nsmuggle\n.\r\nMAIL FROM:<a@b.c>\r\n",
    ],
)
def test_bare_newlines_are_refused(data: bytes) -> None:
    assert rejected(data).startswith("550 5.6.0 Message contains a bare CR or LF")


def test_bare_newlines_normalized_on_request() -> None:
    message = build(b"Subject: x\n\nline one\nline two\rthree\r\n", bare_newline="normalize")
    assert message.raw.endswith(b"\r\n\r\nSubject: x\r\n\r\nline one\r\nline two\r\nthree\r\n"[4:])
    assert message.subject == "x"


@pytest.mark.parametrize("policy", ["reject", "normalize"])
def test_nul_is_always_refused(policy: str) -> None:
    assert rejected(b"Subject: x\r\n\r\nnul\x00here\r\n", bare_newline=policy).startswith(
        "550 5.6.0 Message contains NUL"
    )


def test_line_length_limit() -> None:
    assert check_bytes(b"x" * 998 + b"\r\n") == b"x" * 998 + b"\r\n"
    assert rejected(b"Subject: x\r\n\r\n" + b"x" * 999 + b"\r\n") == (
        "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)"
    )


def test_parse_headers_unfolds_and_keeps_the_first() -> None:
    data = (
        b"Subject: first\r\n part\r\n"
        b"Subject: second\r\n"
        b"To : spaced@example.org\r\n"
        b"\r\nSubject: in the body\r\n"
    )
    assert parse_headers(data) == {"subject": "first part", "to": "spaced@example.org"}


def test_parse_headers_stops_at_a_non_header_line() -> None:
    assert parse_headers(b"Subject: a\r\nnot a header\r\nTo: b@example.org\r\n") == {"subject": "a"}


def test_message_without_headers() -> None:
    message = build(b"\r\njust a body\r\n")
    assert (message.subject, message.to, message.headers) == ("", ["b@example.org"], {})


def test_long_subject_is_truncated_for_the_summary() -> None:
    data = b"Subject: " + b"s" * 980 + b"\r\n " + b"t" * 100 + b"\r\n\r\nx\r\n"
    message = build(data)
    assert len(message.subject) == 998
    assert message.raw.endswith(data)
