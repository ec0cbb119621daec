"""Never an open relay: who may relay, AUTH only over TLS, and the recipient-address matrix."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Awaitable, Callable

import pytest

from tests.smtp.conftest import TOKEN, Dialog, SmtpRelay, StartRelay, in_thread

OpenDialog = Callable[..., Awaitable[Dialog]]
UNTRUSTED = {"trusted_networks": ["10.9.9.0/24"]}  # 127.0.0.1 is then an outsider


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def starttls_dialog(relay: SmtpRelay, dialog: Dialog) -> None:
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
    await dialog.writer.start_tls(relay.client_context(), server_hostname="127.0.0.1")
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")


@pytest.mark.parametrize(
    "recipient",
    [
        "b@example.org",
        "postmaster@relay.test",
        "user%other.example@relay.test",
        "@a.example:b@c.example",
        '"user@other.example"@relay.test',
    ],
)
async def test_unauthenticated_outsider_is_denied_at_rcpt(
    start_relay: StartRelay, dialog_factory: OpenDialog, recipient: str
) -> None:
    relay = await start_relay(smtp=UNTRUSTED)
    dialog = await dialog_factory(relay.port)
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd(f"RCPT TO:<{recipient}>") == "554 5.7.1 Relay access denied"
    assert await dialog.cmd("DATA") == "503 5.5.1 Error: need RCPT command"


async def test_outsider_with_smtplib_gets_554(start_relay: StartRelay) -> None:
    relay = await start_relay(smtp=UNTRUSTED)

    def send() -> None:
        with relay.smtp() as client:
            client.sendmail("a@example.com", ["b@example.org"], b"Subject: x\r\n\r\nx\r\n")

    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        await in_thread(send)
    assert info.value.recipients == {"b@example.org": (554, b"5.7.1 Relay access denied")}
    assert relay.count() == 0


async def test_outsider_may_relay_after_auth_over_tls(start_relay: StartRelay) -> None:
    relay = await start_relay(smtp=UNTRUSTED)

    def send() -> tuple[dict[str, str], str]:
        with relay.smtp() as client:
            client.ehlo()
            features = dict(client.esmtp_features)
            client.starttls(context=relay.client_context())
            client.login("workspace-7", TOKEN)
            client.mail("a@example.com")
            assert client.rcpt("b@example.org") == (250, b"2.1.5 Ok")
            code, reply = client.data(b"X-Workspace-ID: ws-header\r\nSubject: a\r\n\r\nx\r\n")
            assert code == 250
            return features, reply.decode().rsplit(" ", 1)[1]

    features, message_id = await in_thread(send)
    assert "auth" not in features  # never offered before TLS
    row = relay.message(message_id)
    assert row.workspace_id == "ws-header"  # the admin token does not bind a workspace
    raw = relay.raw(message_id)
    assert raw is not None and b" with ESMTPSA id " in raw


async def test_auth_login_mechanism(start_relay: StartRelay, dialog_factory: OpenDialog) -> None:
    relay = await start_relay(smtp=UNTRUSTED)
    dialog = await dialog_factory(relay.port)
    await starttls_dialog(relay, dialog)
    assert await dialog.cmd("AUTH LOGIN") == "334 VXNlciBOYW1lAA=="
    assert await dialog.cmd(base64.b64encode(b"someone").decode()) == "334 UGFzc3dvcmQA"
    assert await dialog.cmd(base64.b64encode(TOKEN.encode()).decode()) == (
        "235 2.7.0 Authentication successful"
    )
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "250 2.1.5 Ok"


async def test_auth_refused_before_tls(start_relay: StartRelay, dialog_factory: OpenDialog) -> None:
    relay = await start_relay(smtp=UNTRUSTED)
    dialog = await dialog_factory(relay.port)
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd(f"AUTH PLAIN {plain('u', TOKEN)}") == (
        "538 5.7.11 Encryption required for requested authentication mechanism"
    )
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "554 5.7.1 Relay access denied"


@pytest.mark.parametrize("password", ["wrong", TOKEN + "x", "", TOKEN[:-1]])
async def test_bad_credentials_are_535(
    start_relay: StartRelay, dialog_factory: OpenDialog, password: str
) -> None:
    relay = await start_relay(smtp=UNTRUSTED)
    dialog = await dialog_factory(relay.tls_port, relay.client_context())
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd(f"AUTH PLAIN {plain('u', password)}") == (
        "535 5.7.8 Authentication credentials invalid"
    )
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "554 5.7.1 Relay access denied"


async def test_require_auth_applies_to_trusted_clients_too(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    relay = await start_relay(smtp={"require_auth": True})
    dialog = await dialog_factory(relay.tls_port, relay.client_context())
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "530 5.7.0 Authentication required"
    # RFC 4954 section 4: no AUTH inside a mail transaction; end it first.
    assert (await dialog.cmd(f"AUTH PLAIN {plain('ws', TOKEN)}")).startswith("503 5.5.1 ")
    assert await dialog.cmd("RSET") == "250 2.0.0 Ok"
    assert await dialog.cmd(f"AUTH PLAIN {plain('ws', TOKEN)}") == (
        "235 2.7.0 Authentication successful"
    )
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "250 2.1.5 Ok"


ROUTING_TRICKS = [
    "user%other.example@relay.test",
    "other.example!user@relay.test",
    "user@other.example@relay.test",
    '"user@other.example"@relay.test',
    '"user%other.example"@relay.test',
    '"other.example!user"@relay.test',
    "@hop.example:user%other.example@relay.test",
]


@pytest.mark.parametrize("recipient", ROUTING_TRICKS)
async def test_routing_tricks_refused_even_for_trusted_clients(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog, recipient: str
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    reply = await dialog.cmd(f"RCPT TO:<{recipient}>")
    assert reply.startswith("553 5.7.1 ") and "Routing syntax" in reply


@pytest.mark.parametrize(
    ("recipient", "reply"),
    [
        ("nodomain", "553 5.1.3 Bad recipient address syntax: no domain"),
        ("user@[192.0.2.1]", "553 5.1.3 Bad recipient address syntax"),
        ("user@bad_domain.example", "553 5.1.3 Bad recipient address syntax"),
    ],
)
async def test_bad_recipient_syntax(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog, recipient: str, reply: str
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert (await dialog.cmd(f"RCPT TO:<{recipient}>")).startswith(reply)


async def test_source_routes_are_stripped_and_quoted_locals_kept(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd("MAIL FROM:<@hop.example:a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RCPT TO:<@a.example,@b.example:b@c.example>") == "250 2.1.5 Ok"
    assert await dialog.cmd('RCPT TO:<"john doe"@example.org>') == "250 2.1.5 Ok"
    assert (await dialog.cmd("DATA")).startswith("354 ")
    await dialog.send(b"Subject: routes\r\n\r\nx\r\n.\r\n")
    code, lines = await dialog.reply()
    assert code == 250
    message_id = lines[0].rsplit(" ", 1)[1]
    assert smtp_relay.message(message_id).mail_from == "a@example.com"
    assert [r.address for r in smtp_relay.recipients(message_id)] == [
        "b@c.example",
        '"john doe"@example.org',
    ]
