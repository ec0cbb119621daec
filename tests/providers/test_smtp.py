"""The smtp provider against a real aiosmtpd sink on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.config import ConfigError
from daemon.core.message import Recipient
from daemon.core.retry import AUTH_ERROR, PERMANENT, SENT, TEMPORARY
from daemon.providers import OutboxProvider, SmtpProvider, build_providers
from daemon.providers.base import Envelope
from daemon.providers.smtp import data_payload, quoted_address
from tests.delivery.upstream import Upstream
from tests.sink import Sink, server_tls_context, write_self_signed

RAW = (
    b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n"
    b"Message-ID: <1@example.com>\r\n\r\nhello\r\n"
)


def envelope(*rcpts: str, raw: bytes = RAW, mail_from: str = "a@example.com") -> Envelope:
    return Envelope(
        id="msg-TEST",
        mail_from=mail_from,
        recipients=[Recipient(r) for r in rcpts or ("b@example.org",)],
        raw=raw,
    )


@pytest.fixture(params=[True, False], ids=["pipelining", "lockstep"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    """Every sink here runs with and without PIPELINING: both client paths see each case."""
    return bool(request.param)


@pytest.fixture
async def sink(pipelining: bool) -> AsyncIterator[Sink]:
    async with Sink(pipelining=pipelining) as s:
        yield s


def provider(port: int, **kwargs: object) -> SmtpProvider:
    kwargs.setdefault("timeout", 5.0)
    return SmtpProvider("up", "127.0.0.1", port, local_hostname="relay.test", **kwargs)  # type: ignore[arg-type]


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(serve: Script, **options: object) -> AsyncIterator[SmtpProvider]:
    """A provider pointed at a scripted server on 127.0.0.1; both are closed afterwards."""
    writers: list[asyncio.StreamWriter] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await serve(reader, writer)

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    p = provider(server.sockets[0].getsockname()[1], **options)
    try:
        yield p
    finally:
        await p.close()
        server.close()
        await server.wait_closed()
        for writer in writers:
            writer.close()
            await writer.wait_closed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_delivers_the_exact_bytes(sink: Sink) -> None:
    p = provider(sink.port)
    try:
        result = await p.send(envelope("b@example.org", "c@example.org"))
    finally:
        await p.close()
    assert result.outcome == SENT
    assert result.code == 250
    assert result.provider_message_id == "SINK1"
    assert [r.outcome for r in result.recipients] == [SENT, SENT]
    (msg,) = sink.messages
    assert msg.mail_from == "a@example.com"
    assert msg.rcpt_tos == ["b@example.org", "c@example.org"]
    assert msg.data == RAW


async def test_dot_lines_survive_the_round_trip(sink: Sink) -> None:
    raw = (
        b"From: a@example.com\r\nSubject: dots\r\n\r\n"
        b"first\r\n.\r\n.leading dot\r\n..two dots\r\n. space\r\nQUIT\r\n.\r\nlast\r\n"
    )
    p = provider(sink.port)
    try:
        first = await p.send(envelope(raw=raw))
        # A premature end of DATA would have turned the rest into commands and
        # broken this second transaction on the same connection.
        second = await p.send(envelope(raw=RAW))
    finally:
        await p.close()
    assert (first.outcome, second.outcome) == (SENT, SENT)
    assert [m.data for m in sink.messages] == [raw, RAW]
    assert sink.connections == 1


async def test_dsn_parameters_go_upstream_when_offered(pipelining: bool) -> None:
    env = Envelope(
        id="msg-TEST",
        mail_from="a@example.com",
        recipients=[
            Recipient("b@example.org", "SUCCESS,FAILURE", "rfc822;B+X=Y@EXAMPLE.ORG"),
            Recipient("c@example.org"),
        ],
        raw=RAW,
        dsn_ret="HDRS",
        dsn_envid="ENV 1+2",
    )
    async with (
        Sink(pipelining=pipelining, dsn=True) as with_dsn,
        Sink(pipelining=pipelining) as without,
    ):
        for s in (with_dsn, without):
            p = provider(s.port)
            try:
                result = await p.send(env)
            finally:
                await p.close()
            assert result.outcome == SENT
            assert result.dsn_relayed is s.dsn
    (relayed,) = with_dsn.messages
    assert "RET=HDRS" in relayed.mail_options
    assert "ENVID=ENV+201+2B2" in relayed.mail_options  # xtext on the wire
    assert relayed.rcpt_options == [
        ["NOTIFY=SUCCESS,FAILURE", "ORCPT=RFC822;B+2BX+3DY@EXAMPLE.ORG"],
        [],
    ]
    (plain,) = without.messages
    assert not any(o.startswith(("RET", "ENVID")) for o in plain.mail_options)


async def test_null_sender_for_bounces(sink: Sink) -> None:
    p = provider(sink.port)
    try:
        result = await p.send(envelope(mail_from=""))
    finally:
        await p.close()
    assert result.outcome == SENT
    assert sink.messages[0].mail_from == "<>"  # aiosmtpd reports the null sender so


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("451 4.3.0 try again later", TEMPORARY),
        ("452 4.3.1 out of space", TEMPORARY),
        ("554 5.6.0 message rejected", PERMANENT),
        ("550 5.7.1 policy", PERMANENT),
    ],
)
async def test_data_replies_are_classified(pipelining: bool, reply: str, outcome: str) -> None:
    async with Sink(pipelining=pipelining, data_reply=reply) as s:
        p = provider(s.port)
        try:
            result = await p.send(envelope("b@example.org", "c@example.org"))
        finally:
            await p.close()
    assert result.outcome == outcome
    assert result.code == int(reply[:3])
    assert reply[4:] in result.reply
    assert {r.outcome for r in result.recipients} == {outcome}
    assert s.messages == []


async def test_sender_refused_is_classified(pipelining: bool) -> None:
    async with Sink(pipelining=pipelining, mail_reply="553 5.1.8 sender rejected") as s:
        p = provider(s.port)
        try:
            result = await p.send(envelope())
        finally:
            await p.close()
    assert (result.outcome, result.code) == (PERMANENT, 553)


async def test_partial_recipients(pipelining: bool) -> None:
    replies = {"gone@example.org": "550 5.1.1 no such user", "busy@example.org": "450 4.2.1 busy"}
    async with Sink(pipelining=pipelining, rcpt_replies=replies) as s:
        p = provider(s.port)
        try:
            result = await p.send(
                envelope("ok@example.org", "gone@example.org", "busy@example.org")
            )
        finally:
            await p.close()
    assert result.outcome == SENT
    by = {r.address: r for r in result.recipients}
    assert by["ok@example.org"].outcome == SENT
    assert (by["gone@example.org"].outcome, by["gone@example.org"].code) == (PERMANENT, 550)
    assert "5.1.1 no such user" in by["gone@example.org"].reply
    assert (by["busy@example.org"].outcome, by["busy@example.org"].code) == (TEMPORARY, 450)
    assert [m.rcpt_tos for m in s.messages] == [["ok@example.org"]]


@pytest.mark.parametrize(
    ("replies", "outcome"),
    [
        ({"x@example.org": "550 5.1.1 no", "y@example.org": "551 5.1.6 moved"}, PERMANENT),
        ({"x@example.org": "550 5.1.1 no", "y@example.org": "452 4.5.3 too many"}, TEMPORARY),
    ],
)
async def test_every_recipient_refused(
    pipelining: bool, replies: dict[str, str], outcome: str
) -> None:
    async with Sink(pipelining=pipelining, rcpt_replies=replies) as s:
        p = provider(s.port)
        try:
            result = await p.send(envelope("x@example.org", "y@example.org"))
            # The session was reset and still carries the next message.
            s.rcpt_replies.clear()
            again = await p.send(envelope("x@example.org"))
        finally:
            await p.close()
    assert result.outcome == outcome
    assert again.outcome == SENT
    assert s.connections == 1


async def test_wrong_password_is_auth_error(pipelining: bool) -> None:
    async with Sink(pipelining=pipelining, auth=("relay", "right")) as s:
        bad = provider(s.port, username="relay", password="wrong")
        good = provider(s.port, username="relay", password="right")
        try:
            refused = await bad.send(envelope())
            accepted = await good.send(envelope())
        finally:
            await bad.close()
            await good.close()
    assert (refused.outcome, refused.code) == (AUTH_ERROR, 535)
    assert accepted.outcome == SENT
    assert len(s.messages) == 1


async def test_connection_refused_is_temporary() -> None:
    p = provider(closed_port())
    try:
        result = await p.send(envelope())
        health = await p.check()
    finally:
        await p.close()
    assert result.outcome == TEMPORARY
    assert result.code is None
    assert "connect" in result.reply.lower()
    assert not health.healthy


async def test_silent_server_times_out_as_temporary() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass  # never greets

    async with scripted(silent, timeout=0.3) as p:
        result = await p.send(envelope())
    assert result.outcome == TEMPORARY
    assert "Timeout" in result.reply or "timed out" in result.reply.lower()


@pytest.mark.parametrize(
    "raw",
    [
        RAW,
        b"",
        b".",
        b"no line end",
        b".lead\r\n.\r\n..\r\nmid.dle\r\n",
        b"bare\nlf\n.dot after lf\n",
        b"bare\rcr\r.dot after cr\r",
        b"mixed\r\nends\n\r\r\n\r",
        b"\r\n.\r\n",
    ],
)
def test_data_payload_is_what_aiosmtplib_sends(raw: bytes) -> None:
    """CRLF line ends and dot-stuffing only, as aiosmtplib's own DATA; a CRLF message is kept."""
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw)) + b".\r\n"
    assert data_payload(raw) == expected
    body = data_payload(raw)[:-3]
    assert b"\r\n.\r\n" not in b"\r\n" + body  # no lone-dot line before the end


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com",
        "first.last+tag@sub.example.org",
        "o'neil/x=y{z}|~^`#$%&*!?@example.org",
        "",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a@example.com.",
        "Name <a@example.com>",
        '"quoted local"@example.com',
        "a@[192.0.2.1]",
        "no-at-sign",
        "a@b@c",
        "a@example.com (comment)",
    ],
)
def test_addresses_are_quoted_as_aiosmtplib_quotes_them(address: str) -> None:
    from aiosmtplib.email import quote_address

    try:
        expected = quote_address(address)
    except ValueError:
        with pytest.raises(ValueError):
            quoted_address(address)
    else:
        assert quoted_address(address) == expected


