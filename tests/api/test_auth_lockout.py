"""Failed HTTP authentication is throttled per client address (daemon.api.auth_lockout).

Each test builds one app and talks to it from several client addresses (httpx's
ASGITransport takes the peer address a real server would put in the scope); the
last test goes through a real relayd on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from starlette.applications import Starlette

from daemon.api import create_app
from daemon.server import Server
from daemon.service import RelayService
from tests.api.conftest import AUTH, TOKEN, assert_envelope
from tests.api.live import http, live_relay  # noqa: F401  (the live_relay fixture)
from tests.api.tenants import JWT_SECRET, key_headers, make_key, make_workspace, token

ATTACKER = "203.0.113.7"
OTHER = "198.51.100.9"

MakeService = Callable[..., Awaitable[RelayService]]


@pytest.fixture
async def make_service(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> AsyncIterator[MakeService]:
    """``await make_service(auth_lockout_failures=3, ...)``: a started RelayService with
    those [http] settings (and JWTs signed with JWT_SECRET accepted); closed after the test."""
    started: list[RelayService] = []

    async def factory(**http_settings: Any) -> RelayService:
        config = make_config(db_url, http=http_settings, auth={"jwt_secret": JWT_SECRET})
        service = RelayService(config, engine)
        await service.start()
        started.append(service)
        return service

    yield factory
    for service in started:
        await service.close()


def caller(app: Starlette, address: str, **headers: str) -> httpx.AsyncClient:
    """A client of ``app`` connecting from ``address``."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://relay.test", headers=headers)


def assert_locked_out(response: httpx.Response, limit: int) -> int:
    """A 429 of the lockout, in the standard envelope; the Retry-After it gives."""
    error = assert_envelope(response, 429, "RATE_LIMIT_EXCEEDED")
    assert "failed authentication" in error["message"]
    assert error["details"]["window"] == "auth_failures"
    assert error["details"]["limit"] == limit
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert response.headers["X-RateLimit-Reset-After"] == str(retry_after)
    return retry_after


async def test_an_address_that_keeps_guessing_is_locked_out(make_service: MakeService) -> None:
    """The defaults (10 failures in 10 minutes): no-credential requests and a success in
    between change nothing; locked out, even the right token gets 429 unchecked, while
    other addresses and requests without credentials are answered as before."""
    app = create_app(await make_service())
    async with caller(app, ATTACKER) as attacker, caller(app, OTHER) as other:
        for guess in range(9):
            wrong = await attacker.get("/api/messages", headers=key_headers(f"guess-{guess}"))
            assert_envelope(wrong, 401, "INVALID_TOKEN")
        for _ in range(15):  # AUTH_REQUIRED is not a failed guess
            assert_envelope(await attacker.get("/api/messages"), 401, "AUTH_REQUIRED")
        assert (await attacker.get("/api/messages", headers=AUTH)).status_code == 200
        # The tenth failure locks it out: the success before did not reset the count.
        last = await attacker.get("/api/messages", headers={"X-API-Key": "guess-9"})
        assert_envelope(last, 401, "INVALID_TOKEN")

        retry_after = assert_locked_out(await attacker.get("/api/messages", headers=AUTH), 10)
        assert 590 <= retry_after <= 600
        for headers in ({"X-API-Key": TOKEN}, {"Authorization": "Basic x"}, key_headers("g")):
            assert_locked_out(await attacker.post("/api/messages", headers=headers), 10)
        assert_locked_out(await attacker.get("/api/admin/config", headers=AUTH), 10)

        assert_envelope(await attacker.get("/api/messages"), 401, "AUTH_REQUIRED")
        assert (await attacker.get("/health")).status_code == 200
        assert (await other.get("/api/messages", headers=AUTH)).status_code == 200
        wrong = await other.get("/api/messages", headers=key_headers("guess"))
        assert_envelope(wrong, 401, "INVALID_TOKEN")


async def test_the_failures_age_out(make_service: MakeService) -> None:
    app = create_app(await make_service(auth_lockout_failures=3, auth_lockout_window="1s"))
    async with caller(app, ATTACKER) as attacker:
        for guess in range(3):
            wrong = await attacker.get("/api/messages", headers=key_headers(f"guess-{guess}"))
            assert_envelope(wrong, 401, "INVALID_TOKEN")
        retry_after = assert_locked_out(await attacker.get("/api/messages", headers=AUTH), 3)
        assert retry_after == 1
        await asyncio.sleep(retry_after + 0.1)
        assert (await attacker.get("/api/messages", headers=AUTH)).status_code == 200


