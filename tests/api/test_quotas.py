"""Daily sending quotas, API request limits and the X-RateLimit-* headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.service import RelayService
from daemon.store.engine import make_engine
from tests.api.conftest import AUTH, assert_envelope, message
from tests.api.tenants import key_headers, make_key, make_workspace

NOW = datetime(2024, 1, 15, 10, 0, 0, 500000, tzinfo=UTC)
RATE_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Reset-After",
    "X-RateLimit-Workspace",
)


@pytest.fixture
async def service(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> AsyncIterator[RelayService]:
    """A service whose clock stands still, so no window rolls over during a test."""
    config = make_config(db_url, rate_limits={"global_daily": 1000, "user_default": 3})
    svc = RelayService(config, engine, clock=lambda: NOW)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


def client_for(service: RelayService, headers: dict[str, str]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(service))
    return httpx.AsyncClient(transport=transport, base_url="http://relay.test", headers=headers)


async def keyed(client: httpx.AsyncClient, workspace: str, **settings: Any) -> dict[str, str]:
    await make_workspace(client, workspace, **settings)
    return key_headers((await make_key(client, workspace))["key"])


async def test_rate_limit_status_shape(client: httpx.AsyncClient) -> None:
    await make_workspace(client, "ws-001", quotas={"daily": 10, "user_daily": 5})
    for user in ("user-123", "user-123", "user-456"):
        sent = await client.post(
            "/api/messages", json=message(workspace_id="ws-001", metadata={"user_id": user})
        )
        assert sent.status_code == 202
    response = await client.get("/api/rate-limit", params={"workspace_id": "ws-001"})
    assert response.json() == {
        "success": True,
        "data": {
            "global": {"limit": 1000, "remaining": 997, "reset_at": "2024-01-16T00:00:00Z"},
            "workspace": {
                "workspace_id": "ws-001",
                "limit": 10,
                "used": 3,
                "remaining": 7,
                "reset_at": "2024-01-16T00:00:00Z",
            },
            "users": {
                "user-123": {"limit": 5, "used": 2, "remaining": 3},
                "user-456": {"limit": 5, "used": 1, "remaining": 4},
            },
        },
    }


async def test_quota_exceeded_has_the_details_block(client: httpx.AsyncClient) -> None:
    auth = await keyed(client, "ws-q", plan="enterprise", quotas={"daily": 2})
    for _ in range(2):
        assert (await client.post("/api/messages", json=message(), headers=auth)).status_code == 202
    refused = await client.post("/api/messages", json=message(), headers=auth)
    error = assert_envelope(refused, 429, "QUOTA_EXCEEDED")
    assert error["details"] == {
        "limit": 2,
        "used": 2,
        "reset_at": "2024-01-16T00:00:00Z",
        "scope": "workspace",
    }
    listed = await client.get("/api/messages", params={"workspace_id": "ws-q"})
    assert listed.json()["data"]["pagination"]["total"] == 2


async def test_user_quota_binds_a_per_user_key(client: httpx.AsyncClient) -> None:
    await make_workspace(client, "ws-u", plan="enterprise")
    auth = key_headers((await make_key(client, "ws-u", user_id="alice"))["key"])
    for _ in range(3):  # user_default = 3
        assert (await client.post("/api/messages", json=message(), headers=auth)).status_code == 202
    error = assert_envelope(
        await client.post("/api/messages", json=message(), headers=auth), 429, "QUOTA_EXCEEDED"
    )
    assert error["details"]["scope"] == "user"
    # Another user of the workspace still has room.
    other = key_headers((await make_key(client, "ws-u", user_id="bob"))["key"])
    assert (await client.post("/api/messages", json=message(), headers=other)).status_code == 202


async def test_concurrent_sends_accept_exactly_the_quota(
    service: RelayService, client: httpx.AsyncClient, db_url: str, make_config: Callable[..., Any]
) -> None:
    """50 sends at once through two daemons sharing the database; the quota is 20."""
    auth = await keyed(client, "ws-c", plan="enterprise", quotas={"daily": 20})
    second_engine = make_engine(db_url)
    second = RelayService(service.config, second_engine, clock=lambda: NOW)
    await second.start()
    try:
        async with client_for(second, auth) as other:
            mine = client_for(service, auth)
            async with mine:
                responses = await asyncio.gather(
                    *(
                        (mine if i % 2 else other).post("/api/messages", json=message())
                        for i in range(50)
                    )
                )
    finally:
        await second.close()
        second_engine.dispose()
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(202) == 20, statuses
    assert statuses.count(429) == 30
    assert all(
        r.json()["error"]["code"] == "QUOTA_EXCEEDED" for r in responses if r.status_code == 429
    )
    listed = await client.get("/api/messages", params={"workspace_id": "ws-c"})
    assert listed.json()["data"]["pagination"]["total"] == 20


async def test_hourly_request_limit(client: httpx.AsyncClient) -> None:
    auth = await keyed(client, "ws-h", plan="enterprise", custom_limits={"requests_per_hour": 5})
    remaining = []
    for _ in range(5):
        response = await client.get("/api/rate-limit", headers=auth)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Workspace"] == "ws-h"
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["4", "3", "2", "1", "0"]
    refused = await client.get("/api/rate-limit", headers=auth)
    error = assert_envelope(refused, 429, "RATE_LIMIT_EXCEEDED")
    assert error["details"]["limit"] == 5 and error["details"]["window"] == "hour"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-RateLimit-Reset"] == str(
        int(datetime(2024, 1, 15, 11, tzinfo=UTC).timestamp())
    )
    # 3599.5 s to 11:00, rounded up: waiting that long finds the window reset.
    assert refused.headers["X-RateLimit-Reset-After"] == "3600"
    assert refused.headers["Retry-After"] == "3600"
    # The admin token is exempt, and reports the workspace's window.
    admin = await client.get("/api/rate-limit", headers={"X-Workspace-ID": "ws-h"})
    assert admin.status_code == 200
    assert admin.headers["X-RateLimit-Remaining"] == "0"


async def test_burst_limit(client: httpx.AsyncClient) -> None:
    auth = await keyed(client, "ws-b", plan="enterprise", custom_limits={"burst": 3})
    statuses = [(await client.get("/api/messages", headers=auth)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = await client.get("/api/messages", headers=auth)
    assert assert_envelope(refused, 429, "RATE_LIMIT_EXCEEDED")["details"]["window"] == "burst"


async def test_free_plan_limits(client: httpx.AsyncClient) -> None:
    auth = await keyed(client, "ws-free")
    response = await client.get("/api/messages", headers=auth)
    # Free: 10 a second, 100 an hour; the second has fewer left (9 against 99).
    assert response.headers["X-RateLimit-Limit"] == "10"
    assert response.headers["X-RateLimit-Remaining"] == "9"
    assert response.headers["X-RateLimit-Reset-After"] == "1"
    limits = (await client.get("/api/admin/workspaces/ws-free")).json()["data"]["limits"]
    assert limits == {"requests_per_hour": 100, "requests_per_day": 1000, "burst": 10}


async def test_headers_follow_the_window_nearest_to_refusing(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> None:
    """Burst and hour each bind in turn; a 429 says when a request is accepted again."""
    now = [datetime(2024, 1, 15, 10, 0, 0, 500000, tzinfo=UTC)]
    service = RelayService(make_config(db_url), engine, clock=lambda: now[0])
    await service.start()
    try:
        async with client_for(service, AUTH) as admin:
            limits = {"requests_per_hour": 15, "burst": 10}
            auth = await keyed(admin, "ws-n", plan="enterprise", custom_limits=limits)

            def seen(response: httpx.Response) -> tuple[int, str, str, str]:
                h = response.headers
                return (
                    response.status_code,
                    h["X-RateLimit-Limit"],
                    h["X-RateLimit-Remaining"],
                    h["X-RateLimit-Reset-After"],
                )

            async def get() -> httpx.Response:
                return await admin.get("/api/rate-limit", headers=auth)

            first = [seen(await get()) for _ in range(10)]
            # The burst second (10) has fewer left than the hour (15) all along.
            assert first == [(200, "10", str(9 - i), "1") for i in range(10)]
            refused = await get()
            error = assert_envelope(refused, 429, "RATE_LIMIT_EXCEEDED")
            assert error["details"]["window"] == "burst"
            assert seen(refused) == (429, "10", "0", "1")  # 0.5 s to the next second: 1, not 0
            assert refused.headers["Retry-After"] == "1"

            now[0] = datetime(2024, 1, 15, 10, 0, 1, 900000, tzinfo=UTC)
            # 5 left in the hour against 10 in this second: the hour binds (3598.1 s left).
            second = [seen(await get()) for _ in range(5)]
            assert second == [(200, "15", str(4 - i), "3599") for i in range(5)]
            for _ in range(5):  # refused by the hour, each counting in the burst second
                response = await get()
                assert response.json()["error"]["details"]["window"] == "hour"
                assert seen(response) == (429, "15", "0", "3599")
                assert response.headers["Retry-After"] == "3599"
            # The burst second is full too now, but a retry after 1 s would still be refused.
            both_full = await get()
            assert both_full.json()["error"]["details"]["window"] == "hour"
            assert seen(both_full) == (429, "15", "0", "3599")
            assert both_full.headers["Retry-After"] == "3599"
            # The admin token is exempt and reports the same window.
            report = await admin.get("/api/rate-limit", headers={"X-Workspace-ID": "ws-n"})
            assert seen(report) == (200, "15", "0", "3599")
    finally:
        await service.close()


async def test_endpoint_limit_counts_exactly_under_concurrency(client: httpx.AsyncClient) -> None:
    """POST /api/messages: 100 per minute, whatever the plan allows."""
    auth = await keyed(client, "ws-e", plan="enterprise")
    responses = await asyncio.gather(
        *(client.post("/v1/messages", json=message(), headers=auth) for _ in range(105))
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(202) == 100 and statuses.count(429) == 5
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["details"]["window"] == "POST /api/messages"
    assert refused.headers["X-RateLimit-Limit"] == "100"
    # GET /api/messages has its own, larger, window.
    listed = await client.get("/api/messages", headers=auth)
    assert listed.status_code == 200


async def test_every_response_has_rate_limit_headers(
    client: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    responses = [
        await anon.get("/api/messages"),
        await anon.get("/health"),
        await client.get("/api/nowhere"),
        await client.get("/api/messages"),
        await client.post("/api/messages", content=b"{"),
        await anon.get("/api/messages", headers={"X-API-Key": "sk_live_wrong"}),
    ]
    for response in responses:
        for name in RATE_HEADERS:
            assert name in response.headers, (response.request.url, name)
    assert responses[0].headers["X-RateLimit-Workspace"] == "anonymous"
    assert responses[3].headers["X-RateLimit-Workspace"] == "default"


async def test_admin_token_is_exempt(client: httpx.AsyncClient) -> None:
    await make_workspace(client, "ws-x", plan="enterprise", custom_limits={"burst": 1})
    headers = {**AUTH, "X-Workspace-ID": "ws-x"}
    statuses = [(await client.get("/api/messages", headers=headers)).status_code for _ in range(5)]
    assert statuses == [200] * 5
