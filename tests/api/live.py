"""A real relayd on loopback (SMTP + HTTP + delivery to the outbox) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.server import Server
from tests.api.conftest import AUTH


@pytest.fixture
async def live_relay(db_url: str, make_config: Callable[..., Any]) -> AsyncIterator[Server]:
    """``relay`` on the parametrized database."""
    server = Server(make_config(db_url))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def http(server: Server, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.base_url, headers={**AUTH, **headers}, timeout=10)


async def wait_final(client: httpx.AsyncClient, message_id: str) -> dict[str, Any]:
    """Poll GET /api/messages/{id} until the message leaves the pending statuses."""
    for _ in range(200):
        detail: dict[str, Any] = (await client.get(f"/api/messages/{message_id}")).json()["data"]
        if detail["status"] not in ("queued", "scheduled", "processing"):
            return detail
        await asyncio.sleep(0.05)
    raise AssertionError(f"{message_id} still {detail['status']}")


def outbox_recipients(server: Server, message_id: str) -> list[str] | None:
    """Who the outbox provider delivered ``message_id`` to (None: not delivered)."""
    path = Path(server.data_dir) / "outbox" / f"{message_id}.envelope.json"
    if not path.exists():
        return None
    recipients: list[str] = json.loads(path.read_text())["recipients"]
    return recipients
