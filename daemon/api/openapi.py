"""``GET /openapi.json``: an OpenAPI 3.0 document of every route the app serves.

Paths come from the app's own routing table, so a route added later is listed
without touching this module; routes described in :data:`OPERATIONS` get their
request and response schemas, the others a generic operation (path parameters,
a JSON object body for POST/PUT/PATCH, any response). Relay routes are listed
under ``/api``; each is also served under ``/v1`` (the document says so rather
than listing every path twice). Deprecated routes are flagged ``deprecated``.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

import daemon
from daemon.api.versioning import deprecation_of
from daemon.core.plans import PLANS

_PARAM = re.compile(r"\{([^}:]+)(:[^}]+)?\}")
_BODY_METHODS = ("POST", "PUT", "PATCH")

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "error": {
            "type": "object",
            "required": ["code", "message", "details", "request_id", "timestamp"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
                "request_id": {"type": "string"},
                "timestamp": {"type": "string"},
            },
        },
    },
}


def _success(data: dict[str, Any] | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "success": {"type": "boolean", "enum": [True]},
        "message": {"type": "string"},
    }
    required = ["success"]
    if data is not None:
        properties["data"] = data
        required.append("data")
    return {"type": "object", "required": required, "properties": properties}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


_STR = {"type": "string"}
_NSTR = {"type": "string", "nullable": True}
_INT = {"type": "integer"}
_NINT = {"type": "integer", "nullable": True}
_ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"}
_ADDRESSES = {"type": "array", "items": {"type": "string"}, "maxItems": 50}
_PAGINATION = _obj(["total", "limit", "offset", "has_more"], total=_INT, limit=_INT, offset=_INT)

_LIST_QUERY = [
    ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
    ("offset", {"type": "integer", "minimum": 0}),
]

SEND_BODY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["from", "to", "subject", "text_body"],
    "properties": {
        "from": {"type": "string", "format": "email"},
        "to": _ADDRESSES,
        "cc": _ADDRESSES,
        "bcc": _ADDRESSES,
        "subject": {"type": "string", "maxLength": 998},
        "text_body": _STR,
        "html_body": _STR,
        "attachments": {
            "type": "array",
            "maxItems": 5,
            "items": _obj(["filename", "content"], filename=_STR, content_type=_STR, content=_STR),
        },
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "workspace_id": _ID,
        "campaign_id": _STR,
        "metadata": {"type": "object"},
        "personalization": _obj([], enabled={"type": "boolean"}, variables={"type": "object"}),
        "scheduling": _obj([], send_at=_STR, timezone=_STR),
    },
}
SEND_RESULT = _obj(
    ["message_id", "status", "queued_at", "estimated_send_time"],
    message_id=_STR,
    status=_STR,
    queued_at=_STR,
    estimated_send_time=_NSTR,
)
QUOTAS = _obj([], daily=_NINT, user_daily=_NINT)
WORKSPACE_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "id": _ID,
        "name": {"type": "string", "maxLength": 200},
        "plan": {"type": "string", "enum": list(PLANS)},
        "custom_limits": {
            "type": "object",
            "nullable": True,
            "additionalProperties": False,
            "properties": {
                "requests_per_hour": _NINT,
                "requests_per_day": _NINT,
                "burst": _NINT,
            },
        },
        "quotas": QUOTAS,
    },
}
WORKSPACE_UPDATE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {k: v for k, v in WORKSPACE_BODY["properties"].items() if k != "id"},
}
WORKSPACE = _obj(
    ["id", "name", "plan", "quotas", "limits", "created_at", "updated_at"],
    id=_STR,
    name=_STR,
    plan=_STR,
    custom_limits={"type": "object", "nullable": True},
    quotas=QUOTAS,
    limits=_obj([], requests_per_hour=_NINT, requests_per_day=_NINT, burst=_NINT),
    created_at=_STR,
    updated_at=_STR,
)
KEY_BODY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["workspace_id"],
    "properties": {"workspace_id": _ID, "user_id": _ID, "name": {"type": "string"}},
}
NEW_KEY = _obj(
    ["id", "key", "prefix", "workspace_id", "created_at"],
    id=_STR,
    key=_STR,
    prefix=_STR,
    workspace_id=_STR,
    created_at=_STR,
)
KEY = _obj(["id", "prefix", "workspace_id"], id=_STR, prefix=_STR, workspace_id=_STR)
QUOTA_LIMIT = _obj([], limit=_NINT, used=_INT, remaining=_NINT, reset_at=_STR)
RATE_LIMIT = {
    "type": "object",
    "required": ["global", "workspace", "users"],
    "properties": {
        "global": QUOTA_LIMIT,
        "workspace": QUOTA_LIMIT,
        "users": {"type": "object", "additionalProperties": QUOTA_LIMIT},
    },
}

# (method, path) -> (summary, query parameters, request body, success status, data schema)
Operation = tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any] | None, str, Any]
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/api/messages"): ("Send an email", [], SEND_BODY, "202", SEND_RESULT),
    ("GET", "/api/messages"): (
        "List messages",
        [
            *_LIST_QUERY,
            ("status", {"type": "string", "enum": ["queued", "scheduled", "sent", "failed"]}),
            ("workspace_id", _ID),
            ("from", _STR),
            ("to", _STR),
        ],
        None,
        "200",
        _obj(["messages", "pagination"], messages={"type": "array"}, pagination=_PAGINATION),
    ),
    ("GET", "/api/rate-limit"): (
        "Daily quota status",
        [("workspace_id", _ID)],
        None,
        "200",
        RATE_LIMIT,
    ),
    ("GET", "/api/admin/workspaces"): (
        "List workspaces",
        _LIST_QUERY,
        None,
        "200",
        _obj(["workspaces", "pagination"], workspaces={"type": "array", "items": WORKSPACE}),
    ),
    ("POST", "/api/admin/workspaces"): (
        "Create a workspace",
        [],
        WORKSPACE_BODY,
        "201",
        WORKSPACE,
    ),
    ("GET", "/api/admin/workspaces/{workspace_id}"): (
        "Show a workspace",
        [],
        None,
        "200",
        WORKSPACE,
    ),
    ("PUT", "/api/admin/workspaces/{workspace_id}"): (
        "Change a workspace's plan, limits or quotas",
        [],
        WORKSPACE_UPDATE,
        "200",
        WORKSPACE,
    ),
    ("POST", "/api/admin/keys"): ("Create an API key (shown once)", [], KEY_BODY, "201", NEW_KEY),
    ("GET", "/api/admin/keys"): (
        "List API keys by prefix",
        [*_LIST_QUERY, ("workspace_id", _ID)],
        None,
        "200",
        _obj(["keys", "pagination"], keys={"type": "array", "items": KEY}),
    ),
    ("DELETE", "/api/admin/keys/{key_id}"): ("Revoke an API key", [], None, "200", None),
}


def _walk(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, Route]]:
    found: list[tuple[str, Route]] = []
    for route in routes:
        if isinstance(route, Mount):
            if route.path == "/v1":
                continue  # aliases of /api; see the document's description
            found.extend(_walk(list(route.routes), prefix + route.path))
        elif isinstance(route, Route):
            # "{message_id:id}" is documented as "{message_id}": the convertor is ours.
            found.append((_PARAM.sub(r"{\1}", prefix + route.path), route))
    return found


def _operation(method: str, path: str, route: Route) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name, _ in _PARAM.findall(path)
    ]
    described = OPERATIONS.get((method, path))
    operation: dict[str, Any] = {"operationId": f"{method.lower()}{_slug(path)}"}
    if described is None:
        operation["summary"] = f"{method} {path}"
        if method in _BODY_METHODS:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        operation["responses"] = {"default": {"description": "See the API reference"}}
    else:
        summary, query, body, status, data = described
        operation["summary"] = summary
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in query
        ]
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
        operation["responses"] = {
            status: {
                "description": "Success",
                "content": {"application/json": {"schema": _success(data)}},
            },
            "default": {
                "description": "Error (reference 6.1)",
                "content": {"application/json": {"schema": ERROR}},
            },
        }
    if parameters:
        operation["parameters"] = parameters
    if path.startswith("/api/"):
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
    if deprecation_of(route) is not None:
        operation["deprecated"] = True
    return operation


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", _PARAM.sub(r"\1", path)).rstrip("_")


def build_document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (the app's routing table)."""
    paths: dict[str, dict[str, Any]] = {}
    for raw_path, route in _walk(routes):
        path = _PARAM.sub(r"{\1}", raw_path)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(method, path, route)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "relayd API",
            "version": daemon.__version__,
            "description": (
                "The relay REST API. Every /api/... route is also served as /v1/...; errors use "
                "the envelope of reference 6.1; responses carry X-Request-ID and X-RateLimit-*."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        },
    }


async def openapi_document(request: Request) -> Response:
    """GET /openapi.json (no token needed: it holds no data)."""
    document = getattr(request.app.state, "openapi", None)
    if document is None:
        document = build_document(list(request.app.routes))
        request.app.state.openapi = document
    return JSONResponse(document)