async def test_an_ipv6_address_counts_with_its_64(make_service: MakeService) -> None:
    """One host holds a whole /64: changing addresses within it does not buy more tries."""
    app = create_app(await make_service(auth_lockout_failures=3))
    for address in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
        async with caller(app, address) as guesser:
            wrong = await guesser.get("/api/messages", headers=key_headers("guess"))
            assert_envelope(wrong, 401, "INVALID_TOKEN")
    async with caller(app, "2001:db8:1:2::9", **AUTH) as same_64:
        assert_locked_out(await same_64.get("/api/messages"), 3)
    async with caller(app, "2001:db8:1:3::1", **AUTH) as next_64:
        assert (await next_64.get("/api/messages")).status_code == 200


async def test_api_keys_and_jwts_count_and_are_refused_alike(make_service: MakeService) -> None:
    """An unknown key, a revoked key and an expired JWT are failures; once locked out, a
    live key from that address gets 429 too, and from another address it works."""
    app = create_app(await make_service(auth_lockout_failures=3))
    async with caller(app, "127.0.0.1", **AUTH) as admin:
        await make_workspace(admin, "ws-a")
        live = (await make_key(admin, "ws-a"))["key"]
        revoked = await make_key(admin, "ws-a")
        response = await admin.delete(f"/api/admin/keys/{revoked['id']}")
        assert response.status_code == 200
    async with caller(app, ATTACKER) as attacker, caller(app, OTHER) as other:
        expired = token(workspace_id="ws-a", role="member", expires_in=-60)
        for credential in ("sk_live_" + "x" * 40, revoked["key"], expired):
            wrong = await attacker.get("/api/messages", headers=key_headers(credential))
            assert_envelope(wrong, 401, "INVALID_TOKEN")
        assert_locked_out(await attacker.get("/api/messages", headers=key_headers(live)), 3)
        assert (await other.get("/api/messages", headers=key_headers(live))).status_code == 200


async def test_the_maylng_routes_are_throttled_in_their_own_shape(
    make_service: MakeService,
) -> None:
    app = create_app(await make_service(auth_lockout_failures=3))
    async with caller(app, "127.0.0.1") as operator:  # a trusted network: may create accounts
        created = await operator.post("/v1/accounts", json={"plan": "free"})
        assert created.status_code == 201, created.text
        account_key = created.json()["api_key"]
    async with caller(app, ATTACKER) as attacker:
        for guess in range(3):
            wrong = await attacker.get("/v1/account", headers=key_headers(f"maylng_{guess:040d}"))
            assert wrong.status_code == 401
            assert wrong.json() == {"error": "Invalid API key"}
        refused = await attacker.get("/v1/account", headers=key_headers(account_key))
        assert refused.status_code == 429
        assert set(refused.json()) == {"error"}
        assert "failed authentication" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1
        # The relay routes share the count: one address, one lockout.
        assert_locked_out(await attacker.get("/api/messages", headers=AUTH), 3)


async def test_metrics_outside_its_networks_is_throttled(make_service: MakeService) -> None:
    app = create_app(await make_service(auth_lockout_failures=2))
    async with caller(app, ATTACKER) as attacker:
        for guess in range(2):
            wrong = await attacker.get("/metrics", headers=key_headers(f"guess-{guess}"))
            assert_envelope(wrong, 401, "INVALID_TOKEN")
        assert_locked_out(await attacker.get("/metrics", headers=AUTH), 2)


async def test_zero_failures_turns_the_lockout_off(make_service: MakeService) -> None:
    app = create_app(await make_service(auth_lockout_failures=0))
    async with caller(app, ATTACKER) as attacker:
        for guess in range(25):
            wrong = await attacker.get("/api/messages", headers=key_headers(f"guess-{guess}"))
            assert_envelope(wrong, 401, "INVALID_TOKEN")
        assert (await attacker.get("/api/messages", headers=AUTH)).status_code == 200


async def test_loopback_is_throttled_on_a_real_relayd(
    live_relay: Server,  # noqa: F811
) -> None:
    """Through uvicorn on 127.0.0.1 with the defaults: loopback is not exempt (a reverse
    proxy on the same host would otherwise switch the lockout off)."""
    async with http(live_relay) as client:
        for guess in range(10):
            wrong = await client.get("/api/messages", headers=key_headers(f"guess-{guess}"))
            assert_envelope(wrong, 401, "INVALID_TOKEN")
        refused = await client.get("/api/messages")  # the client's own admin token
        assert_locked_out(refused, 10)
        assert (await client.get("/health")).status_code == 200
