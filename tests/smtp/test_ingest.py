"""DATA over real SMTP: durable acknowledgement, stored fields, content checks, store failures."""

from __future__ import annotations

import asyncio
import json
import smtplib
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.smtp.conftest import Dialog, SmtpRelay, StartRelay, in_thread

OpenDialog = Callable[..., Awaitable[Dialog]]
MESSAGE = (
    b"From: Sender <a@example.com>\r\n"
    b"To: b@example.org\r\n"
    b"Subject: Test Message\r\n"
    b"Date: Mon, 15 Jan 2024 10:00:00 -0500\r\n"
    b"Message-ID: <unique-id@example.com>\r\n"
    b"Content-Type: text/plain; charset=UTF-8\r\n"
    b"\r\n"
    b"This is the message body.\r\n"
)


def queued_id(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    assert text.startswith("2.0.0 Ok: queued as msg-"), text
    return text.rsplit(" ", 1)[1]


async def open_transaction(dialog: Dialog, *recipients: str) -> None:
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    for rcpt in recipients or ("b@example.org",):
        assert await dialog.cmd(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Ok"
    assert (await dialog.cmd("DATA")).startswith("354 ")


async def send_raw(dialog: Dialog, content: bytes) -> str:
    """Open a transaction and send ``content`` exactly as given (no CRLF fixing, no stuffing)."""
    await open_transaction(dialog)
    await dialog.send(content + b".\r\n")
    code, lines = await dialog.reply()
    return f"{code} {lines[-1]}"


async def test_250_only_once_the_message_is_committed(start_relay: StartRelay, db_url: str) -> None:
    relay = await start_relay(db_url)

    def session() -> tuple[str, Any, list[Any], bytes | None]:
        with relay.smtp() as client:
            client.ehlo()
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            code, reply = client.data(MESSAGE)
            assert code == 250
            message_id = queued_id(reply)
            # Read the store the moment the 250 arrives, from another connection.
            return (
                message_id,
                relay.message(message_id),
                relay.recipients(message_id),
                relay.raw(message_id),
            )

    message_id, row, recipients, raw = await in_thread(session)
    assert row is not None and row.id == message_id and row.status == "queued"
    assert [r.address for r in recipients] == ["b@example.org"]
    assert raw is not None and raw.endswith(MESSAGE)
    assert row.subject == "Test Message"
    assert row.from_header == "Sender <a@example.com>"
    assert row.to_addrs == ["b@example.org"]
    assert row.headers["Message-ID"] == "<unique-id@example.com>"
    assert row.source == "smtp" and row.mail_from == "a@example.com"


async def test_stored_bytes_are_the_accepted_bytes_plus_received(smtp_relay: SmtpRelay) -> None:
    content = MESSAGE + b".leading dot survives\r\n\xc3\xa9 8bit\r\n"

    def send() -> str:
        with smtp_relay.smtp() as client:
            client.ehlo()
            client.mail("a@example.com", ["BODY=8BITMIME"])
            client.rcpt("b@example.org")
            return queued_id(client.data(content)[1])

    message_id = await in_thread(send)
    raw = smtp_relay.raw(message_id)
    assert raw is not None
    trace, sep, rest = raw.partition(b"\r\n" + content[:5])
    assert sep and (content[:5] + rest) == content
    assert trace.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test (relayd)")
    assert f"with ESMTP id {message_id}\r\n\tfor <b@example.org>;".encode() in trace
    assert trace.count(b"\r\n") == 3  # a single, folded trace header and nothing else


async def test_many_recipients_make_one_message(start_relay: StartRelay, db_url: str) -> None:
    relay = await start_relay(db_url)
    recipients = ["b@example.org", "c@example.org", "hidden@example.net"]
    data = b"To: b@example.org\r\nCc: C <c@example.org>\r\nSubject: many\r\n\r\nhi\r\n"

    def send() -> str:
        with relay.smtp() as client:
            client.ehlo()
            client.mail("a@example.com")
            for rcpt in [*recipients, "B@example.org"]:  # a repeat is acknowledged, not doubled
                assert client.rcpt(rcpt)[0] == 250
            return queued_id(client.data(data)[1])

    message_id = await in_thread(send)
    assert relay.count() == 1
    assert [r.address for r in relay.recipients(message_id)] == recipients
    row = relay.message(message_id)
    assert (row.to_addrs, row.cc_addrs, row.bcc_addrs) == (
        ["b@example.org"],
        ["c@example.org"],
        ["hidden@example.net"],
    )


async def test_extended_headers_become_message_fields(smtp_relay: SmtpRelay) -> None:
    data = (
        b"Subject: fields\r\n"
        b"X-Workspace-ID: workspace-123\r\n"
        b"X-Campaign-ID: CAMP-2024-001\r\n"
        b"X-User-ID: USER-456\r\n"
        b"X-Priority: high\r\n"
        b"X-Retry-Count: 3\r\n"
        b'X-Metadata: {"source":"api","version":"2.0"}\r\n'
        b"X-Enable-Personalization: true\r\n"
        b"X-LLM-Model: gpt-4\r\n"
        b'X-Personalization-Context: {"tone":"professional","industry":"healthcare"}\r\n'
        b"\r\nbody\r\n"
    )

    def send() -> str:
        with smtp_relay.smtp() as client:
            client.ehlo()
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            return queued_id(client.data(data)[1])

    row = smtp_relay.message_row(await in_thread(send))
    assert (row.workspace_id, row.campaign_id, row.user_id) == (
        "workspace-123",
        "CAMP-2024-001",
        "USER-456",
    )
    assert (row.priority, row.max_retries) == (0, 3)
    assert row.metadata == {"source": "api", "version": "2.0"}
    assert row.personalization == {
        "enabled": True,
        "model": "gpt-4",
        "context": {"tone": "professional", "industry": "healthcare"},
    }


async def test_dsn_parameters_are_stored(smtp_relay: SmtpRelay) -> None:
    def send() -> str:
        with smtp_relay.smtp() as client:
            client.ehlo()
            assert client.has_extn("dsn")
            assert client.mail("", ["RET=HDRS", "ENVID=QQ+2B314"])[0] == 250
            client.rcpt("b@example.org", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;b+40example.org"])
            client.rcpt("c@example.org", ["NOTIFY=NEVER"])
            client.rcpt("d@example.org")
            return queued_id(client.data(b"Subject: dsn\r\n\r\nx\r\n")[1])

    message_id = await in_thread(send)
    row = smtp_relay.message_row(message_id)
    assert (row.mail_from, row.dsn_ret, row.dsn_envid) == ("", "HDRS", "QQ+314")
    assert [(r.address, r.notify, r.orcpt) for r in smtp_relay.recipients(message_id)] == [
        ("b@example.org", "SUCCESS,DELAY", "rfc822;b@example.org"),
        ("c@example.org", "NEVER", None),
        ("d@example.org", None, None),
    ]


async def test_invalid_x_metadata_is_550_with_a_reason(smtp_relay: SmtpRelay) -> None:
    def send() -> None:
        with smtp_relay.smtp() as client:
            client.sendmail("a@example.com", ["b@example.org"], b"X-Metadata: {oops\r\n\r\nx\r\n")

    with pytest.raises(smtplib.SMTPDataError) as info:
        await in_thread(send)
    assert info.value.smtp_code == 550
    reply = cast(bytes, info.value.smtp_error)  # smtplib keeps it as bytes (typeshed: bytes | str)
    assert reply.startswith(b"5.6.0 Invalid X-Metadata header: not JSON")
    assert smtp_relay.count() == 0


BARE = [
    b"Subject: lf\r\n\r\nbare\nline feed\r\n",
    b"Subject: cr\r\n\r\nbare\rcarriage return\r\n",
    # The smuggling shape of CVE-2023-51764: an end-of-data that is not CRLF.CRLF.
    b"Subject: smuggle\r\n\r\nx\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.org>\r\n",
]


@pytest.mark.parametrize("content", BARE)
async def test_bare_newlines_are_refused(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog, content: bytes
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    reply = await send_raw(dialog, content)
    assert reply.startswith("550 5.6.0 Message contains a bare CR or LF")
    assert smtp_relay.count() == 0
    # Whatever followed the bare LF was data, not commands: the session is simply ready again.
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "503 5.5.1 Error: need MAIL command"


async def test_bare_newlines_normalized_when_configured(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    relay = await start_relay(smtp={"bare_newline": "normalize"})
    dialog = await dialog_factory(relay.port)
    reply = await send_raw(dialog, b"Subject: lf\n\nline one\nline two\r\n")
    raw = relay.raw(queued_id(reply[4:]))
    assert raw is not None and raw.endswith(b"\r\nSubject: lf\r\n\r\nline one\r\nline two\r\n")
    assert relay.message(queued_id(reply[4:])).subject == "lf"


async def test_nul_is_refused(smtp_relay: SmtpRelay, dialog_factory: OpenDialog) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    reply = await send_raw(dialog, b"Subject: nul\r\n\r\nnul \x00 byte\r\n")
    assert reply == "550 5.6.0 Message contains NUL characters"
    assert smtp_relay.count() == 0


@pytest.mark.parametrize("length", [999, 1200, 5000])
async def test_lines_over_1000_octets_are_500(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog, length: int
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    reply = await send_raw(dialog, b"Subject: long\r\n\r\n" + b"x" * length + b"\r\n")
    assert reply.startswith("500 5.5.2 Line too long")
    assert smtp_relay.count() == 0


async def test_line_of_exactly_1000_octets_is_accepted(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    # 998 octets + CRLF, and a dot-stuffed one (the stuffing dot does not count).
    content = b"Subject: edge\r\n\r\n" + b"x" * 998 + b"\r\n" + b".." + b"y" * 997 + b"\r\n"
    reply = await send_raw(dialog, content)
    raw = smtp_relay.raw(queued_id(reply[4:]))
    assert raw is not None and raw.endswith(b"x" * 998 + b"\r\n." + b"y" * 997 + b"\r\n")


async def test_451_when_the_database_cannot_take_the_message(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog
) -> None:
    with smtp_relay.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE message_recipients RENAME TO message_recipients_gone"))
    dialog = await dialog_factory(smtp_relay.port)
    reply = await send_raw(dialog, MESSAGE)
    assert reply == "451 4.3.0 Local error in processing, try again later"
    with smtp_relay.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE message_recipients_gone RENAME TO message_recipients"))
    assert smtp_relay.count() == 0
    # The same session recovers once the store does.
    assert (await send_raw(dialog, MESSAGE)).startswith("250 2.0.0 Ok: queued as msg-")


async def test_452_when_the_disk_is_full(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    full = {"on": False}

    def cap_database_size(engine: Engine) -> None:
        # max_page_count is per connection and clamps to the current size: any growth fails
        # with SQLITE_FULL, exactly as on a full disk.
        @event.listens_for(engine, "checkout")
        def _cap(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA max_page_count = {1 if full['on'] else 1073741823}")
            cursor.close()

    relay = await start_relay(engine_hook=cap_database_size)
    full["on"] = True
    dialog = await dialog_factory(relay.port)
    big = MESSAGE + (b"z" * 76 + b"\r\n") * 2000
    assert await send_raw(dialog, big) == "452 4.3.1 Insufficient system storage, try again later"
    full["on"] = False
    assert relay.count() == 0
    assert (await send_raw(dialog, big)).startswith("250 2.0.0 Ok: queued as msg-")


async def test_421_when_shutting_down(smtp_relay: SmtpRelay, dialog_factory: OpenDialog) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    await open_transaction(dialog)
    smtp_relay.service.accepting = False
    await dialog.send(MESSAGE + b".\r\n")
    assert await dialog.reply() == (421, ["4.3.2 Service shutting down, try again later"])
    assert await dialog.reader.read() == b""  # and the connection is closed
    assert smtp_relay.count() == 0

    late = await dialog_factory(smtp_relay.port)
    assert (await late.cmd("EHLO client.test")).startswith("250 ")
    assert await late.cmd("MAIL FROM:<a@example.com>") == (
        "421 4.3.2 Service shutting down, try again later"
    )


async def test_metadata_round_trips_as_json(smtp_relay: SmtpRelay) -> None:
    metadata = {"nested": {"list": [1, 2.5, None, True]}, "text": "äö"}
    header = b"X-Metadata: " + json.dumps(metadata).encode() + b"\r\n"

    def send() -> str:
        with smtp_relay.smtp() as client:
            client.ehlo()
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            return queued_id(client.data(header + b"Subject: m\r\n\r\nx\r\n")[1])

    assert smtp_relay.message(await in_thread(send)).metadata == metadata


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
async def test_data_split_anywhere_reads_the_same(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog, step: int
) -> None:
    # The DATA reader takes whatever the socket gives: segment boundaries inside CRLF,
    # inside the final ".\r\n" or after the dot must change nothing, and a command
    # pipelined behind the dot is still a command.
    wire = (
        b"Subject: split\r\n\r\n..stuffed\r\n..\r\n x\r\n"
        + b"y" * 997
        + b"\r\n..z\r\n.\r\nNOOP\r\n"
    )
    dialog = await dialog_factory(smtp_relay.port)
    await open_transaction(dialog)
    for start in range(0, len(wire), step):
        await dialog.send(wire[start : start + step])
        await asyncio.sleep(0)
    code, lines = await dialog.reply()
    assert code == 250, lines
    assert await dialog.reply() == (250, ["2.0.0 Ok"])
    raw = smtp_relay.raw(queued_id(lines[-1]))
    expected = b"Subject: split\r\n\r\n.stuffed\r\n.\r\n x\r\n" + b"y" * 997 + b"\r\n.z\r\n"
    assert raw is not None and raw.endswith(expected)


async def test_empty_message_split_at_the_dot(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    await open_transaction(dialog)
    for part in (b".", b"\r", b"\n"):
        await dialog.send(part)
        await asyncio.sleep(0.01)
    code, lines = await dialog.reply()
    assert code == 250, lines
    raw = smtp_relay.raw(queued_id(lines[-1]))
    assert raw is not None and raw.endswith(b"\r\n")
