"""Workspaces and API keys through the admin API; authentication as a workspace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.service import RelayService
from tests.api.conftest import AUTH, assert_envelope, message
from tests.api.tenants import JWT_SECRET, key_headers, make_key, make_workspace, token


@pytest.fixture
async def service(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> AsyncIterator[RelayService]:
    """A started service that also accepts JWTs signed with JWT_SECRET."""
    svc = RelayService(make_config(db_url, auth={"jwt_secret": JWT_SECRET}), engine)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
async def api(service: RelayService) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no default credentials (each call says which it uses)."""
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
        yield client


async def test_workspace_crud_shapes(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/admin/workspaces",
        json={"id": "ws-001", "name": "Acme", "plan": "basic", "quotas": {"daily": 50}},
    )
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert data["id"] == "ws-001" and data["name"] == "Acme" and data["plan"] == "basic"
    assert data["quotas"] == {"daily": 50, "user_daily": None}
    assert data["limits"] == {"requests_per_hour": 1000, "requests_per_day": 10000, "burst": 50}
    assert data["created_at"].endswith("Z") and data["updated_at"].endswith("Z")

    assert_envelope(
        await client.post("/api/admin/workspaces", json={"id": "ws-001"}), 409, "INVALID_STATE"
    )
    changed = await client.put(
        "/api/admin/workspaces/ws-001",
        json={"plan": "enterprise", "custom_limits": {"requests_per_hour": 7, "burst": 3}},
    )
    assert changed.status_code == 200
    assert changed.json()["data"]["limits"] == {
        "requests_per_hour": 7,
        "requests_per_day": None,
        "burst": 3,
    }
    shown = await client.get("/v1/admin/workspaces/ws-001")
    assert shown.json()["data"]["plan"] == "enterprise"
    listed = await client.get("/api/admin/workspaces")
    assert [w["id"] for w in listed.json()["data"]["workspaces"]] == ["ws-001"]
    assert listed.headers["X-Total-Count"] == "1"

    generated = await client.post("/api/admin/workspaces", json={})
    assert generated.json()["data"]["id"].startswith("ws-")
    assert generated.json()["data"]["plan"] == "free"  # rate_limits.default_plan


