"""Workspace isolation: a key of workspace A never sees or changes workspace B's data.

The walk covers every route the app registers (under /api and /v1), so routes
added later are covered without editing this test.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from starlette.routing import BaseRoute, Mount, Route

from daemon.api import create_app
from daemon.service import RelayService
from tests.api.conftest import AUTH, message
from tests.api.tenants import key_headers, make_key, make_workspace

B_EMAIL = "secret.recipient@b-corp.example"
B_CAMPAIGN = "camp-b-secret"
_PARAM = re.compile(r"\{([^}:]+)(:[^}]+)?\}")
# Streams that never end on their own: only the header variant, refused before streaming.
STREAMING = ("/stats/realtime",)


def walk(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, Mount):
            found += walk(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                found.append((method, prefix + route.path))
    return found


@pytest.fixture
async def world(service: RelayService) -> AsyncIterator[dict[str, Any]]:
    """Workspaces ws-a and ws-b, a key of A, and B's message, recipient, campaign and key."""
    app = create_app(service)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://relay.test", headers=AUTH
    ) as admin:
        await make_workspace(admin, "ws-a", plan="enterprise")
        await make_workspace(admin, "ws-b", plan="enterprise")
        a_key = (await make_key(admin, "ws-a"))["key"]
        b_key = await make_key(admin, "ws-b")
        sent = await admin.post(
            "/api/messages",
            json=message(workspace_id="ws-b", campaign_id=B_CAMPAIGN, to=[B_EMAIL]),
        )
        assert sent.status_code == 202
        added = await admin.post("/api/recipients", json={"email": B_EMAIL, "workspace_id": "ws-b"})
        assert added.status_code in (200, 201), added.text
        async with httpx.AsyncClient(
            transport=transport, base_url="http://relay.test", headers=key_headers(a_key)
        ) as as_a:
            yield {
                "app": app,
                "admin": admin,
                "as_a": as_a,
                "b_message": sent.json()["data"]["message_id"],
                "b_key_id": b_key["id"],
                "b_key_prefix": b_key["prefix"],
            }


def fill(path: str, world: dict[str, Any]) -> str:
    values = {
        "message_id": world["b_message"],
        "campaign_id": B_CAMPAIGN,
        "email": B_EMAIL,
        "workspace_id": "ws-b",
        "key_id": world["b_key_id"],
        "id": world["b_message"],
    }
    return _PARAM.sub(lambda m: values.get(m.group(1), "x"), path)


def leaks(response: httpx.Response, world: dict[str, Any]) -> list[str]:
    """B's identifiers in a successful answer (an error may echo the id the caller sent)."""
    if response.status_code >= 400:
        return []
    secrets = [world["b_message"], B_EMAIL, B_CAMPAIGN, world["b_key_prefix"]]
    return [s for s in secrets if s in response.text]


async def test_every_route_refuses_other_workspaces(
    world: dict[str, Any], db_url: str, engine: Engine, make_config: Callable[..., Any]
) -> None:
    as_a: httpx.AsyncClient = world["as_a"]
    routes = [(m, p) for m, p in walk(list(world["app"].routes)) if p.startswith(("/api/", "/v1/"))]
    # DELETE /v1/account (Maylng) deletes the caller's own account, A: walk it last.
    routes.sort(key=lambda route: route == ("DELETE", "/v1/account"))
    assert len(routes) >= 20
    problems: list[str] = []
    for method, template in routes:
        path = fill(template, world)
        body = {"workspace_id": "ws-b", "email": B_EMAIL, "name": "taken over"}
        has_body = method in ("POST", "PUT", "PATCH")
        # 1. Naming B in X-Workspace-ID: always 403.
        response = await as_a.request(
            method, path, headers={"X-Workspace-ID": "ws-b"}, json=body if has_body else None
        )
        if response.status_code != 403:
            problems.append(f"{method} {template} X-Workspace-ID: {response.status_code}")
        if template.endswith(STREAMING):
            continue
        # 2. Naming B in the query: 403 or 404, or an answer with none of B's data.
        response = await as_a.request(
            method,
            path,
            params={"workspace_id": "ws-b"},
            json=body if has_body else None,
        )
        if response.status_code not in (403, 404) and (
            response.status_code < 400 or response.status_code >= 500
        ):
            problems.append(f"{method} {template} ?workspace_id: {response.status_code}")
        # 3. B named in the body: never a success.
        if has_body:
            response = await as_a.request(method, path, json={"workspace_id": "ws-b"})
            if response.status_code not in (400, 403, 404, 405):
                problems.append(f"{method} {template} body: {response.status_code}")
        # 4. B's ids in the path: 403 or 404, never B's data.
        change = {"status": "UNSUBSCRIBED"} if "/recipients/" in template else {"name": "taken"}
        response = await as_a.request(method, path, json=change if has_body else None)
        found = leaks(response, world)
        refused = response.status_code in (403, 404) or (
            not _PARAM.search(template) and response.status_code < 500
        )
        if found or not refused:
            problems.append(f"{method} {template}: {response.status_code} leaks {found}")
    assert problems == [], "\n".join(problems)

    # Nothing of B's changed.
    admin: httpx.AsyncClient = world["admin"]
    shown = await admin.get(f"/api/messages/{world['b_message']}")
    assert shown.json()["data"]["status"] == "queued"
    recipient = await admin.get(f"/api/recipients/{B_EMAIL}", params={"workspace_id": "ws-b"})
    assert recipient.json()["data"]["status"] == "ACTIVE"
    keys = await admin.get("/api/admin/keys", params={"workspace_id": "ws-b"})
    assert keys.json()["data"]["keys"][0]["revoked_at"] is None
    workspace = await admin.get("/api/admin/workspaces/ws-b")
    assert workspace.json()["data"]["name"] == ""
