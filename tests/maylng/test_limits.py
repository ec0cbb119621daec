"""The plan table: emails per hour/day/month and API calls per hour, under concurrency too."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from daemon.service import RelayService
from tests.maylng.conftest import Accounts, counter, set_counter, window_start

SENDING = {
    "free": {"hour": 100, "day": 1000, "month": 1000},
    "pro": {"hour": 1000, "day": 10000, "month": 50000},
    "enterprise": {"hour": 10000, "day": 100000, "month": 1000000},
}
API_CALLS = {"free": 1000, "pro": 10000, "enterprise": 100000}


@pytest.fixture(autouse=True)
def clock_stands_still(service: RelayService) -> None:
    """The windows are the clock's hour, day and month: a test that ran across the turn of
    one would find its counter left behind. The service's clock stands still here."""
    now = service.clock()
    service.clock = lambda: now


@pytest.mark.parametrize("window", ["hour", "day", "month"])
@pytest.mark.parametrize("plan", ["free", "pro", "enterprise"])
async def test_sending_limits_of_each_plan(
    accounts: Accounts, service: RelayService, plan: str, window: str
) -> None:
    account, auth = await accounts.create(plan)
    address = await accounts.address(auth)
    limit = SENDING[plan][window]
    key = f"maylng:mail:{account['id']}:{window}"
    start = window_start(window, service.clock())
    await set_counter(service, key, start, limit - 1)
    last = await accounts.send(auth, address["id"])
    assert last.status_code == 201, last.text
    refused = await accounts.send(auth, address["id"])
    assert refused.status_code == 429
    assert refused.json() == {"error": "Rate limit exceeded"}
    assert int(refused.headers["Retry-After"]) >= 1
    assert "X-RateLimit-Limit" in refused.headers
    assert await counter(service, key, start) == limit
    # The refused email was not stored, and the other windows were not charged for it.
    listed = await accounts.client.get("/v1/emails", headers=auth)
    assert len(listed.json()["emails"]) == 1
    for other in {"hour", "day", "month"} - {window}:
        other_start = window_start(other, service.clock())
        assert await counter(service, f"maylng:mail:{account['id']}:{other}", other_start) == 1


@pytest.mark.parametrize("plan", ["free", "pro", "enterprise"])
async def test_api_call_limit_of_each_plan(
    accounts: Accounts, service: RelayService, plan: str
) -> None:
    client = accounts.client
    account, auth = await accounts.create(plan)
    first = await client.get("/v1/account", headers=auth)
    assert first.headers["X-RateLimit-Limit"] == str(API_CALLS[plan])
    assert first.headers["X-RateLimit-Remaining"] == str(API_CALLS[plan] - 1)
    assert int(first.headers["X-RateLimit-Reset"]) > 0
    start = window_start("hour", service.clock())
    await set_counter(service, f"maylng:api:{account['id']}", start, API_CALLS[plan] - 1)
    last = await client.get("/v1/email-addresses", headers=auth)
    assert last.status_code == 200
    assert last.headers["X-RateLimit-Remaining"] == "0"
    for method, path in (("GET", "/v1/account"), ("POST", "/v1/emails/send")):
        refused = await client.request(method, path, headers=auth, json={})
        assert refused.status_code == 429
        assert refused.json() == {"error": "Rate limit exceeded"}
        assert refused.headers["X-RateLimit-Remaining"] == "0"
    # The admin token is exempt: it sees the window without using it up.
    admin = await client.get(
        "/v1/account",
        headers={"Authorization": "Bearer test-admin-token", "X-Workspace-ID": account["id"]},
    )
    assert admin.status_code == 200
    assert admin.headers["X-RateLimit-Remaining"] == "0"


async def test_concurrent_sends_never_pass_the_limit(
    accounts: Accounts, service: RelayService
) -> None:
    account, auth = await accounts.create("free")
    address = await accounts.address(auth)
    start = window_start("hour", service.clock())
    key = f"maylng:mail:{account['id']}:hour"
    await set_counter(service, key, start, 100 - 3)
    results = await asyncio.gather(*(accounts.send(auth, address["id"]) for _ in range(10)))
    codes = sorted(r.status_code for r in results)
    assert codes == [201] * 3 + [429] * 7
    assert await counter(service, key, start) == 100


async def test_every_response_carries_rate_limit_headers(accounts: Accounts) -> None:
    client = accounts.client
    _, auth = await accounts.create()
    address = await accounts.address(auth)
    email = (await accounts.send(auth, address["id"])).json()
    calls: list[httpx.Response] = [
        await client.post("/v1/accounts", json={}),
        await client.get("/v1/account", headers=auth),
        await client.get("/v1/email-addresses", headers=auth),
        await client.get(f"/v1/email-addresses/{address['id']}", headers=auth),
        await client.get("/v1/emails", headers=auth),
        await client.get(f"/v1/emails/{email['id']}", headers=auth),
        await client.get(f"/v1/emails/{email['id']}/status", headers=auth),
        await client.get("/v1/emails/unknown", headers=auth),
        await client.get("/v1/account"),
    ]
    for response in calls:
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            assert name in response.headers, (response.request.url, name)
