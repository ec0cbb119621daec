"""The app as a whole: /health, request ids, route errors, /v1 aliases, no bare 500s."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import daemon
from daemon.api import create_app
from daemon.service import RelayService
from daemon.store.engine import make_engine
from tests.api.conftest import AUTH, assert_envelope, message, send


async def test_health_is_public_and_ok(anon: httpx.AsyncClient) -> None:
    response = await anon.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["service"] == "relayd"
    assert body["version"] == daemon.__version__
    assert body["database"] == "ok"


async def test_health_degraded_when_database_does_not_answer(
    tmp_path: Path, make_config: Any
) -> None:
    # A directory is not a database file: every connection attempt fails.
    broken = make_engine(f"sqlite:///{tmp_path}")
    service = RelayService(make_config(f"sqlite:///{tmp_path}"), broken)
    await service.start()
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            health = await client.get("/health")
            listing = await client.get("/api/messages", headers=AUTH)
            posted = await client.post("/api/messages", headers=AUTH, json=message())
    finally:
        await service.close()
        broken.dispose()
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"
    assert health.json()["database"] == "unavailable"
    assert_envelope(listing, 500, "DATABASE_ERROR")
    assert_envelope(posted, 500, "DATABASE_ERROR")


async def test_draining_daemon_is_degraded_and_refuses_new_mail(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    service.accepting = False
    health = await client.get("/health")
    assert health.status_code == 503
    assert health.json()["accepting"] is False
    response = await client.post("/api/messages", json=message())
    assert_envelope(response, 503, "MAINTENANCE_MODE")
    assert response.headers["Retry-After"] == "30"


async def test_request_id_is_echoed_when_sane_and_generated_otherwise(
    client: httpx.AsyncClient,
) -> None:
    echoed = await client.get("/health", headers={"X-Request-ID": "trace-42.a"})
    assert echoed.headers["X-Request-ID"] == "trace-42.a"
    generated = await client.get("/health")
    assert generated.headers["X-Request-ID"].startswith("req-")
    insane = await client.get("/health", headers={"X-Request-ID": "x" * 300})
    assert insane.headers["X-Request-ID"].startswith("req-")
    spaced = await client.get("/api/nothing", headers={"X-Request-ID": "a b"})
    assert spaced.headers["X-Request-ID"].startswith("req-")
    assert spaced.json()["error"]["request_id"] == spaced.headers["X-Request-ID"]


async def test_unknown_route_and_wrong_method_use_the_envelope(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/api/no-such-thing")
    assert assert_envelope(missing, 404, "ROUTE_NOT_FOUND")["details"] == {
        "path": "/api/no-such-thing"
    }
    assert_envelope(await client.get("/elsewhere"), 404, "ROUTE_NOT_FOUND")
    wrong = await client.patch("/api/messages")
    error = assert_envelope(wrong, 405, "METHOD_NOT_ALLOWED")
    assert {"GET", "POST"} <= set(error["details"]["allowed_methods"])
    assert "POST" in wrong.headers["Allow"]
    assert_envelope(await client.post("/api/messages/msg-x/retry"), 405, "METHOD_NOT_ALLOWED")


async def test_v1_aliases_serve_the_same_messages(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json=message(subject="via v1"))
    assert response.status_code == 202
    message_id = response.json()["data"]["message_id"]
    listed = await client.get("/v1/messages")
    assert [m["id"] for m in listed.json()["data"]["messages"]] == [message_id]
    assert (await client.get(f"/v1/messages/{message_id}")).json()["data"]["subject"] == "via v1"
    assert (await client.get(f"/api/messages/{message_id}")).status_code == 200
    assert (await client.delete(f"/v1/messages/{message_id}")).status_code == 200
    retried = await client.put(f"/v1/messages/{message_id}/retry")
    assert_envelope(retried, 409, "INVALID_STATE")


async def test_an_unexpected_exception_becomes_an_internal_error_envelope(
    service: RelayService, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("boom\nsecond line")

    app = create_app(service)
    app.router.routes.append(Route("/broken", broken))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with caplog.at_level(logging.INFO, logger="relayd.api"):
            response = await client.get("/broken", headers={"X-Request-ID": "req-trace"})
    error = assert_envelope(response, 500, "INTERNAL_ERROR")
    assert "boom" not in response.text  # nothing internal leaks to the client
    assert error["request_id"] == "req-trace"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1
    assert "req-trace" in lines[0]
    assert "RuntimeError" in lines[0]
    assert "second line" not in lines[0]


async def test_head_on_health_and_list(client: httpx.AsyncClient) -> None:
    await send(client)
    assert (await client.head("/health")).status_code == 200
    head = await client.head("/api/messages")
    assert head.status_code == 200
    assert head.headers["X-Total-Count"] == "1"
