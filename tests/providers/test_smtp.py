"""The smtp provider against a real aiosmtpd sink on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.config import ConfigError
from daemon.core.message import Recipient
from daemon.core.retry import AUTH_ERROR, PERMANENT, SENT, TEMPORARY
from daemon.providers import OutboxProvider, SmtpProvider, build_providers
from daemon.providers.base import Envelope
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


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with Sink() as s:
        yield s


def provider(port: int, **kwargs: object) -> SmtpProvider:
    kwargs.setdefault("timeout", 5.0)
    return SmtpProvider("up", "127.0.0.1", port, local_hostname="relay.test", **kwargs)  # type: ignore[arg-type]


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


async def test_dsn_parameters_go_upstream_when_offered() -> None:
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
    async with Sink(dsn=True) as with_dsn, Sink() as without:
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
async def test_data_replies_are_classified(reply: str, outcome: str) -> None:
    async with Sink(data_reply=reply) as s:
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


async def test_sender_refused_is_classified() -> None:
    async with Sink(mail_reply="553 5.1.8 sender rejected") as s:
        p = provider(s.port)
        try:
            result = await p.send(envelope())
        finally:
            await p.close()
    assert (result.outcome, result.code) == (PERMANENT, 553)


async def test_partial_recipients() -> None:
    replies = {"gone@example.org": "550 5.1.1 no such user", "busy@example.org": "450 4.2.1 busy"}
    async with Sink(rcpt_replies=replies) as s:
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
async def test_every_recipient_refused(replies: dict[str, str], outcome: str) -> None:
    async with Sink(rcpt_replies=replies) as s:
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


async def test_wrong_password_is_auth_error() -> None:
    async with Sink(auth=("relay", "right")) as s:
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
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # never greets

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = provider(port, timeout=0.3)
    try:
        result = await p.send(envelope())
    finally:
        await p.close()
        server.close()
        await server.wait_closed()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
    assert result.outcome == TEMPORARY
    assert "Timeout" in result.reply or "timed out" in result.reply.lower()


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
    mode: str, cert: tuple[Path, Path], make_config: object
) -> None:
    context = server_tls_context(*cert)
    async with Sink(tls=context, implicit_tls=mode == "implicit") as s:
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


async def test_untrusted_certificate_is_temporary(cert: tuple[Path, Path]) -> None:
    async with Sink(tls=server_tls_context(*cert)) as s:
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
