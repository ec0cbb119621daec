"""Admin token by Bearer or X-API-Key, and X-Workspace-ID scoping."""

from __future__ import annotations

import httpx

from tests.api.conftest import TOKEN, assert_envelope, message, send
from tests.api.tenants import key_headers, make_key, make_workspace


async def test_missing_credentials_is_auth_required(anon: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/messages"),
        ("POST", "/api/messages"),
        ("GET", "/api/messages/msg-01J0000000000000000000000"),
        ("DELETE", "/v1/messages/msg-01J0000000000000000000000"),
        ("PUT", "/api/messages/msg-01J0000000000000000000000/retry"),
    ]:
        response = await anon.request(method, path)
        assert_envelope(response, 401, "AUTH_REQUIRED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_wrong_token_is_invalid_token(anon: httpx.AsyncClient) -> None:
    wrong: list[dict[str, str] | dict[bytes, bytes]] = [
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"X-API-Key": "nope"},
        {b"Authorization": "Bearer \u00e9t\u00e9".encode("latin-1")},
    ]
    for headers in wrong:
        response = await anon.get("/api/messages", headers=headers)
        assert_envelope(response, 401, "INVALID_TOKEN")


async def test_bearer_and_api_key_both_work(anon: httpx.AsyncClient) -> None:
    bearer = await anon.get("/api/messages", headers={"Authorization": f"bearer {TOKEN}"})
    assert bearer.status_code == 200
    api_key = await anon.get("/api/messages", headers={"X-API-Key": TOKEN})
    assert api_key.status_code == 200


async def test_workspace_header_scopes_admin_calls(client: httpx.AsyncClient) -> None:
    acme = {"X-Workspace-ID": "acme"}
    default_id = await send(client)
    response = await client.post("/api/messages", json=message(), headers=acme)
    acme_id = response.json()["data"]["message_id"]

    everything = await client.get("/api/messages")
    assert {m["id"] for m in everything.json()["data"]["messages"]} == {default_id, acme_id}
    by_workspace = {m["id"]: m["workspace_id"] for m in everything.json()["data"]["messages"]}
    assert by_workspace == {default_id: "default", acme_id: "acme"}

    scoped = await client.get("/api/messages", headers=acme)
    assert [m["id"] for m in scoped.json()["data"]["messages"]] == [acme_id]
    hidden = await client.get(f"/api/messages/{default_id}", headers=acme)
    assert_envelope(hidden, 404, "MESSAGE_NOT_FOUND")
    assert_envelope(
        await client.delete(f"/api/messages/{default_id}", headers=acme), 404, "MESSAGE_NOT_FOUND"
    )
    assert (await client.get(f"/api/messages/{default_id}")).status_code == 200

    # The admin may act anywhere: a header and a workspace_id that disagree are a bad request.
    other = await client.get("/api/messages?workspace_id=default", headers=acme)
    assert_envelope(other, 400, "INVALID_REQUEST")
    conflicting = await client.post(
        "/api/messages", json=message(workspace_id="default"), headers=acme
    )
    error = assert_envelope(conflicting, 400, "INVALID_REQUEST")
    assert "'acme'" in error["message"] and "'default'" in error["message"]
    assert error["details"] == {
        "field": "workspace_id",
        "workspace_id": "default",
        "x_workspace_id": "acme",
    }
    agreeing = await client.post("/api/messages", json=message(workspace_id="acme"), headers=acme)
    assert agreeing.status_code == 202


async def test_admin_header_and_body_workspace_disagreeing_is_a_bad_request(
    client: httpx.AsyncClient,
) -> None:
    """400 naming both workspaces for the admin; a workspace key is still denied (403)."""
    header = {"X-Workspace-ID": "ws-a"}
    calls = [
        await client.post("/api/messages", json=message(workspace_id="ws-b"), headers=header),
        await client.post(
            "/api/recipients",
            json={"email": "x@example.org", "workspace_id": "ws-b"},
            headers=header,
        ),
        await client.get("/api/rate-limit?workspace_id=ws-b", headers=header),
    ]
    for response in calls:
        error = assert_envelope(response, 400, "INVALID_REQUEST")
        assert "'ws-a'" in error["message"] and "'ws-b'" in error["message"], error["message"]
        assert error["details"]["x_workspace_id"] == "ws-a"
        assert error["details"]["workspace_id"] == "ws-b"
    assert (await client.get("/api/messages", params={"workspace_id": "ws-b"})).json()["data"][
        "pagination"
    ]["total"] == 0  # nothing was sent
    await make_workspace(client, "ws-a")
    key = key_headers((await make_key(client, "ws-a"))["key"])
    denied = await client.post("/api/messages", json=message(workspace_id="ws-b"), headers=key)
    assert_envelope(denied, 403, "WORKSPACE_ACCESS_DENIED")


async def test_body_workspace_applies_without_header(client: httpx.AsyncClient) -> None:
    message_id = await send(client, workspace_id="ws-001", campaign_id="camp-123")
    data = (await client.get(f"/api/messages/{message_id}")).json()["data"]
    assert (data["workspace_id"], data["campaign_id"]) == ("ws-001", "camp-123")
    filtered = await client.get("/api/messages?workspace_id=ws-001")
    assert [m["id"] for m in filtered.json()["data"]["messages"]] == [message_id]


async def test_malformed_workspace_header_is_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/messages", headers={"X-Workspace-ID": "a b/c"})
    assert_envelope(response, 400, "INVALID_REQUEST")
