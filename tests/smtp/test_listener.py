"""Listener lifecycle: binding, and stopping without losing an acknowledged message."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from daemon.smtp.listener import SmtpListeners
from tests.smtp.conftest import HOST, Dialog, SmtpRelay, StartRelay

OpenDialog = Callable[..., Awaitable[Dialog]]


async def test_binds_two_ephemeral_ports(smtp_relay: SmtpRelay) -> None:
    assert smtp_relay.port > 0 and smtp_relay.tls_port > 0
    assert smtp_relay.port != smtp_relay.tls_port


async def test_stop_says_421_to_idle_sessions(
    smtp_relay: SmtpRelay, dialog_factory: OpenDialog
) -> None:
    dialog = await dialog_factory(smtp_relay.port)
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    await smtp_relay.listeners.stop(grace=2)
    assert await dialog.reply() == (421, ["4.3.2 Service shutting down, try again later"])
    assert await dialog.reader.read() == b""
    with pytest.raises(OSError):
        await asyncio.open_connection(HOST, smtp_relay.port)


async def test_stop_lets_a_commit_in_flight_answer_250(
    start_relay: StartRelay, dialog_factory: OpenDialog
) -> None:
    def slow_commits(engine: Engine) -> None:
        @event.listens_for(engine, "commit")
        def _slow(_conn: Any) -> None:
            time.sleep(0.3)  # in the writer thread: the DATA reply waits for this commit

    relay = await start_relay(engine_hook=slow_commits)
    dialog = await dialog_factory(relay.port)
    assert (await dialog.cmd("EHLO client.test")).startswith("250 ")
    assert await dialog.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok"
    assert await dialog.cmd("RCPT TO:<b@example.org>") == "250 2.1.5 Ok"
    assert (await dialog.cmd("DATA")).startswith("354 ")
    await dialog.send(b"Subject: in flight\r\n\r\nx\r\n.\r\n")
    while not any(session.busy for session in relay.listeners.sessions):
        await asyncio.sleep(0.005)
    await relay.listeners.stop(grace=5)
    code, lines = await dialog.reply()
    assert code == 250 and lines[0].startswith("2.0.0 Ok: queued as msg-")
    assert await dialog.reader.read() == b""
    assert relay.count() == 1


async def test_port_in_use_raises_and_leaves_nothing_bound(
    smtp_relay: SmtpRelay, make_config: Callable[..., Any], sqlite_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        config = make_config(sqlite_url, smtp={"port": 0, "tls_port": busy_port})
        listeners = SmtpListeners(config, smtp_relay.service, smtp_relay.client_context())
        with pytest.raises(OSError):
            await listeners.start()
        assert listeners.sessions == set()
        await listeners.stop()