async def test_workspace_errors(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/api/admin/workspaces/nope"), 404, "WORKSPACE_NOT_FOUND")
    assert_envelope(
        await client.put("/api/admin/workspaces/nope", json={"plan": "pro"}),
        404,
        "WORKSPACE_NOT_FOUND",
    )
    for body in [
        {"plan": "gold"},
        {"quotas": {"daily": -1}},
        {"quotas": {"weekly": 1}},
        {"custom_limits": {"burst": "x"}},
        {"colour": "red"},
        {"id": "bad id"},
    ]:
        response = await client.post("/api/admin/workspaces", json=body)
        assert_envelope(response, 400, "INVALID_REQUEST")
    assert_envelope(
        await client.post("/api/admin/keys", json={"workspace_id": "ghost"}),
        404,
        "WORKSPACE_NOT_FOUND",
    )
    assert_envelope(await client.post("/api/admin/keys", json={}), 400, "MISSING_REQUIRED_FIELD")
    assert_envelope(await client.delete("/api/admin/keys/key_nope"), 404, "API_KEY_NOT_FOUND")


async def test_key_lifecycle(client: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    await make_workspace(client, "ws-a")
    created = await make_key(client, "ws-a", user_id="user-1", name="ci")
    assert set(created) == {"id", "key", "prefix", "workspace_id", "created_at"}
    key = created["key"]
    assert key.startswith("sk_live_") and len(key) > 40
    assert key.startswith(created["prefix"]) and created["prefix"] != key

    listed = (await client.get("/api/admin/keys", params={"workspace_id": "ws-a"})).json()
    (entry,) = listed["data"]["keys"]
    assert entry["prefix"] == created["prefix"] and entry["user_id"] == "user-1"
    assert key not in str(listed) and "hash" not in str(listed)

    for headers in (key_headers(key), {"X-API-Key": key}):
        assert (await api.get("/api/messages", headers=headers)).status_code == 200
    used = (await client.get("/api/admin/keys")).json()["data"]["keys"][0]
    assert used["last_used_at"] is not None

    revoked = await client.delete(f"/api/admin/keys/{created['id']}")
    assert revoked.json() == {"success": True, "message": "API key revoked"}
    assert_envelope(await api.get("/api/messages", headers=key_headers(key)), 401, "INVALID_TOKEN")
    assert_envelope(
        await api.get("/api/messages", headers=key_headers(key + "x")), 401, "INVALID_TOKEN"
    )


async def test_workspace_key_is_confined(client: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    await make_workspace(client, "ws-a")
    await make_workspace(client, "ws-b")
    key = (await make_key(client, "ws-a"))["key"]
    auth = key_headers(key)
    b_message = (await client.post("/api/messages", json=message(workspace_id="ws-b"))).json()[
        "data"
    ]["message_id"]

    sent = await api.post("/api/messages", json=message(), headers=auth)
    assert sent.status_code == 202
    mine = (await client.get(f"/api/messages/{sent.json()['data']['message_id']}")).json()
    assert mine["data"]["workspace_id"] == "ws-a"

    denied = [
        await api.get("/api/messages", params={"workspace_id": "ws-b"}, headers=auth),
        await api.get("/api/messages", headers={**auth, "X-Workspace-ID": "ws-b"}),
        await api.post("/api/messages", json=message(workspace_id="ws-b"), headers=auth),
        await api.get("/api/rate-limit", params={"workspace_id": "ws-b"}, headers=auth),
    ]
    for response in denied:
        assert_envelope(response, 403, "WORKSPACE_ACCESS_DENIED")
    assert_envelope(
        await api.get(f"/api/messages/{b_message}", headers=auth), 404, "MESSAGE_NOT_FOUND"
    )
    listed = await api.get("/api/messages", headers=auth)
    assert b_message not in listed.text
    same = await api.get("/api/messages", headers={**auth, "X-Workspace-ID": "ws-a"})
    assert same.status_code == 200

    for method, path in [
        ("GET", "/api/admin/workspaces"),
        ("POST", "/api/admin/keys"),
        ("GET", "/v1/admin/keys"),
        ("PUT", "/api/admin/workspaces/ws-a"),
    ]:
        response = await api.request(method, path, headers=auth, json={"workspace_id": "ws-a"})
        assert_envelope(response, 403, "INSUFFICIENT_PERMISSIONS")


async def test_missing_credentials(api: httpx.AsyncClient) -> None:
    assert_envelope(await api.get("/api/admin/workspaces"), 401, "AUTH_REQUIRED")
    assert_envelope(await api.get("/api/rate-limit"), 401, "AUTH_REQUIRED")


async def test_jwt_good_expired_and_badly_signed(
    client: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    good = token(workspace_id="ws-jwt", user_id="user-9", role="member")
    sent = await api.post("/api/messages", json=message(), headers=key_headers(good))
    assert sent.status_code == 202, sent.text
    stored = (await client.get(f"/api/messages/{sent.json()['data']['message_id']}")).json()
    assert stored["data"]["workspace_id"] == "ws-jwt" and stored["data"]["user_id"] == "user-9"
    # The workspace came into being on first use, with the default plan.
    workspace = (await client.get("/api/admin/workspaces/ws-jwt")).json()["data"]
    assert workspace["plan"] == "free"
    assert_envelope(
        await api.get("/api/admin/workspaces", headers=key_headers(good)),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )

    for bad in [
        token(workspace_id="ws-jwt", role="member", expires_in=-60),
        token(secret="another-secret-that-is-also-long-enough", workspace_id="ws-jwt"),
        token(role="member"),  # names no workspace
        good[:-4] + "AAAA",
    ]:
        assert_envelope(
            await api.get("/api/messages", headers=key_headers(bad)), 401, "INVALID_TOKEN"
        )

    admin = token(role="admin", user_id="ops")
    listed = await api.get("/api/admin/workspaces", headers=key_headers(admin))
    assert listed.status_code == 200


async def test_jwt_refused_without_a_secret(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> None:
    service = RelayService(make_config(db_url), engine)  # no [auth] jwt_secret
    await service.start()
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as api:
            headers = key_headers(token(workspace_id="ws", role="member"))
            assert_envelope(await api.get("/api/messages", headers=headers), 401, "INVALID_TOKEN")
    finally:
        await service.close()


async def test_admin_token_still_works(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/admin/workspaces", headers=AUTH)).status_code == 200


async def test_a_per_user_key_sends_as_its_user_only(
    client: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    """The stored message, its listing and the user quota name the key's user, never another."""
    await make_workspace(client, "ws-u")
    alice = key_headers((await make_key(client, "ws-u", user_id="alice"))["key"])
    member = key_headers(token(workspace_id="ws-u", user_id="alice", role="member"))
    for credential in (alice, member):
        for claimed in ("mallory", 7):
            refused = await api.post(
                "/api/messages", json=message(metadata={"user_id": claimed}), headers=credential
            )
            error = assert_envelope(refused, 403, "INSUFFICIENT_PERMISSIONS")
            assert "'alice'" in error["message"]
            assert error["details"] == {"field": "metadata.user_id", "user_id": "alice"}
    same = await api.post(
        "/api/messages", json=message(metadata={"user_id": "alice", "k": 1}), headers=alice
    )
    unnamed = await api.post("/api/messages", json=message(metadata={"k": 2}), headers=alice)
    bare = await api.post("/api/messages", json=message(), headers=member)
    ids = [r.json()["data"]["message_id"] for r in (same, unnamed, bare)]
    listed = (await api.get("/api/messages", headers=alice)).json()["data"]["messages"]
    assert {m["id"]: m["metadata"] for m in listed} == {
        ids[0]: {"user_id": "alice", "k": 1},
        ids[1]: {"k": 2, "user_id": "alice"},
        ids[2]: {"user_id": "alice"},
    }
    for message_id in ids:
        detail = (await client.get(f"/api/messages/{message_id}")).json()["data"]
        assert detail["user_id"] == "alice"
    users = (await client.get("/api/rate-limit?workspace_id=ws-u")).json()["data"]["users"]
    assert list(users) == ["alice"] and users["alice"]["used"] == 3
    # A workspace key without a user, like the admin, names whichever user it sends for.
    shared = key_headers((await make_key(client, "ws-u"))["key"])
    for_bob = await api.post(
        "/api/messages", json=message(metadata={"user_id": "bob"}), headers=shared
    )
    bob = (await client.get(f"/api/messages/{for_bob.json()['data']['message_id']}")).json()
    assert bob["data"]["user_id"] == "bob" and bob["data"]["metadata"] == {"user_id": "bob"}
