"""Who counts as a trusted client on the HTTP side: the connecting address as the listener
reports it, IPv4-mapped IPv6 from a dual-stack listener included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from daemon.api import create_app
from daemon.service import RelayService


@pytest.fixture
def client_at(service: RelayService) -> Callable[[str], httpx.AsyncClient]:
    """An anonymous client whose connection comes from ``host``."""

    def make(host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=create_app(service), client=(host, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://relay.test")

    return make


@pytest.fixture
async def opened() -> AsyncIterator[list[httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []
    yield clients
    for client in clients:
        await client.aclose()


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 201),
        ("::ffff:127.0.0.1", 201),  # what a listener bound to "::" reports for 127.0.0.1
        ("::1", 201),
        ("::ffff:10.0.0.1", 403),
        ("192.0.2.7", 403),
    ],
)
async def test_account_signup_trusts_the_connecting_address(
    client_at: Callable[[str], httpx.AsyncClient],
    opened: list[httpx.AsyncClient],
    host: str,
    status: int,
) -> None:
    client = client_at(host)
    opened.append(client)
    response = await client.post("/v1/accounts", json={"plan": "free"})
    assert response.status_code == status, response.text
