"""SMTP AUTH against guessing: a pause per failure, a session closed after a few, a client
address locked out after many; a key revoked mid-session; credentials kept out of logs."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.smtp.conftest import TOKEN, Dialog, SmtpRelay, StartRelay
from tests.smtp.test_workspace_auth import admin_call, workspace_key

OpenDialog = Callable[..., Awaitable[Dialog]]
NO_DELAY = {"auth_failure_delay": "0s"}


def plain(login: str, password: str, authzid: str = "") -> str:
    blob = f"{authzid}\0{login}\0{password}".encode()
    return "AUTH PLAIN " + base64.b64encode(blob).decode()


async def session(relay: SmtpRelay, open_dialog: OpenDialog) -> Dialog:
    """An EHLO'd session on the implicit-TLS port (AUTH is offered there)."""
    dialog = await open_dialog(relay.tls_port, relay.client_context())
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    return dialog


async def closed(dialog: Dialog) -> bool:
    """The server has closed the connection (EOF with nothing more to read)."""
    return await asyncio.wait_for(dialog.reader.read(), 10) == b""


async def test_failed_auth_is_answered_after_the_delay(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    relay = await start_relay(smtp={"auth_failure_delay": "600ms"})
    dialog = await session(relay, dialog_factory)
    started = time.monotonic()
    assert await dialog.cmd(plain("ws-a", "wrong")) == (
        "535 5.7.8 Authentication credentials invalid"
    )
    assert time.monotonic() - started >= 0.55
    started = time.monotonic()
    assert (await dialog.cmd(plain("anyone", TOKEN))).startswith("235 ")
    assert time.monotonic() - started < 0.5  # success is not delayed


async def test_session_is_closed_after_auth_max_failures(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    relay = await start_relay(smtp={**NO_DELAY, "auth_max_failures": 2})
    dialog = await session(relay, dialog_factory)
    assert (await dialog.cmd(plain("ws-a", "guess-1"))).startswith("535 5.7.8")
    assert await dialog.cmd(plain("ws-a", "guess-2")) == (
        "421 4.7.0 Too many failed authentication attempts, closing connection"
    )
    assert await closed(dialog)


async def test_auth_login_and_a_foreign_authzid_count_as_failures(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    relay = await start_relay(smtp={**NO_DELAY, "auth_max_failures": 2})
    dialog = await session(relay, dialog_factory)
    # Acting as another identity is refused (RFC 4616), even with the right token ...
    assert (await dialog.cmd(plain("anyone", TOKEN, authzid="root"))).startswith("535 5.7.8")
    # ... and counts, as an AUTH LOGIN failure does.
    assert (await dialog.cmd("AUTH LOGIN " + base64.b64encode(b"ws-a").decode())).startswith("334 ")
    assert (await dialog.cmd(base64.b64encode(b"wrong").decode())).startswith("421 4.7.0")
    assert await closed(dialog)


async def test_client_address_is_locked_out_across_connections(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    relay = await start_relay(
        smtp={
            **NO_DELAY,
            "auth_max_failures": 0,
            "auth_lockout_failures": 3,
            "auth_lockout_window": "2s",
        }
    )
    replies = []
    for attempt in range(3):  # a new connection for each guess
        dialog = await session(relay, dialog_factory)
        replies.append(await dialog.cmd(plain("ws-a", f"guess-{attempt}")))
    assert [r[:9] for r in replies] == ["535 5.7.8", "535 5.7.8", "421 4.7.0"]
    assert await closed(dialog)
    # Locked out: even the right credential is refused, before it is checked.
    dialog = await session(relay, dialog_factory)
    assert await dialog.cmd(plain("anyone", TOKEN)) == (
        "421 4.7.0 Too many failed authentication attempts from your address, try again later"
    )
    assert await closed(dialog)
    await asyncio.sleep(2.1)  # the failures age out of the window
    dialog = await session(relay, dialog_factory)
    assert (await dialog.cmd(plain("anyone", TOKEN))).startswith("235 ")


async def test_lockout_off_with_zero(start_relay: StartRelay, dialog_factory: OpenDialog) -> None:
    relay = await start_relay(smtp={**NO_DELAY, "auth_max_failures": 0, "auth_lockout_failures": 0})
    dialog = await session(relay, dialog_factory)
    for attempt in range(12):
        assert (await dialog.cmd(plain("ws-a", f"guess-{attempt}"))).startswith("535 ")
    assert (await dialog.cmd(plain("anyone", TOKEN))).startswith("235 ")


async def test_key_revoked_mid_session_ends_its_sending(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    relay = await start_relay(smtp={"require_auth": True})
    key = await workspace_key(relay, "ws-a")
    dialog = await session(relay, dialog_factory)
    assert (await dialog.cmd(plain("ws-a", key["key"]))).startswith("235 ")
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "250 2.1.5 Ok"
    assert await dialog.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"
    reply = await dialog.cmd("Subject: one\r\n\r\nbody\r\n.")
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    await admin_call(relay, "DELETE", f"/api/admin/keys/{key['id']}")
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == (
        "530 5.7.0 Authentication required: the credential was revoked"
    )
    # No longer authenticated: with require_auth the relay refuses it.
    assert (await dialog.cmd("RCPT TO:<b@example.org>")).startswith("5")
    assert relay.count() == 1


async def test_credentials_in_the_username_are_not_logged(
    start_relay: StartRelay, dialog_factory: OpenDialog, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await start_relay(smtp=NO_DELAY)
    key = await workspace_key(relay, "ws-a")
    caplog.set_level(logging.DEBUG)
    dialog = await session(relay, dialog_factory)
    # A client that sends its key as the username too fails (the username is the workspace)...
    assert (await dialog.cmd(plain(key["key"], key["key"]))).startswith("535 ")
    # ... one that swaps the fields fails ...
    assert (await dialog.cmd(plain(key["key"], "ws-a"))).startswith("535 ")
    # ... and the admin token in both succeeds: none of them reaches the log.
    assert (await dialog.cmd(plain(TOKEN, TOKEN))).startswith("235 ")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "auth failed user='********'" in logged and "auth ok user='********'" in logged
    assert key["key"] not in logged and TOKEN not in logged
