"""STARTTLS on the submission port, implicit TLS on the SMTPS port, and CVE-2024-34083."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

from tests.smtp.conftest import HOST, Dialog, SmtpRelay, in_thread

OpenDialog = Callable[..., Awaitable[Dialog]]


async def read_reply(reader: asyncio.StreamReader) -> list[bytes]:
    lines: list[bytes] = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line.endswith(b"\r\n"), lines
        lines.append(line)
        if line[3:4] == b" ":
            return lines


async def test_commands_pipelined_with_starttls_are_discarded(smtp_relay: SmtpRelay) -> None:
    """CVE-2024-34083: plaintext sent after STARTTLS must never run inside the TLS session.

    aiosmtpd's fix clears a private asyncio buffer, so a change in asyncio could undo it.
    """
    reader, writer = await asyncio.open_connection(HOST, smtp_relay.port)
    try:
        assert (await read_reply(reader))[0].startswith(b"220 ")
        writer.write(b"EHLO x\r\nSTARTTLS\r\nNOOP\r\n")  # one packet
        await writer.drain()
        assert (await read_reply(reader))[0].startswith(b"250-")
        assert await read_reply(reader) == [b"220 2.0.0 Ready to start TLS\r\n"]
        # Had the NOOP been answered in plaintext, this handshake would fail.
        await writer.start_tls(smtp_relay.client_context(), server_hostname=HOST)
        writer.write(b"EHLO after\r\n")
        await writer.drain()
        # Had the NOOP been kept and run after the handshake, its "250 2.0.0 Ok" would come first.
        first = await read_reply(reader)
        assert first[0] == b"250-relay.test Hello after\r\n"
        assert b"250-AUTH PLAIN LOGIN\r\n" in first
        writer.write(b"NOOP\r\n")
        await writer.drain()
        assert await read_reply(reader) == [b"250 2.0.0 Ok\r\n"]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_starttls_with_the_generated_certificate(smtp_relay: SmtpRelay) -> None:
    def session() -> tuple[dict[str, str], dict[str, str], str]:
        with smtp_relay.smtp() as client:
            client.ehlo()
            before = dict(client.esmtp_features)
            code, _ = client.starttls(context=smtp_relay.client_context())
            assert code == 220
            client.ehlo()
            after = dict(client.esmtp_features)
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            code, reply = client.data(b"Subject: tls\r\n\r\nover starttls\r\n")
            assert code == 250
            return before, after, reply.decode().rsplit(" ", 1)[1]

    before, after, message_id = await in_thread(session)
    assert "starttls" in before and "auth" not in before
    assert "starttls" not in after and after["auth"].split() == ["PLAIN", "LOGIN"]
    raw = smtp_relay.raw(message_id)
    assert raw is not None and f"with ESMTPS id {message_id}".encode() in raw


async def test_generated_certificate_names_host_and_loopback(smtp_relay: SmtpRelay) -> None:
    # The client context verifies the chain and the name; these all must pass.
    for server_hostname in ("relay.test", "localhost", "127.0.0.1"):
        reader, writer = await asyncio.open_connection(
            HOST,
            smtp_relay.tls_port,
            ssl=smtp_relay.client_context(),
            server_hostname=server_hostname,
        )
        try:
            assert (await read_reply(reader))[0].startswith(b"220 relay.test ")
        finally:
            writer.close()
            await writer.wait_closed()


async def test_implicit_tls_port(smtp_relay: SmtpRelay) -> None:
    def session() -> tuple[dict[str, str], str]:
        with smtp_relay.smtps() as client:
            client.ehlo()
            features = dict(client.esmtp_features)
            client.login("workspace-1", "test-admin-token")
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            code, reply = client.data(b"Subject: smtps\r\n\r\nover implicit TLS\r\n")
            assert code == 250
            return features, reply.decode().rsplit(" ", 1)[1]

    features, message_id = await in_thread(session)
    assert "starttls" not in features
    assert features["auth"].split() == ["PLAIN", "LOGIN"]
    assert features["size"] == "26214400" and "dsn" in features
    raw = smtp_relay.raw(message_id)
    assert raw is not None and f"with ESMTPSA id {message_id}".encode() in raw


async def test_starttls_twice_is_refused(smtp_relay: SmtpRelay, dialog_factory: OpenDialog) -> None:
    dialog = await dialog_factory(smtp_relay.tls_port, smtp_relay.client_context())
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd("STARTTLS") == "554 5.5.1 Error: TLS already active"
    assert await dialog.cmd("NOOP") == "250 2.0.0 Ok"


async def test_plaintext_client_on_the_tls_port_is_dropped(smtp_relay: SmtpRelay) -> None:
    reader, writer = await asyncio.open_connection(HOST, smtp_relay.tls_port)
    try:
        writer.write(b"EHLO plain\r\n")
        await writer.drain()
        # No SMTP reply ever comes in plaintext; the TLS layer gives up on the garbage.
        data = await asyncio.wait_for(reader.read(100), 10)
        assert not data.startswith(b"2")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_untrusted_certificate_is_rejected_by_a_verifying_client(
    smtp_relay: SmtpRelay,
) -> None:
    def connect() -> None:
        with smtp_relay.smtp() as client:
            client.starttls(context=ssl.create_default_context())

    try:
        await in_thread(connect)
    except ssl.SSLCertVerificationError:
        return
    raise AssertionError("a self-signed certificate passed default verification")


async def test_failed_starttls_handshake_closes_only_that_session(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog
) -> None:
    reader, writer = await asyncio.open_connection(HOST, smtp_relay.port)
    try:
        await read_reply(reader)
        writer.write(b"EHLO x\r\n")
        await read_reply(reader)
        writer.write(b"STARTTLS\r\n")
        assert await read_reply(reader) == [b"220 2.0.0 Ready to start TLS\r\n"]
        writer.write(b"this is not a TLS client hello\r\n" * 4)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        await writer.wait_closed()
    dialog = await dialog_factory(smtp_relay.port)
    assert await dialog.cmd("NOOP") == "250 2.0.0 Ok"
