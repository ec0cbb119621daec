"""POST/GET /v1/email-addresses and GET/PATCH/DELETE /v1/email-addresses/{id}."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from daemon.jobs import Jobs
from daemon.service import RelayService
from daemon.store.accounts import email_addresses
from tests.maylng.conftest import Accounts

ADDRESS_KEYS = {
    "id",
    "email",
    "type",
    "prefix",
    "domain",
    "status",
    "expires_at",
    "metadata",
    "created_at",
    "updated_at",
}


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_create_temporary_address_as_the_reference_shows(accounts: Accounts) -> None:
    _, auth = await accounts.create()
    expires = _at(timedelta(days=2))
    body = {
        "type": "temporary",
        "prefix": "my-custom-prefix",
        "domain": "mail.example.com",
        "expires_at": expires,
        "metadata": {"purpose": "newsletter", "category": "marketing"},
    }
    response = await accounts.client.post("/v1/email-addresses", headers=auth, json=body)
    assert response.status_code == 201
    address = response.json()
    assert set(address) == ADDRESS_KEYS
    assert address["email"] == "my-custom-prefix@mail.example.com"
    assert address["type"] == "temporary"
    assert address["prefix"] == "my-custom-prefix"
    assert address["domain"] == "mail.example.com"
    assert address["status"] == "active"
    assert address["expires_at"] == expires
    assert address["metadata"] == {"purpose": "newsletter", "category": "marketing"}
    uuid.UUID(address["id"])
    assert "X-RateLimit-Remaining" in response.headers


async def test_defaults_prefix_generated_domain_and_lifetime(accounts: Accounts) -> None:
    _, auth = await accounts.create()
    before = datetime.now(UTC)
    omitted = await accounts.address(auth, type="temporary")
    null = await accounts.address(auth, type="temporary", prefix=None)  # the JS client's null
    for address in (omitted, null):
        assert address["domain"] == "mail.example.com"
        assert len(address["prefix"]) == 12 and address["prefix"].isalnum()
        assert address["email"] == f"{address['prefix']}@mail.example.com"
        expires = datetime.fromisoformat(address["expires_at"])
        assert timedelta(hours=23, minutes=59) < expires - before < timedelta(hours=24, minutes=1)
    assert omitted["prefix"] != null["prefix"]
    persistent = await accounts.address(auth, type="persistent", domain="ALT.test", prefix="Info")
    assert persistent["expires_at"] is None
    assert persistent["email"] == "info@alt.test"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "type is required"),
        ({"type": "forever"}, 'type must be "temporary" or "persistent"'),
        ({"type": "temporary", "domain": "evil.example"}, "domain must be one of"),
        ({"type": "temporary", "prefix": "bad prefix"}, "prefix must be 1-64"),
        ({"type": "temporary", "prefix": ".dot"}, "prefix must be 1-64"),
        ({"type": "temporary", "prefix": "news\n"}, "prefix must be 1-64"),
        ({"type": "temporary", "prefix": 7}, "prefix must be 1-64"),
        ({"type": "persistent", "expires_at": "2030-01-01T00:00:00Z"}, "temporary addresses only"),
        ({"type": "temporary", "expires_at": "tomorrow"}, "expires_at must be an ISO 8601"),
        ({"type": "temporary", "expires_at": "2000-01-01T00:00:00Z"}, "must be in the future"),
        ({"type": "temporary", "metadata": [1]}, "metadata must be an object"),
        ({"type": "temporary", "colour": "red"}, "unknown field(s): colour"),
    ],
)
async def test_invalid_addresses_are_400_naming_the_field(
    accounts: Accounts, body: dict[str, Any], error: str
) -> None:
    _, auth = await accounts.create()
    response = await accounts.client.post("/v1/email-addresses", headers=auth, json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert error in response.json()["error"]


async def test_an_address_is_unique_across_accounts(accounts: Accounts) -> None:
    _, first = await accounts.create()
    _, second = await accounts.create()
    await accounts.address(first, prefix="hello")
    taken = await accounts.client.post(
        "/v1/email-addresses", headers=second, json={"type": "persistent", "prefix": "hello"}
    )
    assert taken.status_code == 409
    assert taken.json() == {"error": "email address hello@mail.example.com is already taken"}


async def _fill(service: RelayService, workspace_id: str, count: int) -> None:
    """Give a workspace ``count`` addresses directly (faster than hundreds of calls)."""
    now = service.clock()
    rows = [
        {
            "id": str(uuid.uuid4()),
            "workspace_id": workspace_id,
            "email": f"fill-{i}-{workspace_id[:8]}@mail.example.com",
            "prefix": f"fill-{i}-{workspace_id[:8]}",
            "domain": "mail.example.com",
            "type": "persistent",
            "status": "active",
            "metadata": {},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    await service.committer.run(lambda c: c.execute(email_addresses.insert(), rows))


@pytest.mark.parametrize(("plan", "limit"), [("free", 5), ("pro", 50), ("enterprise", 500)])
async def test_address_limit_of_each_plan(
    accounts: Accounts, service: RelayService, plan: str, limit: int
) -> None:
    account, auth = await accounts.create(plan)
    await _fill(service, account["id"], limit - 1)
    await accounts.address(auth)  # the last one the plan allows
    refused = await accounts.client.post(
        "/v1/email-addresses", headers=auth, json={"type": "persistent"}
    )
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("email address limit reached")
    assert str(limit) in refused.json()["error"]


async def test_downgrade_keeps_addresses_but_allows_no_new_ones(accounts: Accounts) -> None:
    client = accounts.client
    _, auth = await accounts.create("pro")
    for _ in range(6):
        await accounts.address(auth)
    await client.patch("/v1/account", headers=auth, json={"plan": "free"})
    listed = await client.get("/v1/email-addresses", headers=auth)
    assert len(listed.json()["email_addresses"]) == 6
    refused = await client.post("/v1/email-addresses", headers=auth, json={"type": "persistent"})
    assert refused.status_code == 403
    # Deleting down to below the limit makes room again.
    for address in listed.json()["email_addresses"][:2]:
        deleted = await client.delete(f"/v1/email-addresses/{address['id']}", headers=auth)
        assert deleted.status_code == 204
    assert (
        await client.post("/v1/email-addresses", headers=auth, json={"type": "persistent"})
    ).status_code == 201


async def test_list_get_patch_delete(accounts: Accounts) -> None:
    client = accounts.client
    _, auth = await accounts.create()
    first = await accounts.address(auth, type="temporary", prefix="one")
    second = await accounts.address(auth, prefix="two")
    listed = await client.get("/v1/email-addresses", headers=auth)
    assert listed.status_code == 200
    assert [a["id"] for a in listed.json()["email_addresses"]] == [first["id"], second["id"]]
    assert set(listed.json()) == {"email_addresses"}
    shown = await client.get(f"/v1/email-addresses/{first['id']}", headers=auth)
    assert shown.json() == first

    later = _at(timedelta(days=30))
    patched = await client.patch(
        f"/v1/email-addresses/{first['id']}",
        headers=auth,
        json={
            "status": "disabled",
            "expires_at": later,
            "metadata": {"updated_purpose": "testing"},
        },
    )
    assert patched.status_code == 200
    body = patched.json()
    assert body["status"] == "disabled"
    assert body["expires_at"] == later
    assert body["metadata"] == {"updated_purpose": "testing"}
    assert body["email"] == first["email"]

    not_temporary = await client.patch(
        f"/v1/email-addresses/{second['id']}", headers=auth, json={"expires_at": later}
    )
    assert not_temporary.status_code == 400
    bad_status = await client.patch(
        f"/v1/email-addresses/{second['id']}", headers=auth, json={"status": "gone"}
    )
    assert bad_status.status_code == 400
    assert bad_status.json() == {"error": "status must be one of active, expired, disabled"}
    immutable = await client.patch(
        f"/v1/email-addresses/{second['id']}", headers=auth, json={"prefix": "x"}
    )
    assert immutable.status_code == 400
    assert immutable.json() == {"error": "unknown field(s): prefix"}

    deleted = await client.delete(f"/v1/email-addresses/{second['id']}", headers=auth)
    assert deleted.status_code == 204
    for method in ("GET", "PATCH", "DELETE"):
        gone = await client.request(
            method, f"/v1/email-addresses/{second['id']}", headers=auth, json={}
        )
        assert gone.status_code == 404
        assert gone.json() == {"error": "Email address not found"}
    malformed = await client.get("/v1/email-addresses/not-a-uuid", headers=auth)
    assert malformed.status_code == 404


async def test_another_account_cannot_see_or_change_an_address(accounts: Accounts) -> None:
    client = accounts.client
    _, owner = await accounts.create()
    _, intruder = await accounts.create()
    address = await accounts.address(owner)
    path = f"/v1/email-addresses/{address['id']}"
    assert (await client.get(path, headers=intruder)).status_code == 404
    patch = await client.patch(path, headers=intruder, json={"status": "disabled"})
    assert patch.status_code == 404
    assert (await client.delete(path, headers=intruder)).status_code == 404
    assert (await client.get("/v1/email-addresses", headers=intruder)).json() == {
        "email_addresses": []
    }
    assert (await client.get(path, headers=owner)).json()["status"] == "active"


async def test_expiry_by_the_scheduler_job(accounts: Accounts, service: RelayService) -> None:
    client = accounts.client
    _, auth = await accounts.create()
    # Not due for a minute (the first run below must not find it due, however slow the
    # requests before it are); the clock is then moved past that.
    soon = await accounts.address(auth, type="temporary", expires_at=_at(timedelta(minutes=1)))
    lasting = await accounts.address(auth, type="temporary")
    persistent = await accounts.address(auth)
    jobs = Jobs(service)
    assert await jobs.expire_addresses() == 0
    later = service.clock() + timedelta(minutes=2)
    service.clock = lambda: later  # time passes: the job's next run finds it due
    assert await jobs.expire_addresses() == 1
    stored = await service.reader.run(
        lambda c: c.execute(
            email_addresses.select().where(email_addresses.c.id == soon["id"])
        ).one()
    )
    assert stored.status == "expired"
    shown = await client.get(f"/v1/email-addresses/{soon['id']}", headers=auth)
    assert shown.json()["status"] == "expired"
    for other in (lasting, persistent):
        still = await client.get(f"/v1/email-addresses/{other['id']}", headers=auth)
        assert still.json()["status"] == "active"
    # Reactivating needs a future expires_at; moving it forward brings the address back.
    refused = await client.patch(
        f"/v1/email-addresses/{soon['id']}", headers=auth, json={"status": "active"}
    )
    assert refused.status_code == 400
    revived = await client.patch(
        f"/v1/email-addresses/{soon['id']}",
        headers=auth,
        json={"expires_at": (later + timedelta(hours=1)).isoformat()},
    )
    assert revived.json()["status"] == "active"
