"""`queue retry` and `queue show` for a message an upstream refused permanently."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import ConfigFactory
from tests.relayctl.conftest import Cli

SEND = ["send", "--from", "a@example.com", "--to", "gone@example.org", "--text", "x"]


class Refusing:
    """An upstream that knows no recipient: every RCPT gets a permanent 550."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return "550 5.1.1 <gone@example.org>: user unknown"


@pytest.fixture
async def refusing_upstream() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Refusing()), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def failing_relay(
    make_config: ConfigFactory, sqlite_url: str, refusing_upstream: int
) -> AsyncIterator[Any]:
    from daemon.server import Server

    upstream = {"type": "smtp", "host": "127.0.0.1", "port": refusing_upstream, "tls": "none"}
    server = Server(make_config(sqlite_url, providers={"upstream": upstream}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def status_of(cli: Cli, message_id: str, wanted: str) -> dict[str, Any]:
    for _ in range(300):
        result = await cli("--json", "queue", "show", message_id)
        message: dict[str, Any] = json.loads(result.stdout)
        if message["status"] == wanted:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"{message_id} never reached {wanted}: {message['status']}")


async def reactivate(cli: Cli, address: str = "gone@example.org") -> None:
    result = await cli("recipients", "update", address, "--status", "active")
    assert result.exit_code == 0, result.output


async def test_failed_message_shows_its_error_and_can_be_retried(failing_relay: Any) -> None:
    cli = Cli(failing_relay.base_url, failing_relay.admin_token)
    sent = await cli(*SEND)
    assert sent.exit_code == 0, sent.output
    message_id = sent.stdout.strip()
    failed = await status_of(cli, message_id, "failed")
    assert "550" in (failed["error"] or "")

    shown = await cli("queue", "show", message_id)
    assert shown.exit_code == 0, shown.output
    attempts = shown.stdout[shown.stdout.index("Attempts") :]
    assert "upstream" in attempts and "550" in attempts and "user unknown" in attempts
    error_line = next(line for line in shown.stdout.splitlines() if line.startswith("error:"))
    assert "550" in error_line

    # The 550 suppressed the recipient: a retry would reach nobody until it is active again.
    suppressed = await cli("queue", "retry", message_id)
    assert suppressed.exit_code == 1 and "(INVALID_STATE)" in suppressed.stderr
    assert "suppressed" in suppressed.stderr
    await reactivate(cli)
    retried = await cli("--json", "queue", "retry", message_id)
    assert retried.exit_code == 0, retried.output
    data = json.loads(retried.stdout)
    assert data["message_id"] == message_id
    assert data["status"] == "queued"
    assert data["retry_count"] >= 1

    # The upstream still refuses: it fails again, and plain output reports the new state.
    await status_of(cli, message_id, "failed")
    await reactivate(cli)
    again = await cli("queue", "retry", message_id)
    assert again.exit_code == 0, again.output
    assert again.stdout.split() == [message_id, "queued"]