async def test_pipelined_group_goes_out_before_any_reply() -> None:
    """MAIL, every RCPT and DATA leave together; replies are paired in order however they arrive.

    The server below reads up to DATA before it answers anything, so a client
    that waited for the MAIL reply would hang. It answers once in one write and
    once a byte at a time (a multi-line RCPT reply split anywhere).
    """
    groups: list[bytes] = []
    bodies: list[bytes] = []
    replies = (
        b"250 2.1.0 sender ok\r\n250-2.1.5 first line\r\n250 2.1.5 ok\r\n"
        b"550 5.1.1 no such user\r\n354 go ahead\r\n"
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
        for n, split in enumerate((False, True), start=1):
            groups.append(await reader.readuntil(b"DATA\r\n"))
            if split:
                for i in range(len(replies)):
                    writer.write(replies[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(replies)
            bodies.append(await reader.readuntil(b"\r\n.\r\n"))
            writer.write(b"250 2.0.0 Ok: queued as Q%d\r\n" % n)
        if await reader.readline() == b"QUIT\r\n":
            writer.write(b"221 2.0.0 bye\r\n")
        writer.close()

    raw = b"Subject: dots\r\n\r\n.\r\n.leading\r\nend\r\n"
    async with scripted(serve) as p:
        results = [await p.send(envelope("b@example.org", "c@example.org", raw=raw)) for _ in "12"]
    group = (
        b"MAIL FROM:<a@example.com> SIZE=%d\r\nRCPT TO:<b@example.org>\r\n"
        b"RCPT TO:<c@example.org>\r\nDATA\r\n" % len(raw)
    )
    assert groups == [group, group]
    assert bodies == [b"Subject: dots\r\n\r\n..\r\n..leading\r\nend\r\n.\r\n"] * 2
    assert p.connections_opened == 1
    for n, result in enumerate(results, start=1):
        assert (result.outcome, result.provider_message_id) == (SENT, f"Q{n}")
        sent, refused = result.recipients
        assert (sent.outcome, sent.reply) == (SENT, f"250 2.0.0 Ok: queued as Q{n}")
        assert (refused.outcome, refused.code, refused.reply) == (
            PERMANENT,
            550,
            "550 5.1.1 no such user",
        )


async def test_pipelined_and_lockstep_read_replies_alike(pipelining: bool) -> None:
    """Multi-line and odd replies give the same result with and without PIPELINING."""
    rcpt_replies = {
        b"<odd@example.org>": b"550-\r\n550-5.1.1 first\r\n550-\r\n550 5.1.1 last \r\n",
        b"<ok@example.org>": b"250 2.1.5 ok\r\n",
        b"<busy@example.org>": b"452-4.5.3 too\n452 4.5.3 many\r\n",
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                extra = b"250-PIPELINING\r\n" if pipelining else b""
                writer.write(b"250-scripted\r\n" + extra + b"250 8BITMIME\r\n")
            elif verb == b"MAIL":
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                writer.write(rcpt_replies[line[8:].strip()])
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                writer.write(b"250-first\r\n250-\r\n250 2.0.0 Ok: queued as <Q1>\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
        writer.close()

    async with scripted(serve) as p:
        result = await p.send(envelope("odd@example.org", "ok@example.org", "busy@example.org"))
    assert result.outcome == SENT, result
    assert result.provider_message_id == "Q1"
    assert result.reply == "250 first\n\n2.0.0 Ok: queued as <Q1>"
    odd, ok, busy = result.recipients
    assert (odd.outcome, odd.reply) == (PERMANENT, "550 5.1.1 first\n\n5.1.1 last")
    assert (ok.outcome, ok.reply) == (SENT, result.reply)
    assert (busy.outcome, busy.reply) == (TEMPORARY, "452 4.5.3 too\n4.5.3 many")


async def test_pipelined_reply_that_never_comes_times_out() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-scripted\r\n250 PIPELINING\r\n")
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 2.1.0 sender ok\r\n")  # and nothing for RCPT or DATA

    async with scripted(stall, timeout=0.3) as p:
        result = await p.send(envelope())
        assert p.idle_connections == 0  # the timed-out session is dropped, not pooled
    assert result.outcome == TEMPORARY
    assert result.reply == "SMTPReadTimeoutError: Timed out waiting for server response"


async def test_connection_reuse_and_pool_bound(sink: Sink) -> None:
    p = provider(sink.port, max_connections=3)
    try:
        for _ in range(4):
            assert (await p.send(envelope())).outcome == SENT
        assert sink.connections == 1
        results = await asyncio.gather(*(p.send(envelope()) for _ in range(30)))
    finally:
        await p.close()
    assert {r.outcome for r in results} == {SENT}
    assert len(sink.messages) == 34
    assert sink.connections <= 3
    assert p.connections_opened == sink.connections


async def test_reconnects_after_the_server_drops_the_session(sink: Sink) -> None:
    p = provider(sink.port)
    try:
        assert (await p.send(envelope())).outcome == SENT
        for proto in sink._protocols:
            assert proto.transport is not None
            proto.transport.close()
        await asyncio.sleep(0.05)
        result = await p.send(envelope())
    finally:
        await p.close()
    assert result.outcome == SENT
    assert sink.connections == 2
    assert len(sink.messages) == 2


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return write_self_signed(tmp_path / "tls")


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_modes_from_config(
    pipelining: bool, mode: str, cert: tuple[Path, Path], make_config: object
) -> None:
    context = server_tls_context(*cert)
    async with Sink(pipelining=pipelining, tls=context, implicit_tls=mode == "implicit") as s:
        config = make_config(  # type: ignore[operator]
            providers={
                "up": {
                    "type": "smtp",
                    "host": "127.0.0.1",
                    "port": s.port,
                    "tls": mode,
                    "ca_file": str(cert[0]),
                    "timeout": "5s",
                }
            }
        )
        providers = build_providers(config)
        p = providers["up"]
        try:
            result = await p.send(envelope())
            health = await p.check()
        finally:
            await p.close()
    assert result.outcome == SENT
    assert health.healthy
    assert s.messages[0].data == RAW


async def test_untrusted_certificate_is_temporary(
    pipelining: bool, cert: tuple[Path, Path]
) -> None:
    async with Sink(pipelining=pipelining, tls=server_tls_context(*cert)) as s:
        p = provider(s.port, tls="starttls", tls_context=ssl.create_default_context())
        try:
            result = await p.send(envelope())
        finally:
            await p.close()
    assert result.outcome == TEMPORARY
    assert "certificate" in result.reply.lower()
    assert s.messages == []


async def test_starttls_required_but_not_offered(sink: Sink) -> None:
    p = provider(sink.port, tls="starttls")
    try:
        result = await p.send(envelope())
    finally:
        await p.close()
    assert result.outcome == TEMPORARY
    assert "STARTTLS" in result.reply
    assert sink.messages == []


def test_build_providers(make_config: object, tmp_path: Path) -> None:
    config = make_config(  # type: ignore[operator]
        providers={
            "outbox": {"type": "outbox", "path": str(tmp_path / "out")},
            "up": {"type": "smtp", "host": "127.0.0.1", "port": 2525},
        }
    )
    built = build_providers(config)
    assert isinstance(built["outbox"], OutboxProvider)
    assert isinstance(built["up"], SmtpProvider)
    assert built["up"].tls == "none"
    assert built["up"].local_hostname == "relay.test"


@pytest.mark.parametrize(
    ("ptype", "missing"),
    [("mailgun", "domain"), ("sendgrid", "api_key"), ("gmail", "service_account_file")],
)
def test_incomplete_provider_settings_are_config_errors(
    ptype: str, missing: str, make_config: object
) -> None:
    options = {"mailgun": {"api_key": "k"}, "sendgrid": {}, "gmail": {}}[ptype]
    config = make_config(  # type: ignore[operator]
        providers={"later": {"type": ptype, **options}}
    )
    with pytest.raises(ConfigError) as info:
        build_providers(config)
    assert info.value.key == f"providers.later.{missing}"


BYE = "421 4.3.2 shutting down, bye"


async def test_a_421_mid_transaction_keeps_its_text_and_the_earlier_refusals(
    pipelining: bool,
) -> None:
    """An upstream going away in the middle of a transaction (421, then it hangs up), at a
    RCPT, instead of DATA's 354 or after the message: the recipient it had refused for good
    keeps its 5xx; every other one, accepted or not reached, is deferred with the 421's own
    text (not "Connection lost")."""
    wheres: dict[str, dict[str, Any]] = {
        "rcpt": {"rcpt_replies": {"c@example.org": BYE}},
        "data start": {"data_start": BYE},
        "data end": {"data_reply": BYE},
    }
    for where, options in wheres.items():
        options.setdefault("rcpt_replies", {})["gone@example.org"] = "550 5.1.1 no such user"
        async with Upstream(pipelining=pipelining, **options) as s:
            p = provider(s.port)
            try:
                result = await p.send(
                    envelope("b@example.org", "gone@example.org", "c@example.org", "d@example.org")
                )
                assert p.idle_connections == 0, where  # the session is gone, not pooled
                s.rcpt_replies.clear()
                s.data_start = s.data_reply = None
                again = await p.send(envelope("b@example.org"))  # a fresh session works
            finally:
                await p.close()
        assert (result.outcome, result.code, result.reply) == (TEMPORARY, 421, BYE), where
        by = {r.address: (r.outcome, r.code, r.reply) for r in result.recipients}
        assert by == {
            "b@example.org": (TEMPORARY, 421, BYE),
            "gone@example.org": (PERMANENT, 550, "550 5.1.1 no such user"),
            "c@example.org": (TEMPORARY, 421, BYE),
            "d@example.org": (TEMPORARY, 421, BYE),
        }, where
        assert again.outcome == SENT, where
        assert [m.rcpt_tos for m in s.messages] == [["b@example.org"]], where


async def test_a_connection_lost_after_a_refusal_keeps_the_refusal(pipelining: bool) -> None:
    """The upstream hangs up without a word in the middle of the RCPTs: the recipient it
    had refused for good stays refused; the others are deferred with the lost connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        await reader.readline()
        extra = b"250-PIPELINING\r\n" if pipelining else b""
        writer.write(b"250-scripted\r\n" + extra + b"250 8BITMIME\r\n")
        await reader.readline()  # MAIL
        writer.write(b"250 2.1.0 ok\r\n")
        await reader.readline()  # RCPT gone@
        writer.write(b"550 5.1.1 no such user\r\n")
        await reader.readline()  # RCPT b@
        writer.close()

    async with scripted(serve) as p:
        result = await p.send(envelope("gone@example.org", "b@example.org"))
    gone, b = result.recipients
    assert (gone.outcome, gone.code, gone.reply) == (PERMANENT, 550, "550 5.1.1 no such user")
    assert (b.outcome, b.code) == (TEMPORARY, None)
    assert b.reply.startswith("SMTPServerDisconnected")
    assert (result.outcome, result.reply) == (TEMPORARY, b.reply)
