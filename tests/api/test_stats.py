"""GET /api/stats (reference 2.2) through the ASGI app, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.core.message import STATUSES
from daemon.service import RelayService
from tests.api.conftest import AUTH, assert_envelope, finish, send
from tests.api.tenants import key_headers, make_key, make_workspace


@pytest.mark.usefixtures("clear_of_midnight")
async def test_stats_shape_and_queue_counts(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    sent = await send(client)
    failed = await send(client)
    await send(client)
    await send(client, workspace_id="ws-other")
    await finish(service, sent, "sent")
    await finish(service, failed, "failed")
    response = await client.get("/api/stats")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert set(data) == {"system", "queue", "processing", "providers", "rate_limits"}
    system = data["system"]
    assert set(system) == {"version", "uptime_seconds", "current_time"}
    assert isinstance(system["uptime_seconds"], int)
    assert system["current_time"].endswith("Z")
    assert set(data["queue"]) == {"total", *STATUSES}
    assert data["queue"]["total"] == 4
    assert data["queue"]["queued"] == 2
    assert data["queue"]["sent"] == 1
    assert data["queue"]["failed"] == 1
    assert data["queue"]["auth_error"] == 0
    assert set(data["processing"]) == {
        "rate_per_minute",
        "avg_processing_time_ms",
        "p95_processing_time_ms",
        "p99_processing_time_ms",
    }
    now = service.clock()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert data["rate_limits"] == {
        "global": {
            "used_today": 4,
            "limit_today": 100000,
            "reset_at": midnight.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    }
    assert data["providers"] == {
        pid: {"status": "unknown", "success_rate": None, "avg_latency_ms": None}
        for pid in service.config.providers
    }


async def test_stats_are_scoped_to_the_workspace(client: httpx.AsyncClient) -> None:
    await send(client)
    await send(client, workspace_id="ws-a")
    scoped = await client.get("/api/stats", headers={"X-Workspace-ID": "ws-a"})
    assert scoped.json()["data"]["queue"]["total"] == 1
    query = await client.get("/api/stats?workspace_id=default")
    assert query.json()["data"]["queue"]["total"] == 1
    everything = await client.get("/api/stats")
    assert everything.json()["data"]["queue"]["total"] == 2
    denied = await client.get("/api/stats?workspace_id=default", headers={"X-Workspace-ID": "ws-a"})
    assert_envelope(denied, 400, "INVALID_REQUEST")  # the admin's header and query disagree


async def test_stats_need_a_token(anon: httpx.AsyncClient) -> None:
    assert_envelope(await anon.get("/api/stats"), 401, "AUTH_REQUIRED")
    assert_envelope(await anon.get("/api/stats/realtime"), 401, "AUTH_REQUIRED")


async def test_stats_hide_providers_bound_to_other_workspaces(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> None:
    providers = {
        "outbox": {"type": "outbox"},
        "b-only": {"type": "outbox", "workspace_id": "ws-b"},
    }
    service = RelayService(make_config(db_url, providers=providers), engine)
    await service.start()
    transport = httpx.ASGITransport(app=create_app(service))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://relay.test", headers=AUTH
        ) as admin:
            await make_workspace(admin, "ws-a")
            a_key = (await make_key(admin, "ws-a"))["key"]
            everything = (await admin.get("/api/stats")).json()["data"]["providers"]
            assert set(everything) == {"outbox", "b-only"}
            as_a = await admin.get("/api/stats", headers=key_headers(a_key))
            assert as_a.status_code == 200, as_a.text
            assert set(as_a.json()["data"]["providers"]) == {"outbox"}
            as_b = await admin.get("/api/stats", headers={"X-Workspace-ID": "ws-b"})
            assert set(as_b.json()["data"]["providers"]) == {"outbox", "b-only"}
    finally:
        await service.close()
