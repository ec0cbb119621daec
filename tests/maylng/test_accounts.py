"""POST /v1/accounts, GET/PATCH/DELETE /v1/account, POST /v1/account/api-key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.service import RelayService
from daemon.store.models import messages
from daemon.store.tenancy import api_keys
from daemon.tenancy import hash_key
from tests.maylng.conftest import ADMIN, Accounts

ACCOUNT_KEYS = {
    "id",
    "plan",
    "email_limit_per_month",
    "email_address_limit",
    "created_at",
    "updated_at",
}


@pytest.mark.parametrize(
    ("plan", "per_month", "addresses"),
    [("free", 1000, 5), ("pro", 50000, 50), ("enterprise", 1000000, 500)],
)
async def test_create_account_returns_the_key_once(
    client: httpx.AsyncClient, engine: Engine, plan: str, per_month: int, addresses: int
) -> None:
    response = await client.post("/v1/accounts", json={"plan": plan})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == ACCOUNT_KEYS | {"api_key"}
    assert body["plan"] == plan
    assert body["email_limit_per_month"] == per_month
    assert body["email_address_limit"] == addresses
    assert body["created_at"].endswith("Z")
    key = body["api_key"]
    assert key.startswith("maylng_") and len(key) == len("maylng_") + 48
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(api_keys).where(api_keys.c.workspace_id == body["id"])
        ).one()
    assert stored.key_hash == hash_key(key)  # only the hash is kept
    assert stored.prefix == key[:15]
    shown = await client.get("/v1/account", headers={"Authorization": f"Bearer {key}"})
    assert shown.status_code == 200
    assert shown.json() == {k: body[k] for k in ACCOUNT_KEYS}
    assert "api_key" not in shown.json()


async def test_plan_defaults_to_free_and_is_checked(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/accounts", json={})
    assert response.status_code == 201
    assert response.json()["plan"] == "free"
    empty = await client.post("/v1/accounts")
    assert empty.status_code == 201
    bad = await client.post("/v1/accounts", json={"plan": "gold"})
    assert bad.status_code == 400
    assert bad.json() == {"error": "plan must be one of free, pro, enterprise"}
    unknown = await client.post("/v1/accounts", json={"plan": "free", "name": "x"})
    assert unknown.status_code == 400
    assert unknown.json() == {"error": "unknown field(s): name"}
    malformed = await client.post("/v1/accounts", content=b"{oops")
    assert malformed.status_code == 400
    assert malformed.json()["error"].startswith("Malformed JSON body")


async def _from(
    service: RelayService, host: str, plan: str = "free", **kwargs: Any
) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(service), client=(host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as http:
        return await http.post("/v1/accounts", json={"plan": plan}, **kwargs)


async def test_signup_is_closed_to_strangers_unless_configured(
    service: RelayService, make_config: Callable[..., Any], db_url: str, engine: Engine
) -> None:
    stranger = await _from(service, "203.0.113.9")
    assert stranger.status_code == 403
    assert "trusted network" in stranger.json()["error"]
    with_admin = await _from(service, "203.0.113.9", headers=ADMIN)
    assert with_admin.status_code == 201
    with_other_key = await _from(
        service, "203.0.113.9", headers={"Authorization": f"Bearer {with_admin.json()['api_key']}"}
    )
    assert with_other_key.status_code == 403
    ipv6_loopback = await _from(service, "::1")
    assert ipv6_loopback.status_code == 201

    open_service = RelayService(make_config(db_url, accounts={"open_signup": True}), engine)
    await open_service.start()
    try:
        assert (await _from(open_service, "203.0.113.9")).status_code == 201
    finally:
        await open_service.close()


async def test_missing_and_invalid_keys(client: httpx.AsyncClient) -> None:
    for path in ("/v1/account", "/v1/email-addresses", "/v1/emails"):
        missing = await client.get(path)
        assert missing.status_code == 401
        assert missing.json() == {"error": "Missing API key"}
        assert "X-RateLimit-Limit" in missing.headers
        wrong = await client.get(path, headers={"Authorization": "Bearer maylng_0000"})
        assert wrong.status_code == 401
        assert wrong.json() == {"error": "Invalid API key"}
    scheme = await client.get("/v1/account", headers={"Authorization": "Basic abc"})
    assert scheme.status_code == 401
    assert scheme.json() == {"error": "Invalid API key"}


async def test_plan_change_takes_effect_at_once(accounts: Accounts) -> None:
    client = accounts.client
    created, auth = await accounts.create("free")
    first = await client.get("/v1/account", headers=auth)
    assert first.headers["X-RateLimit-Limit"] == "1000"
    response = await client.patch("/v1/account", headers=auth, json={"plan": "pro"})
    assert response.status_code == 200
    body = response.json()
    assert body["plan"] == "pro"
    assert body["email_limit_per_month"] == 50000
    assert body["email_address_limit"] == 50
    assert body["id"] == created["id"]
    after = await client.get("/v1/account", headers=auth)
    assert after.json()["plan"] == "pro"
    assert after.headers["X-RateLimit-Limit"] == "10000"
    same = await client.patch("/v1/account", headers=auth, json={})
    assert same.status_code == 200 and same.json()["plan"] == "pro"
    bad = await client.patch("/v1/account", headers=auth, json={"plan": "basic"})
    assert bad.status_code == 400
    assert bad.json() == {"error": "plan must be one of free, pro, enterprise"}


async def test_enterprise_is_the_operators_to_hand_out(
    accounts: Accounts,
    service: RelayService,
    make_config: Callable[..., Any],
    db_url: str,
    engine: Engine,
) -> None:
    client = accounts.client
    created, auth = await accounts.create("free")
    upgrade = await client.patch("/v1/account", headers=auth, json={"plan": "enterprise"})
    assert upgrade.status_code == 403
    assert upgrade.json() == {
        "error": "the enterprise plan is assigned by the operator (use the admin token)"
    }
    assert (await client.get("/v1/account", headers=auth)).json()["plan"] == "free"
    by_admin = await client.patch(
        "/v1/account",
        headers={**ADMIN, "X-Workspace-ID": created["id"]},
        json={"plan": "enterprise"},
    )
    assert by_admin.status_code == 200 and by_admin.json()["plan"] == "enterprise"
    # With open signup a stranger may create free or pro accounts, not enterprise ones.
    open_service = RelayService(make_config(db_url, accounts={"open_signup": True}), engine)
    await open_service.start()
    try:
        assert (await _from(open_service, "203.0.113.9", plan="pro")).status_code == 201
        refused = await _from(open_service, "203.0.113.9", plan="enterprise")
        assert refused.status_code == 403
        trusted = await _from(open_service, "127.0.0.1", plan="enterprise")
        assert trusted.status_code == 201
    finally:
        await open_service.close()


async def test_rotating_the_key_cuts_the_old_one_at_once(accounts: Accounts) -> None:
    client = accounts.client
    _, old = await accounts.create()
    assert (await client.get("/api/messages", headers=old)).status_code == 200  # works on /api
    response = await client.post("/v1/account/api-key", headers=old)
    assert response.status_code == 201
    new_key = response.json()["api_key"]
    assert set(response.json()) == {"api_key"}
    assert new_key.startswith("maylng_")
    new = {"Authorization": f"Bearer {new_key}"}
    refused = await client.get("/v1/account", headers=old)
    assert refused.status_code == 401
    assert refused.json() == {"error": "Invalid API key"}
    assert (await client.get("/api/messages", headers=old)).status_code == 401
    assert (await client.get("/v1/account", headers=new)).status_code == 200
    assert (await client.get("/api/messages", headers=new)).status_code == 200


async def test_deleting_the_account_cuts_access_and_cancels_pending_mail(
    accounts: Accounts, engine: Engine
) -> None:
    client = accounts.client
    account, auth = await accounts.create()
    other, other_auth = await accounts.create()
    address = await accounts.address(auth)
    queued = await accounts.send(auth, address["id"])
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    scheduled = await accounts.send(auth, address["id"], scheduled_at=later)
    other_address = await accounts.address(other_auth)
    kept = await accounts.send(other_auth, other_address["id"])
    assert {queued.status_code, scheduled.status_code, kept.status_code} == {201}

    response = await client.delete("/v1/account", headers=auth)
    assert response.status_code == 204
    assert response.content == b""
    for path in ("/v1/account", "/v1/email-addresses", "/api/messages"):
        gone = await client.get(path, headers=auth)
        assert gone.status_code == 401, path
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages.c.uuid, messages.c.status, messages.c.error).where(
                messages.c.workspace_id.in_([account["id"], other["id"]])
            )
        ).all()
        keys = conn.execute(
            sa.select(sa.func.count()).where(api_keys.c.workspace_id == account["id"])
        ).scalar()
    status = {r.uuid: (r.status, r.error) for r in rows}
    assert status[queued.json()["id"]] == ("cancelled", "account deleted")
    assert status[scheduled.json()["id"]] == ("cancelled", "account deleted")
    assert status[kept.json()["id"]][0] == "queued"
    assert keys == 0
    assert (await client.get("/v1/account", headers=other_auth)).status_code == 200


async def test_admin_token_acts_on_the_named_account(accounts: Accounts) -> None:
    client = accounts.client
    account, _ = await accounts.create("pro")
    response = await client.get("/v1/account", headers={**ADMIN, "X-Workspace-ID": account["id"]})
    assert response.status_code == 200
    assert response.json()["id"] == account["id"]
    unnamed = await client.delete("/v1/account", headers=ADMIN)
    assert unnamed.status_code == 400
    assert "X-Workspace-ID" in unnamed.json()["error"]
    missing = await client.get("/v1/account", headers={**ADMIN, "X-Workspace-ID": "nope"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "Account not found"}


async def test_maylng_paths_answer_errors_in_their_own_shape(accounts: Accounts) -> None:
    client = accounts.client
    _, auth = await accounts.create()
    wrong_method = await client.put("/v1/account", headers=auth)
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()) == {"error"}
    no_route = await client.get("/v1/emails/a/b/c", headers=auth)
    assert no_route.status_code == 404
    assert set(no_route.json()) == {"error"}
    # The relay's own /v1 aliases keep the relay envelope.
    relay = await client.get("/v1/messages/nope", headers=auth)
    assert relay.status_code == 404
    assert relay.json()["success"] is False
    assert relay.json()["error"]["code"] == "MESSAGE_NOT_FOUND"
    health = await client.get("/health")
    assert health.json()["status"] == "ok"
    assert {"status", "service", "version"} <= set(health.json())
