"""GET /api/stats (reference 2.2) through the ASGI app, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import httpx

from daemon.core.message import STATUSES
from daemon.service import RelayService
from tests.api.conftest import assert_envelope, finish, send


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
    assert_envelope(denied, 403, "WORKSPACE_ACCESS_DENIED")


async def test_stats_need_a_token(anon: httpx.AsyncClient) -> None:
    assert_envelope(await anon.get("/api/stats"), 401, "AUTH_REQUIRED")
    assert_envelope(await anon.get("/api/stats/realtime"), 401, "AUTH_REQUIRED")
