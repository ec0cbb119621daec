"""A running relayd whose providers point at the loopback fakes (API and relayctl tests).

Import the fixtures into a test module: ``from tests.providers.relay import api, relay, ...``.
Providers: ``mg`` (mailgun, priority 1, weight 70) and ``gm`` (gmail, priority 2,
disabled); ``[health]`` trips on the first failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from daemon.server import Server
from tests.api.conftest import AUTH
from tests.providers.conftest import ServiceAccountKey, make_service_account
from tests.providers.fakes import GoogleFake, MailgunFake


@pytest.fixture(scope="module")
def service_account() -> ServiceAccountKey:
    return make_service_account()


@pytest.fixture
async def mailgun() -> AsyncIterator[MailgunFake]:
    async with MailgunFake() as fake:
        yield fake
    assert fake.problems == []


@pytest.fixture
async def google(service_account: ServiceAccountKey) -> AsyncIterator[GoogleFake]:
    async with GoogleFake(service_account.email, service_account.public_pem, "kid-1") as fake:
        yield fake
    assert fake.problems == []


@pytest.fixture
async def relay(
    make_config: Callable[..., Any],
    db_url: str,
    mailgun: MailgunFake,
    google: GoogleFake,
    service_account: ServiceAccountKey,
) -> AsyncIterator[Server]:
    config = make_config(
        db_url,
        health={"down_after": 1, "degraded_after": 1, "cooldown": "30s"},
        providers={
            "mg": {
                "type": "mailgun",
                "api_key": mailgun.api_key,
                "domain": "mg.example.com",
                "base_url": mailgun.base_url,
                "weight": 70,
            },
            "gm": {
                "type": "gmail",
                "service_account_json": service_account.text,
                "base_url": google.base_url,
                "token_url": google.token_url,
                "priority": 2,
                "enabled": False,
            },
        },
    )
    server = Server(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def api(relay: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay.base_url, headers=AUTH, timeout=10) as client:
        yield client
