"""Protocol-level replies of the SMTP subclass, read off the wire."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tests.smtp.conftest import Dialog, SmtpRelay, StartRelay

OpenDialog = Callable[..., Awaitable[Dialog]]


async def ehlo(dialog: Dialog, name: str = "client.test") -> list[str]:
    await dialog.send(f"EHLO {name}\r\n".encode())
    code, lines = await dialog.reply()
    assert code == 250
    return lines


async def test_ehlo_keywords_before_tls(smtp_relay: SmtpRelay, dialog_factory: OpenDialog) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    assert await ehlo(dialog) == [
        "relay.test Hello client.test",
        "SIZE 26214400",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "DSN",
    ]


async def test_greeting_names_host_without_versions(smtp_relay: SmtpRelay) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", smtp_relay.port)
    try:
        assert await reader.readline() == b"220 relay.test ESMTP relayd\r\n"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_size_follows_max_size(start_relay: StartRelay, dialog_factory: OpenDialog) -> None:
    relay = await start_relay(smtp={"max_size": 1000})
    dialog = await dialog_factory(relay.port)
    assert "SIZE 1000" in await ehlo(dialog)


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("NOOP", "250 2.0.0 Ok"),
        ("RSET", "250 2.0.0 Ok"),
        ("FOO bar", '500 5.5.2 Error: command "FOO" not recognized'),
        ("EXPN staff", "502 5.5.1 EXPN not implemented"),
        ("RCPT TO:<b@example.org>", "503 5.5.1 Error: need MAIL command"),
        ("DATA", "503 5.5.1 Error: need RCPT command"),
        ("MAIL TO:<a@example.com>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        ("MAIL FROM:<a@example.com", "501 5.1.7 Bad sender address syntax"),
        ("MAIL FROM:<a@example.com> SIZE=lots", "501 5.5.4 SIZE takes a number of octets"),
        (
            "MAIL FROM:<a@example.com> SIZE=26214401",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        (
            "MAIL FROM:<a@example.com> BODY=BINARYMIME",
            "501 5.5.4 BODY can only be 7BIT or 8BITMIME",
        ),
        ("MAIL FROM:<a@example.com> RET=SOME", "501 5.5.4 RET can only be FULL or HDRS"),
        ("MAIL FROM:<a@example.com> ENVID=a+zz", "501 5.5.4 Malformed xtext encoding"),
        (
            "MAIL FROM:<a@example.com> ENVID=" + "e" * 101,
            "501 5.5.4 ENVID is longer than 100 characters",
        ),
        ("MAIL FROM:<a@example.com> SIZE=1 SIZE=2", "501 5.5.4 Duplicate parameter SIZE"),
        ("MAIL FROM:<a@example.com> SMTPUTF8", "555 5.5.4 Unsupported MAIL parameter SMTPUTF8"),
        ("MAIL FROM:<a@example.com> XFOO=1", "555 5.5.4 Unsupported MAIL parameter XFOO"),
        (
            "MAIL FROM:<josé@example.com>",
            "500 5.5.2 Non-ASCII characters in a command; this server does not offer SMTPUTF8",
        ),
        ("MAIL FROM:<not-an-address>", "553 5.1.7 Bad sender address syntax: no domain"),
        ("MAIL FROM:<a@example.com> SIZE=26214400 BODY=8BITMIME", "250 2.1.0 Ok"),
        ("MAIL FROM:<>", "250 2.1.0 Ok"),
        ("MAIL FROM:<> RET=HDRS ENVID=QQ+2Bx", "250 2.1.0 Ok"),
        ("QUIT", "221 2.0.0 Bye"),
    ],
)
async def test_single_command_replies(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog, command: str, reply: str
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    await ehlo(dialog)
    assert await dialog.cmd(command) == reply


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (
            "RCPT TO:<b@example.org> NOTIFY=SOMETIMES",
            "501 5.5.4 NOTIFY takes NEVER or SUCCESS, FAILURE, DELAY",
        ),
        (
            "RCPT TO:<b@example.org> NOTIFY=NEVER,SUCCESS",
            "501 5.5.4 NOTIFY takes NEVER or SUCCESS, FAILURE, DELAY",
        ),
        ("RCPT TO:<b@example.org> ORCPT=b@example.org", "501 5.5.4 ORCPT takes addr-type;address"),
        ("RCPT TO:<b@example.org> XFOO", "555 5.5.4 Unsupported RCPT parameter XFOO"),
        ("RCPT TO:<>", "501 5.5.4 Syntax: RCPT TO:<address>"),
        ("RCPT TO:<b@example.org", "501 5.1.3 Bad recipient address syntax"),
        ("RCPT FROM:<b@example.org>", "501 5.5.4 Syntax: RCPT TO:<address>"),
        (
            "RCPT TO:<b@example.org> NOTIFY=success,delay ORCPT=rfc822;b+40example.org",
            "250 2.1.5 Ok",
        ),
        ("MAIL FROM:<a@example.com>", "503 5.5.1 Error: nested MAIL command"),
    ],
)
async def test_replies_inside_a_transaction(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog, command: str, reply: str
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    await ehlo(dialog)
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd(command) == reply


async def test_nested_mail_after_null_sender(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    await ehlo(dialog)
    assert await dialog.cmd("MAIL FROM:<>") == "250 2.1.0 Ok"
    assert await dialog.cmd("MAIL FROM:<>") == "503 5.5.1 Error: nested MAIL command"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "250 2.1.5 Ok"


async def test_mail_before_helo(smtp_relay: SmtpRelay, dialog_factory: OpenDialog) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "503 5.5.1 Error: send HELO first"


async def test_helo_reply_has_no_enhanced_code(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    assert await dialog.cmd("HELO client.test") == "250 relay.test"
    # HELO is plain SMTP: no ESMTP parameters.
    assert await dialog.cmd("MAIL FROM:<a@example.com> SIZE=10") == (
        "501 5.5.4 Syntax: MAIL FROM:<address>"
    )
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"


async def test_ehlo_without_name(smtp_relay: SmtpRelay, dialog_factory: OpenDialog) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    assert await dialog.cmd("EHLO") == "501 5.5.4 Syntax: EHLO hostname"


async def test_rset_clears_the_transaction(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    await ehlo(dialog)
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RSET") == "250 2.0.0 Ok"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "503 5.5.1 Error: need MAIL command"


async def test_command_line_too_long(smtp_relay: SmtpRelay, dialog_factory: OpenDialog) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    await ehlo(dialog)
    assert (await dialog.cmd("NOOP " + "x" * 2000)).startswith("500 5.5.2 ")
    assert await dialog.cmd("NOOP") == "250 2.0.0 Ok"


async def test_message_over_the_size_limit(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    relay = await start_relay(smtp={"max_size": 2000})
    dialog = await dialog_factory(relay.port)
    await ehlo(dialog)
    assert await dialog.cmd("MAIL FROM:<a@example.com> SIZE=2001") == (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    )
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "250 2.1.5 Ok"
    assert (await dialog.cmd("DATA")).startswith("354 ")
    body = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 40
    await dialog.send(body + b".\r\n")
    assert await dialog.reply() == (552, ["5.3.4 Message size exceeds fixed maximum message size"])
    assert relay.count() == 0


async def test_pipelined_transaction(smtp_relay: SmtpRelay, dialog_factory: OpenDialog) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    await ehlo(dialog)
    await dialog.send(
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\n"
        b"DATA\r\n"
    )
    replies = [await dialog.reply() for _ in range(4)]
    assert [code for code, _ in replies] == [250, 250, 250, 354]
    await dialog.send(b"Subject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    code, lines = await dialog.reply()
    assert code == 250 and lines[0].startswith("2.0.0 Ok: queued as msg-")
    assert await dialog.reply() == (221, ["2.0.0 Bye"])


async def test_session_command_tables_match_a_full_attribute_listing(
    smtp_relay: SmtpRelay,
) -> None:
    """RelaySMTP lists only auth_*/smtp_* names to aiosmtpd's __init__; the tables it
    builds from them must be exactly those of a full listing (guards an aiosmtpd upgrade)."""
    from daemon.smtp.protocol import RelaySMTP

    handler = smtp_relay.listeners.handler
    loop = asyncio.get_running_loop()
    RelaySMTP._templates.clear()  # both built by aiosmtpd's __init__, not copied
    quick = RelaySMTP(handler, hostname="relay.test", loop=loop)
    RelaySMTP._templates.clear()
    RelaySMTP._listing_for_init = False
    try:
        full = RelaySMTP(handler, hostname="relay.test", loop=loop)
    finally:
        RelaySMTP._listing_for_init = True
    for table in ("_auth_methods", "_smtp_methods", "_handle_hooks"):
        assert sorted(getattr(quick, table)) == sorted(getattr(full, table)), table
    assert {"AUTH", "DATA", "EHLO", "MAIL", "RCPT", "STARTTLS"} <= set(quick._smtp_methods)
    assert set(quick._auth_methods) == {"LOGIN", "PLAIN"}
    # The handler names its hooks the same way (its dir() lists just those).
    hooks = {name for name in vars(type(handler)) if name.startswith("handle_")}
    assert set(quick._handle_hooks) == {name.removeprefix("handle_") for name in hooks}
    assert set(quick._handle_hooks) >= {"MAIL", "RCPT", "DATA"}
    assert len(dir(quick)) == len(dir(full)) > 50  # dir() is whole again after __init__


async def test_a_session_copied_from_its_template_equals_one_aiosmtpd_built(
    smtp_relay: SmtpRelay,
) -> None:
    """Sessions after a listener's first copy what aiosmtpd's __init__ set for it; the copy
    must hold the same state, with fresh stream state and methods bound to itself."""
    import ssl

    from daemon.smtp.protocol import RelaySMTP, _protocol_keys

    handler = smtp_relay.listeners.handler
    loop = asyncio.get_running_loop()
    options = {
        "hostname": "relay.test",
        "ident": "ESMTP test",
        "data_size_limit": 1000,
        "timeout": 30.0,
        "tls_context": ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        "loop": loop,
    }
    RelaySMTP._templates.clear()
    built = RelaySMTP(handler, **options)  # type: ignore[arg-type]
    copied = RelaySMTP(handler, **options)  # type: ignore[arg-type]
    assert len(RelaySMTP._templates[handler]) == 1
    other = RelaySMTP(handler, implicit_tls=True, **options)  # type: ignore[arg-type]
    assert len(RelaySMTP._templates[handler]) == 2 and other._auth_require_tls is False
    assert copied._auth_require_tls is True

    protocol = _protocol_keys(RelaySMTP, loop)
    assert vars(copied).keys() == vars(built).keys()
    for key, value in vars(built).items():
        mine = vars(copied)[key]
        if key == "_smtp_methods":
            assert {n: m.__func__ for n, m in mine.items()} == {
                n: m.__func__ for n, m in value.items()
            }
            assert all(m.__self__ is copied for m in mine.values())
        elif key == "_auth_methods":
            assert mine.keys() == value.keys()
            for name, attr in value.items():
                assert mine[name].is_builtin == attr.is_builtin
                if attr.is_builtin:
                    assert mine[name].method.__func__ is attr.method.__func__
                    assert mine[name].method.__self__ is copied
                else:
                    assert mine[name].method == attr.method
        elif key == "_loop":
            assert mine is value
        elif key in protocol or key == "command_size_limits":
            assert type(mine) is type(value), key
            if hasattr(value, "__self__"):
                assert mine.__self__ is copied, key
            elif value is not None and not isinstance(value, bool | int):
                assert mine is not value, key  # per connection, never shared
        else:
            assert mine == value, key
    # asyncio's private StreamReaderProtocol._stream_reader: typeshed does not declare it.
    assert copied._stream_reader is not built._stream_reader  # type: ignore[attr-defined]
    assert copied._stream_reader._limit == built._stream_reader._limit  # type: ignore[attr-defined]
