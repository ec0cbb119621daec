"""Admin API for tenancy: workspaces (plan, custom limits, quota overrides) and API keys.

``GET/POST /api/admin/workspaces``, ``GET/PUT /api/admin/workspaces/{id}``,
``POST/GET /api/admin/keys``, ``DELETE /api/admin/keys/{id}``; admin token only.
A key (``sk_live_`` + 48 hex digits) is shown once, in the answer to its
creation; the store keeps its SHA-256 and lists it by its prefix.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.auth import Principal, requires_admin, service_of
from daemon.api.errors import ApiError, iso_utc
from daemon.api.fields import invalid, missing, object_body, string_field
from daemon.api.pagination import Page
from daemon.api.responses import by_method, ok
from daemon.core import plans
from daemon.core.compose import CONTROL_CHARS
from daemon.core.ids import WORKSPACE_ID, WORKSPACE_ID_RULE
from daemon.store import tenancy as store
from daemon.tenancy import KEY_PREFIX, hash_key

MAX_BODY = 64 * 1024
WORKSPACE_FIELDS = frozenset({"id", "name", "plan", "custom_limits", "quotas"})
KEY_FIELDS = frozenset({"workspace_id", "user_id", "name"})
QUOTA_FIELDS = ("daily", "user_daily")
PREFIX_LENGTH = len(KEY_PREFIX) + 8


async def json_body(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    """A small JSON object body with only ``allowed`` fields."""
    return await object_body(request, MAX_BODY, allowed, empty=True)


def _id_field(body: dict[str, Any], key: str) -> str | None:
    value = string_field(body, key, 200)
    if value is not None and not WORKSPACE_ID.match(value):
        raise invalid(key, f"{key} must be {WORKSPACE_ID_RULE}")
    return value


def _name(body: dict[str, Any]) -> str | None:
    name = string_field(body, "name", 200)
    if name is not None and CONTROL_CHARS.search(name):
        raise invalid("name", "name must not contain control characters")
    return name


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**12:
        raise invalid(where, f"{where} must be an integer from 0 to 10^12, or null")
    return value


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    """The changeable columns named in ``body`` (plan, custom limits, quotas, name)."""
    values: dict[str, Any] = {}
    name = _name(body)
    if name is not None:
        values["name"] = name
    if "plan" in body:
        plan = body["plan"]
        if plan not in plans.PLANS:
            raise invalid("plan", f"plan must be one of {', '.join(plans.PLANS)}")
        values["plan"] = plan
    if "custom_limits" in body:
        custom = body["custom_limits"]
        if custom is not None and not isinstance(custom, dict):
            raise invalid("custom_limits", "custom_limits must be an object or null")
        if custom is not None:
            unknown = sorted(set(custom) - set(plans.CUSTOM_LIMIT_KEYS))
            if unknown:
                raise invalid("custom_limits", f"unknown limit(s): {', '.join(unknown)}")
            for key, value in custom.items():
                _count(value, f"custom_limits.{key}")
        values["custom_limits"] = custom
    if "quotas" in body:
        quotas = body["quotas"]
        if not isinstance(quotas, dict):
            raise invalid("quotas", "quotas must be an object with daily and user_daily")
        unknown = sorted(set(quotas) - set(QUOTA_FIELDS))
        if unknown:
            raise invalid("quotas", f"unknown quota(s): {', '.join(unknown)}")
        if "daily" in quotas:
            values["daily_quota"] = _count(quotas["daily"], "quotas.daily")
        if "user_daily" in quotas:
            values["user_daily_quota"] = _count(quotas["user_daily"], "quotas.user_daily")
    return values


def workspace_view(row: Any) -> dict[str, Any]:
    """A workspace as the admin API shows it, with the request limits its plan gives."""
    tier = plans.tier_for(row.plan, row.custom_limits)
    return {
        "id": row.id,
        "name": row.name,
        "plan": row.plan,
        "custom_limits": row.custom_limits,
        "quotas": {"daily": row.daily_quota, "user_daily": row.user_daily_quota},
        "limits": {
            "requests_per_hour": tier.per_hour,
            "requests_per_day": tier.per_day,
            "burst": tier.burst,
        },
        "created_at": iso_utc(row.created_at),
        "updated_at": iso_utc(row.updated_at),
    }


def _not_found(workspace_id: str) -> ApiError:
    return ApiError(
        "WORKSPACE_NOT_FOUND", f"no workspace {workspace_id!r}", {"workspace_id": workspace_id}
    )


def _path_workspace(request: Request) -> str:
    value: str = request.path_params["workspace_id"]
    if not WORKSPACE_ID.match(value):
        raise _not_found(value[:200])
    return value


@requires_admin
async def list_workspaces(request: Request, principal: Principal) -> Response:
    page = Page.from_query(request.query_params)
    rows, total = await service_of(request).reader.run(
        lambda c: store.list_workspaces(c, page.limit, page.offset)
    )
    data = {"workspaces": [workspace_view(r) for r in rows], "pagination": page.body(total)}
    return ok(data, headers=page.headers(request, total))


@requires_admin
async def create_workspace(request: Request, principal: Principal) -> Response:
    service = service_of(request)
    body = await json_body(request, WORKSPACE_FIELDS)
    workspace_id = _id_field(body, "id") or "ws-" + secrets.token_hex(6)
    now = service.clock()
    values = {
        "id": workspace_id,
        "name": "",
        "plan": service.config.rate_limits.default_plan,
        "created_at": now,
        "updated_at": now,
        **_settings(body),
    }
    row = await service.committer.run(lambda c: store.create_workspace(c, values))
    if row is None:
        raise ApiError(
            "INVALID_STATE",
            f"workspace {workspace_id!r} exists; change it with PUT",
            {"workspace_id": workspace_id},
        )
    service.tenancy.forget_workspace(workspace_id)
    return ok(workspace_view(row), status_code=201)


@requires_admin
async def get_workspace(request: Request, principal: Principal) -> Response:
    workspace_id = _path_workspace(request)
    row = await service_of(request).reader.run(lambda c: store.get_workspace(c, workspace_id))
    if row is None:
        raise _not_found(workspace_id)
    return ok(workspace_view(row))


@requires_admin
async def update_workspace(request: Request, principal: Principal) -> Response:
    service = service_of(request)
    workspace_id = _path_workspace(request)
    body = await json_body(request, WORKSPACE_FIELDS - {"id"})
    values = {**_settings(body), "updated_at": service.clock()}
    row = await service.committer.run(lambda c: store.update_workspace(c, workspace_id, values))
    if row is None:
        raise _not_found(workspace_id)
    service.tenancy.forget_workspace(workspace_id)
    return ok(workspace_view(row))


def key_view(row: Any) -> dict[str, Any]:
    """A stored key, by its prefix: never the key or its hash."""
    return {
        "id": row.id,
        "prefix": row.prefix,
        "workspace_id": row.workspace_id,
        "user_id": row.user_id,
        "name": row.name,
        "created_at": iso_utc(row.created_at),
        "last_used_at": iso_utc(row.last_used_at),
        "revoked_at": iso_utc(row.revoked_at),
    }


@requires_admin
async def create_key(request: Request, principal: Principal) -> Response:
    service = service_of(request)
    body = await json_body(request, KEY_FIELDS)
    workspace_id = _id_field(body, "workspace_id")
    if workspace_id is None:
        raise missing("workspace_id")
    user_id = _id_field(body, "user_id")
    name = _name(body) or ""
    key = KEY_PREFIX + secrets.token_hex(24)
    now = service.clock()
    values = {
        "id": "key_" + secrets.token_hex(8),
        "workspace_id": workspace_id,
        "user_id": user_id,
        "name": name,
        "prefix": key[:PREFIX_LENGTH],
        "key_hash": hash_key(key),
        "created_at": now,
    }

    def insert(conn: Any) -> bool:
        if store.get_workspace(conn, workspace_id) is None:
            return False
        store.insert_key(conn, values)
        return True

    if not await service.committer.run(insert):
        raise _not_found(workspace_id)
    data = {
        "id": values["id"],
        "key": key,
        "prefix": values["prefix"],
        "workspace_id": workspace_id,
        "created_at": iso_utc(now),
    }
    return ok(data, status_code=201)


@requires_admin
async def list_keys(request: Request, principal: Principal) -> Response:
    page = Page.from_query(request.query_params)
    workspace_id = request.query_params.get("workspace_id") or principal.workspace_id
    if workspace_id is not None and not WORKSPACE_ID.match(workspace_id):
        raise ApiError(
            "INVALID_REQUEST", "workspace_id is not valid", {"parameter": "workspace_id"}
        )
    if workspace_id is not None:
        principal.check_workspace(workspace_id)  # X-Workspace-ID naming another: 400
    rows, total = await service_of(request).reader.run(
        lambda c: store.list_keys(c, workspace_id, page.limit, page.offset)
    )
    data = {"keys": [key_view(r) for r in rows], "pagination": page.body(total)}
    return ok(data, headers=page.headers(request, total))


@requires_admin
async def revoke_key(request: Request, principal: Principal) -> Response:
    service = service_of(request)
    key_id: str = request.path_params["key_id"][:40]
    if any(ord(c) < 32 or ord(c) == 127 for c in key_id):  # no key has one; PostgreSQL refuses NUL
        raise ApiError("API_KEY_NOT_FOUND", "no API key with that id", {"id": key_id})
    now = service.clock()
    row = await service.committer.run(lambda c: store.revoke_key(c, key_id, now))
    service.tenancy.forget_keys()
    if row is None:
        raise ApiError("API_KEY_NOT_FOUND", f"no API key {key_id!r}", {"id": key_id})
    return ok(message="API key revoked")


def routes() -> list[Route]:
    """The tenancy admin routes, relative to /api (and /v1)."""
    return [
        Route(
            "/admin/workspaces",
            by_method(GET=list_workspaces, POST=create_workspace),
            methods=["GET", "POST"],
        ),
        Route(
            "/admin/workspaces/{workspace_id:id}",
            by_method(GET=get_workspace, PUT=update_workspace),
            methods=["GET", "PUT"],
        ),
        Route("/admin/keys", by_method(GET=list_keys, POST=create_key), methods=["GET", "POST"]),
        Route("/admin/keys/{key_id:id}", revoke_key, methods=["DELETE"]),
    ]
