"""POST /api/messages: the accepted shape, every refusal, scheduling, and the MIME stored."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import httpx
import pytest

from daemon.api import create_app
from daemon.service import RelayService
from daemon.store import queue
from daemon.store.models import messages
from tests.api.conftest import AUTH, assert_envelope, message, send

PDF = b"%PDF-1.4\x00\x01\x02binary\xff" * 50


async def stored(service: RelayService, message_id: str) -> tuple[EmailMessage, list[str]]:
    """The stored bytes, parsed, and the envelope recipients, read from the queue."""

    def load(conn: Any) -> tuple[bytes | None, list[Any]]:
        return queue.get_raw(conn, message_id), queue.get_recipients(conn, message_id)

    raw, recipients = await service.reader.run(load)
    assert raw is not None
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return parsed, [r.address for r in recipients]


async def test_accepted_message_shape(client: httpx.AsyncClient, service: RelayService) -> None:
    response = await client.post("/api/messages", json=message())
    assert response.status_code == 202
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == {"message_id", "status", "queued_at", "estimated_send_time"}
    assert data["message_id"].startswith("msg-")
    assert data["status"] == "queued"
    assert data["queued_at"].endswith("Z")
    assert data["estimated_send_time"] == data["queued_at"]
    counts = await service.count_by_status()
    assert counts["queued"] == 1


async def test_full_message_builds_mixed_alternative_mime(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    message_id = await send(
        client,
        **{"from": "Sender Name <sender@example.com>"},
        to=["a@example.org", "B <b@example.org>"],
        cc=["cc@example.net"],
        bcc=["hidden@example.net"],
        subject="Rapport d'\u00e9t\u00e9",
        text_body="Hello\n\nplain part",
        html_body="<h1>Hello</h1><p>html part</p>",
        attachments=[
            {
                "filename": "report.pdf",
                "content_type": "application/pdf",
                "content": base64.b64encode(PDF).decode(),
            },
            {"filename": "notes.txt", "content": base64.encodebytes(b"line\n" * 40).decode()},
        ],
        headers={"Reply-To": "noreply@example.com", "X-Custom": "yes"},
    )
    parsed, recipients = await stored(service, message_id)
    assert recipients == ["a@example.org", "b@example.org", "cc@example.net", "hidden@example.net"]
    assert "Bcc" not in parsed
    assert "hidden@example.net" not in parsed.as_string()
    assert parsed["From"] == "Sender Name <sender@example.com>"
    assert parsed["Subject"] == "Rapport d'\u00e9t\u00e9"
    assert parsed["Cc"] == "cc@example.net"
    assert parsed["Reply-To"] == "noreply@example.com"
    assert parsed["X-Custom"] == "yes"
    assert parsed["Message-ID"] == f"<{message_id}@relay.test>"
    assert parsed["Date"].datetime.tzinfo is not None
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_content_type() == "multipart/mixed"
    body, *attachments = parsed.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in body.iter_parts()] == ["text/plain", "text/html"]
    plain = parsed.get_body(("plain",))
    assert plain is not None
    assert plain.get_content().replace("\r\n", "\n") == "Hello\n\nplain part\n"
    html = parsed.get_body(("html",))
    assert html is not None
    assert "<h1>Hello</h1>" in html.get_content()
    assert [a.get_filename() for a in attachments] == ["report.pdf", "notes.txt"]
    assert attachments[0].get_content_type() == "application/pdf"
    assert attachments[0].get_content() == PDF
    assert attachments[1].get_content_type() == "text/plain"  # guessed from the name
    assert attachments[1].get_payload(decode=True) == b"line\n" * 40


async def test_single_part_messages(client: httpx.AsyncClient, service: RelayService) -> None:
    text_id = await send(client, text_body="only text")
    parsed, _ = await stored(service, text_id)
    assert parsed.get_content_type() == "text/plain"
    html_id = await send(client, text_body=None, html_body="<p>only html</p>")
    parsed, _ = await stored(service, html_id)
    assert parsed.get_content_type() == "text/html"


async def test_x_priority_and_retry_count_headers(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    high = await send(client, headers={"X-Priority": "high", "X-Retry-Count": "5"})
    low = await send(client, headers={"X-Priority": "5 (Lowest)"})
    listed = (await client.get("/api/messages")).json()["data"]["messages"]
    priorities = {m["id"]: m["priority"] for m in listed}
    assert priorities == {high: "high", low: "low"}
    claimed = await service.committer.run(
        lambda c: queue.claim(c, service.clock(), 10, "t", timedelta(minutes=1))
    )
    assert [m.id for m in claimed] == [high, low]  # high is claimed first
    assert claimed[0].max_retries == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"from": None}, "from"),
        ({"to": []}, "to"),
        ({"subject": None}, "subject"),
        ({"text_body": None}, "text_body"),
        ({"attachments": [{"content": "aGk="}]}, "attachments[0].filename"),
    ],
)
async def test_missing_required_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    fields = message(**body)
    fields = {k: v for k, v in fields.items() if v is not None}
    error = assert_envelope(
        await client.post("/api/messages", json=fields), 400, "MISSING_REQUIRED_FIELD"
    )
    assert error["details"]["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"from": "not-an-address"}, "from"),
        ({"to": ["ok@example.org", "bad@"]}, "to[1]"),
        ({"cc": ["two@@example.org"]}, "cc[0]"),
        ({"bcc": ["x@localhost"]}, "bcc[0]"),
        ({"to": ["Evil\r\nBcc: x@example.org <a@example.org>"]}, "to[0]"),
        ({"headers": {"Reply-To": "nobody"}}, "headers.Reply-To[0]"),
    ],
)
async def test_invalid_email_format(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/messages", json=message(**body))
    assert assert_envelope(response, 400, "INVALID_EMAIL_FORMAT")["details"]["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "x@example.org", "cc": 5}, "cc"),
        ({"subject": 42}, "subject"),
        ({"text_body": ["x"]}, "text_body"),
        ({"metadata": "flat"}, "metadata"),
        ({"headers": ["X-A: b"]}, "headers"),
        ({"headers": {"X-A": 1}}, "headers.X-A"),
        ({"attachments": {"filename": "a"}}, "attachments"),
        ({"attachments": [{"filename": "a", "content": "!!notbase64"}]}, "attachments[0].content"),
        ({"attachments": [{"filename": "a", "content": "aGk="[:3]}]}, "attachments[0].content"),
        (
            {"attachments": [{"filename": "a", "content": "aGk=", "content_type": "pdf"}]},
            "attachments[0].content_type",
        ),
        ({"subject": "Hi\r\nBcc: victim@example.org"}, "subject"),
        ({"subject": "Hi\nX-Evil: 1"}, "subject"),
        ({"headers": {"X-Note": "a\r\nBcc: victim@example.org"}}, "headers.X-Note"),
        ({"headers": {"X-Bad\r\nBcc": "v@example.org"}}, "headers.X-Bad\r\nBcc"),
        ({"headers": {"Content-Type": "text/html"}}, "headers.Content-Type"),
        ({"headers": {"mime-version": "2.0"}}, "headers.mime-version"),
        ({"headers": {"Bcc": "v@example.org"}}, "headers.Bcc"),
        ({"headers": {"X-Priority": "whenever"}}, "headers.X-Priority"),
        ({"headers": {"Message-ID": "no brackets"}}, "headers.Message-ID"),
        ({"workspace_id": "has space"}, "workspace_id"),
        ({"scheduling": {"send_at": "next tuesday"}}, "scheduling.send_at"),
        ({"scheduling": {"send_at": 1700000000}}, "scheduling.send_at"),
        (
            {"scheduling": {"send_at": "2030-01-01T00:00:00", "timezone": "Mars/Base"}},
            "scheduling.timezone",
        ),
        ({"personalization": {"enabled": "yes"}}, "personalization.enabled"),
        ({"metadata": {"k": "nul\u0000byte"}}, "metadata.k"),
    ],
)
async def test_invalid_request_names_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/messages", json=message(**body))
    assert assert_envelope(response, 400, "INVALID_REQUEST")["details"]["field"] == field


async def test_unknown_fields_are_named(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/messages", json=message(sender="x", priority="high"))
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"]["unknown_fields"] == ["priority", "sender"]
    nested = await client.post(
        "/api/messages", json=message(scheduling={"send_at": None, "when": "now"})
    )
    assert assert_envelope(nested, 400, "INVALID_REQUEST")["details"]["unknown_fields"] == ["when"]


@pytest.mark.parametrize(
    "raw",
    [b"{bad json", b"", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"a": NaN}', b"[" * 100000],
)
async def test_malformed_body_is_invalid_request(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/api/messages", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_envelope(response, 400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ('{"n": 1e400}', "the number 1e400 is out of range"),
        ('{"n": -1e999}', "the number -1e999 is out of range"),
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
    ],
)
async def test_what_could_not_be_answered_is_not_stored(
    client: httpx.AsyncClient, metadata: str, reason: str
) -> None:
    """Valid to Python's decoder, but no JSON encoder could write it back: refused at the door."""
    body = json.dumps(message(subject="odd")).replace(
        '"subject"', f'"metadata": {metadata}, "subject"'
    )
    response = await client.post(
        "/api/messages", content=body, headers={"Content-Type": "application/json"}
    )
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["message"] == f"Malformed JSON body: {reason}"
    listed = await client.get("/api/messages")
    assert listed.status_code == 200 and listed.json()["data"]["messages"] == []
    deep = {"a": [[[[{"b": 0.5}]]]]}  # nested a little, a finite number: taken
    taken = await client.post("/api/messages", json=message(metadata=deep))
    assert taken.status_code == 202, taken.text
    shown = await client.get(f"/api/messages/{taken.json()['data']['message_id']}")
    assert shown.json()["data"]["metadata"] == deep


