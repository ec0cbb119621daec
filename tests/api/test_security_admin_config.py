"""PUT /api/admin/config cannot send a provider's credentials elsewhere: the keys that say
where a provider connects (and so where its password or API key goes) are file-only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.service import RelayService
from tests.api.conftest import AUTH, assert_envelope

PROVIDERS = {
    "up": {
        "type": "smtp",
        "host": "smtp.upstream.example",
        "username": "relay",
        "password": "upstream-password",
    },
    "mg": {"type": "mailgun", "api_key": "key-mailgun", "domain": "mg.example.com"},
    "sg": {"type": "sendgrid", "api_key": "SG.key"},
}


@pytest.fixture
async def admin(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> AsyncIterator[tuple[httpx.AsyncClient, RelayService]]:
    service = RelayService(make_config(db_url, providers=PROVIDERS), engine)
    await service.start()
    transport = httpx.ASGITransport(app=create_app(service))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://relay.test", headers=AUTH
        ) as client:
            yield client, service
    finally:
        await service.close()


@pytest.mark.parametrize(
    ("provider", "key", "value"),
    [
        ("up", "host", "attacker.example"),
        ("up", "port", 2525),
        ("up", "tls", "none"),
        ("up", "tls_verify", False),
        ("mg", "base_url", "https://attacker.example"),
        ("mg", "region", "EU"),
        ("sg", "base_url", "https://attacker.example"),
    ],
)
async def test_where_credentials_go_cannot_change_through_the_api(
    admin: tuple[httpx.AsyncClient, RelayService], provider: str, key: str, value: Any
) -> None:
    client, service = admin
    response = await client.put("/api/admin/config", json={"providers": {provider: {key: value}}})
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"]["field"] == f"providers.{provider}.{key}"
    assert "config file" in error["message"]
    assert service.runtime_layer == {}  # nothing stored for the next start either
    config = (await client.get("/api/admin/config")).json()["data"]
    assert config["providers"]["up"]["host"] == "smtp.upstream.example"


async def test_routing_keys_still_change_live(
    admin: tuple[httpx.AsyncClient, RelayService],
) -> None:
    client, service = admin
    response = await client.put(
        "/api/admin/config", json={"providers": {"up": {"enabled": False, "priority": 5}}}
    )
    assert response.status_code == 200, response.text
    assert service.config.providers["up"].enabled is False


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://relay@db.example/relay?password=Query-Secret&sslmode=require",
            "postgresql+psycopg://relay@db.example/relay?password=********&sslmode=require",
        ),
        (
            "postgresql+psycopg://relay:User-Secret@db.example/relay?sslpassword=Key-Secret",
            "postgresql+psycopg://relay:********@db.example/relay?sslpassword=********",
        ),
    ],
)
async def test_database_password_in_the_query_is_masked(
    engine: Engine, make_config: Callable[..., Any], url: str, shown: str
) -> None:
    service = RelayService(make_config(url), engine)  # the URL is shown, never connected to
    await service.start()
    transport = httpx.ASGITransport(app=create_app(service))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://relay.test", headers=AUTH
        ) as client:
            response = await client.get("/api/admin/config")
    finally:
        await service.close()
    assert response.json()["data"]["database"]["url"] == shown
    assert "Secret" not in response.text
