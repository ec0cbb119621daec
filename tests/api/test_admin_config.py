"""GET/PUT /api/admin/config: live config, validation like the file, persistence, restarts."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from daemon.server import Server
from daemon.service import RelayService
from tests.api.conftest import AUTH, TOKEN, assert_envelope
from tests.conftest import ConfigFactory, StartServer


async def test_get_returns_every_section_masked_with_sources(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    response = await client.get("/api/admin/config")
    assert response.status_code == 200, response.text
    body = response.json()
    data = body["data"]
    assert {"smtp", "queue", "rate_limits", "providers", "http", "database"} <= set(data)
    assert data["queue"]["batch_size"] == 50
    assert data["queue"]["process_interval"] == "1s"
    assert data["smtp"]["max_size"] == 1024 * 1024
    assert data["providers"]["outbox"]["enabled"] is True
    assert data["auth"]["admin_token"] == "********"
    assert TOKEN not in response.text
    sources = body["sources"]
    assert sources["queue.process_interval"] == "file"
    assert sources["queue.batch_size"] == "default"


async def test_put_applies_live_and_reports_no_restart(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    update = {"queue": {"batch_size": 100, "process_interval": "15s"}}
    update["rate_limits"] = {"global_daily": 150000}
    response = await client.put("/api/admin/config", json=update)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["message"] == "Configuration updated successfully"
    assert body["restart_required"] is False
    assert body["data"]["changed"] == [
        "queue.batch_size",
        "queue.process_interval",
        "rate_limits.global_daily",
    ]
    assert service.config.queue.batch_size == 100
    assert service.config.queue.process_interval.seconds == 15
    assert service.config.rate_limits.global_daily == 150000
    shown = (await client.get("/api/admin/config")).json()
    assert shown["data"]["queue"]["batch_size"] == 100
    assert shown["sources"]["queue.batch_size"] == "runtime"
    assert shown["sources"]["queue.max_retries"] == "default"


async def test_put_provider_weight_is_live_but_port_needs_restart(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    live = await client.put("/api/admin/config", json={"providers": {"outbox": {"weight": 30}}})
    assert live.json()["restart_required"] is False, live.text
    assert service.config.providers["outbox"].weight == 30
    port = await client.put("/api/admin/config", json={"http": {"port": 8099}})
    assert port.status_code == 200
    assert port.json()["restart_required"] is True
    assert port.json()["data"]["restart_required_for"] == ["http.port"]
    # The other [http] keys are read at each request: live (they said "restart").
    http = {"metrics_networks": ["10.0.0.0/8"], "auth_lockout_failures": 3}
    lockout = await client.put("/api/admin/config", json={"http": http})
    assert lockout.json()["restart_required"] is False, lockout.text
    assert service.config.http.auth_lockout_failures == 3
    database = await client.put(
        "/api/admin/config", json={"database": {"url": "sqlite:////tmp/other.db"}}
    )
    assert database.json()["restart_required"] is True
    # Setting a value it already has changes nothing, so no restart either.
    same = await client.put("/api/admin/config", json={"queue": {"max_retries": 3}})
    assert same.json()["restart_required"] is False
    assert same.json()["data"]["changed"] == []


@pytest.mark.parametrize(
    ("update", "field", "fragment"),
    [
        ({"queue": {"batch_size": 0}}, "queue.batch_size", "at least 1"),
        ({"queue": {"batch_size": "many"}}, "queue.batch_size", "integer"),
        ({"queue": {"bogus": 1}}, "queue.bogus", "unknown setting"),
        ({"smtp": {"port": 70000}}, "smtp.port", "port"),
        ({"queue": {"process_interval": "soon"}}, "queue.process_interval", "duration"),
        # Past what datetime arithmetic and a database integer hold: once stored, these made
        # POST /v1/email-addresses answer 500 and stopped the webhook sender.
        (
            {"accounts": {"temporary_lifetime": "99999999999d"}},
            "accounts.temporary_lifetime",
            "36500d",
        ),
        ({"webhooks": {"batch_size": 10**23}}, "webhooks.batch_size", "must be between"),
        ({"auth": {"admin_token": "x"}}, "auth.admin_token", "cannot be changed"),
        ({"data_dir": "/tmp"}, "data_dir", "cannot be changed"),
        ({"providers": {"outbox": {"password": "x"}}}, "providers.outbox.password", "secrets"),
        ({"providers": {"nope": {"enabled": False}}}, "providers.nope.enabled", "no provider"),
        ({"rate_limits": {"default_plan": "gold"}}, "rate_limits.default_plan", "one of"),
        ({"providers": "outbox"}, "providers", "expected"),
        ({"queue": 1, "queue.batch_size": 2}, "queue.batch_size", "conflicts"),
        ([], "body", "JSON object"),
    ],
)
async def test_put_refuses_bad_values_naming_the_key(
    client: httpx.AsyncClient, service: RelayService, update: Any, field: str, fragment: str
) -> None:
    response = await client.put("/api/admin/config", json=update)
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"]["field"] == field
    assert fragment in error["message"]
    assert service.config.queue.batch_size == 50  # nothing applied


async def test_null_drops_a_runtime_override(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    await client.put("/api/admin/config", json={"queue": {"batch_size": 7}})
    assert service.config.queue.batch_size == 7
    reset = await client.put("/api/admin/config", json={"queue": {"batch_size": None}})
    assert reset.json()["data"]["changed"] == ["queue.batch_size"]
    assert service.config.queue.batch_size == 50
    shown = (await client.get("/api/admin/config")).json()
    assert shown["sources"]["queue.batch_size"] == "default"


async def test_needs_the_admin_token(anon: httpx.AsyncClient) -> None:
    assert_envelope(await anon.get("/api/admin/config"), 401, "AUTH_REQUIRED")
    wrong = await anon.put(
        "/api/admin/config", json={"queue": {"batch_size": 2}}, headers={"X-API-Key": "nope"}
    )
    assert_envelope(wrong, 401, "INVALID_TOKEN")
    scoped = await anon.put(
        "/api/admin/config",
        json={"queue": {"batch_size": 2}},
        headers={**AUTH, "X-Workspace-ID": "ws-1"},
    )
    assert_envelope(scoped, 403, "INSUFFICIENT_PERMISSIONS")


async def test_runtime_changes_survive_a_restart(start_server: StartServer) -> None:
    first = await start_server()
    async with httpx.AsyncClient(base_url=first.base_url, headers=AUTH) as http:
        response = await http.put(
            "/api/admin/config",
            json={"queue": {"batch_size": 77}, "smtp": {"max_size": 2048}},
        )
    assert response.json()["restart_required"] is True  # smtp.max_size binds at start
    await first.stop()

    second = await start_server()
    assert second.config.queue.batch_size == 77
    assert second.config.smtp.max_size == 2048
    assert second.config.source("queue.batch_size") == "runtime"
    assert second.config.source("queue.process_interval") == "file"
    async with httpx.AsyncClient(base_url=second.base_url, headers=AUTH) as http:
        shown = (await http.get("/api/admin/config")).json()
        # The max_size now applies to the API too: a larger body is refused.
        big = await http.post(
            "/api/messages",
            json={
                "from": "a@example.com",
                "to": ["b@example.org"],
                "subject": "s",
                "text_body": "x" * 4096,
            },
        )
    assert shown["data"]["queue"]["batch_size"] == 77
    assert shown["sources"]["smtp.max_size"] == "runtime"
    assert_envelope(big, 413, "MESSAGE_TOO_LARGE")


async def test_sighup_reload_keeps_runtime_changes(db_url: str, make_config: ConfigFactory) -> None:
    config = make_config(db_url)
    server = Server(config, reload=lambda: make_config(db_url, queue={"max_retries": 9}))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH) as http:
            await http.put("/api/admin/config", json={"queue": {"batch_size": 5}})
        server.reload()
        assert server.service.config.queue.max_retries == 9  # from the re-read file
        assert server.service.config.queue.batch_size == 5  # the runtime layer stays on top
    finally:
        await server.stop()