async def test_message_too_large(client: httpx.AsyncClient, service: RelayService) -> None:
    limit = service.config.smtp.max_size
    # Decoded size below the limit, but base64 inside MIME pushes the message over it.
    almost = base64.b64encode(b"x" * (limit * 9 // 10)).decode()
    response = await client.post(
        "/api/messages", json=message(attachments=[{"filename": "a.bin", "content": almost}])
    )
    error = assert_envelope(response, 413, "MESSAGE_TOO_LARGE")
    assert error["details"]["max_size"] == limit
    # A body far past the limit is refused before it is even parsed.
    huge = await client.post(
        "/api/messages",
        content=b"x" * (2 * limit + 2 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert_envelope(huge, 413, "MESSAGE_TOO_LARGE")
    assert (await service.count_by_status())["queued"] == 0


async def test_future_send_at_is_scheduled(client: httpx.AsyncClient) -> None:
    when = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    response = await client.post(
        "/api/messages",
        json=message(scheduling={"send_at": when.isoformat().replace("+00:00", "Z")}),
    )
    assert response.status_code == 202
    data = response.json()["data"]
    assert data["status"] == "scheduled"
    assert data["estimated_send_time"] == when.strftime("%Y-%m-%dT%H:%M:%SZ")
    listed = (await client.get("/api/messages?status=scheduled")).json()["data"]["messages"]
    assert [m["id"] for m in listed] == [data["message_id"]]
    assert listed[0]["estimated_send_time"] == data["estimated_send_time"]


async def test_timezone_applies_to_a_send_at_without_offset(client: httpx.AsyncClient) -> None:
    # Mid-January: New York is UTC-5, so 09:00 local is 14:00 UTC. The next such day
    # is always less than a year ahead.
    now = datetime.now(UTC)
    year = now.year if datetime(now.year, 1, 15, 8, tzinfo=UTC) > now else now.year + 1
    local = f"{year}-01-15T09:00:00"
    response = await client.post(
        "/api/messages",
        json=message(scheduling={"send_at": local, "timezone": "America/New_York"}),
    )
    data = response.json()["data"]
    assert data["status"] == "scheduled"
    assert data["estimated_send_time"] == f"{year}-01-15T14:00:00Z"
    # An explicit offset wins over the timezone.
    offset = await client.post(
        "/api/messages",
        json=message(
            scheduling={"send_at": f"{year}-01-15T09:00:00+01:00", "timezone": "America/New_York"}
        ),
    )
    assert offset.json()["data"]["estimated_send_time"] == f"{year}-01-15T08:00:00Z"


async def test_past_send_at_is_queued_now(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/messages", json=message(scheduling={"send_at": "2020-01-01T00:00:00Z"})
    )
    data = response.json()["data"]
    assert data["status"] == "queued"
    assert data["estimated_send_time"] == data["queued_at"]


async def test_metadata_and_personalization_are_stored(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    message_id = await send(
        client,
        metadata={"user_id": "user-456", "source": "api", "nested": {"n": [1, 2]}},
        personalization={"enabled": True, "variables": {"first_name": "John"}},
    )
    data = (await client.get(f"/api/messages/{message_id}")).json()["data"]
    assert data["metadata"] == {"user_id": "user-456", "source": "api", "nested": {"n": [1, 2]}}
    assert data["user_id"] == "user-456"
    stored_row = await service.reader.run(
        lambda c: c.execute(messages.select().where(messages.c.id == message_id)).first()
    )
    assert stored_row is not None
    assert stored_row.personalization == {"enabled": True, "variables": {"first_name": "John"}}
    assert stored_row.source == "api"


async def test_queue_full(engine: Any, db_url: str, make_config: Any) -> None:
    service = RelayService(make_config(db_url, queue={"max_depth": 1}), engine)
    await service.start()
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
            assert (await c.post("/api/messages", json=message())).status_code == 202
            assert_envelope(await c.post("/api/messages", json=message()), 503, "QUEUE_FULL")
    finally:
        await service.close()


async def test_queue_full_counts_exactly_near_the_limit(
    engine: Any, db_url: str, make_config: Any
) -> None:
    # A recent count is trusted far from the limit; nearer, every send counts again.
    service = RelayService(make_config(db_url, queue={"max_depth": 10}), engine)
    await service.start()
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
            for _ in range(10):
                assert (await c.post("/api/messages", json=message())).status_code == 202
            assert_envelope(await c.post("/api/messages", json=message()), 503, "QUEUE_FULL")
    finally:
        await service.close()


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        # "$" also matches before a final newline: each of these used to pass its check.
        ({"headers": {"X-Tag\n": "v"}}, "headers.X-Tag\n"),
        ({"headers": {"Message-ID": "<a@example.org>\n"}}, "headers.Message-ID"),
        ({"workspace_id": "ws-a\n"}, "workspace_id"),
        # str.isdigit() takes "²", which int() refuses; 5000 digits are past int()'s limit.
        ({"headers": {"X-Retry-Count": "\N{SUPERSCRIPT TWO}"}}, "headers.X-Retry-Count"),
        ({"headers": {"X-Retry-Count": "7" * 5000}}, "headers.X-Retry-Count"),
        ({"headers": {"X-Retry-Count": "\N{ARABIC-INDIC DIGIT THREE}"}}, "headers.X-Retry-Count"),
    ],
)
async def test_values_that_only_pass_a_loose_check_are_refused(
    client: httpx.AsyncClient, service: RelayService, fields: dict[str, Any], where: str
) -> None:
    response = await client.post("/api/messages", json=message(**fields))
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"]["field"] == where, error
    with service.engine.connect() as conn:
        assert conn.execute(messages.select()).first() is None
