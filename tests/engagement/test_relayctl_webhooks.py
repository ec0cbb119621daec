"""relayctl webhooks ls/add/rm/test/replay against a running relayd."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from daemon.server import Server
from tests.engagement.conftest import AUTH, html_part, pixel, send
from tests.engagement.receiver import Receiver
from tests.relayctl.conftest import Cli


@pytest.fixture
async def relay(make_config: Callable[..., Any], sqlite_url: str) -> AsyncIterator[Server]:
    config = make_config(
        sqlite_url,
        tracking={"enabled": True},
        webhooks={"allowlist": ["127.0.0.1"], "retry_delays": ["200ms"]},
    )
    server = Server(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def cli(relay: Server) -> Cli:
    return Cli(relay.base_url, relay.admin_token)


async def test_webhooks_commands(relay: Server, cli: Cli) -> None:
    async with Receiver(statuses=[500, 500]) as receiver:
        added = await cli("webhooks", "add", receiver.url, "-e", "opened", "--json")
        assert added.exit_code == 0, added.output
        hook = json.loads(added.stdout)
        assert hook["secret"].startswith("whsec_")
        listed = await cli("webhooks", "ls")
        assert hook["id"] in listed.stdout and "opened" in listed.stdout
        assert hook["secret"] not in listed.stdout

        async with httpx.AsyncClient(base_url=relay.base_url, headers=AUTH) as api:
            mid = await send(api)
            eml = relay.data_dir / "outbox" / f"{mid}.eml"
            for _ in range(500):
                if eml.exists():
                    break
                await asyncio.sleep(0.02)
            opened = await api.get(pixel(html_part(eml.read_bytes())))
            assert opened.status_code == 200
        await receiver.wait_for(2)
        for _ in range(200):
            dead = await cli("webhooks", "ls", "--dead", "--json")
            if json.loads(dead.stdout)["deliveries"]:
                break
            await asyncio.sleep(0.05)
        (entry,) = json.loads(dead.stdout)["deliveries"]
        assert entry["last_error"] == "HTTP 500" and entry["attempts"] == 2
        replayed = await cli("webhooks", "replay", entry["id"])
        assert replayed.exit_code == 0 and "1 delivery" in replayed.stdout
        await receiver.wait_for(3)
        tested = await cli("webhooks", "test", hook["id"])
        assert tested.exit_code == 0 and "delivered (HTTP 200)" in tested.stdout
        assert json.loads(receiver.requests[-1].body)["type"] == "test"

    refused = await cli("webhooks", "add", "http://169.254.169.254/x", "--json")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "169.254.169.254 is a link-local or cloud metadata address" in refused.stderr
    assert (await cli("webhooks", "rm", hook["id"])).exit_code == 0
    missing = await cli("webhooks", "rm", hook["id"])
    assert missing.exit_code == 3
    assert (await cli("webhooks", "add", "https://x.example/", "-e", "nope")).exit_code == 2
