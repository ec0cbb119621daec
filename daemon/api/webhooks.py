"""``/api/webhooks``: a workspace's signed event endpoints, test sends, dead letters, replay.

- ``GET /api/webhooks``, ``POST`` ``{"url", "event_types", "description", "enabled"}``
  (201; the signing ``secret`` is in this answer only), ``GET/PUT/DELETE
  /api/webhooks/{id}``;
- ``POST /api/webhooks/{id}/test``: one signed ``test`` event sent now (not queued,
  not retried), answering whether it was delivered;
- ``GET /api/webhooks/deliveries?status=dead&webhook_id=...``: the delivery queue
  (``dead`` is the dead-letter list), paginated;
- ``POST /api/webhooks/deliveries/{id}/replay`` and ``POST /api/webhooks/{id}/replay``:
  dead deliveries back to pending, with a fresh retry schedule.

Every route acts in the caller's workspace (or the one ``X-Workspace-ID`` /
``workspace_id`` names, for the admin token). Unknown ids are 404
``WEBHOOK_NOT_FOUND``; event types are those of daemon.core.webhooks or ``*``.
The URL is checked for shape here; where it resolves is checked at delivery.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.auth import Principal, requires_auth, service_of
from daemon.api.errors import ApiError, iso_utc
from daemon.api.fields import invalid, missing, object_body
from daemon.api.pagination import Page
from daemon.api.recipients import workspace_param
from daemon.api.responses import by_method, ok
from daemon.core import webhooks as policy
from daemon.delivery.webhooks import WebhookSender
from daemon.store import deliveries

_MAX_BODY = 16 * 1024
_FIELDS = frozenset({"url", "event_types", "description", "enabled", "workspace_id"})


def webhook_view(row: Any, secret: bool = False) -> dict[str, Any]:
    data = {
        "id": row.id,
        "workspace_id": row.workspace_id,
        "url": row.url,
        "event_types": list(row.event_types or []),
        "description": row.description,
        "enabled": bool(row.enabled),
        "created_at": iso_utc(row.created_at),
        "updated_at": iso_utc(row.updated_at),
    }
    if secret:
        data["secret"] = row.secret
    return data


def delivery_view(row: Any) -> dict[str, Any]:
    try:
        event = json.loads(row.body)
    except ValueError:
        event = None
    return {
        "id": row.id,
        "webhook_id": row.webhook_id,
        "workspace_id": row.workspace_id,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": iso_utc(row.next_attempt_at) if row.status == "pending" else None,
        "last_error": row.last_error,
        "last_status_code": row.last_status_code,
        "created_at": iso_utc(row.created_at),
        "delivered_at": iso_utc(row.delivered_at),
        "event": event,
    }


def _not_found(webhook_id: str) -> ApiError:
    return ApiError("WEBHOOK_NOT_FOUND", f"no webhook {webhook_id}", {"webhook_id": webhook_id})


_MAX_ID = 200


def _path_id(request: Request, name: str = "webhook_id") -> str:
    """An id from the path; one no webhook or delivery can have (too long, or holding a
    control character, which PostgreSQL refuses in a query: NUL) is 404 without a query."""
    value = str(request.path_params[name])
    if len(value) > _MAX_ID or any(ord(c) < 32 or ord(c) == 127 for c in value):
        kind = "dead delivery" if name == "delivery_id" else "webhook"
        raise ApiError("WEBHOOK_NOT_FOUND", f"no {kind} with that id", {name: value[:_MAX_ID]})
    return value


async def _body(request: Request) -> dict[str, Any]:
    return await object_body(request, _MAX_BODY, _FIELDS)


def _values(body: dict[str, Any], allowlist: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "url" in body:
        url = body["url"]
        if not isinstance(url, str):
            raise invalid("url", "url must be a string")
        problem = policy.valid_endpoint(url) or policy.endpoint_refusal(url, allowlist)
        if problem is not None:
            raise invalid("url", problem)
        values["url"] = url
    if "event_types" in body:
        types = body["event_types"]
        known = (*policy.EVENT_TYPES, policy.ALL)
        if (
            not isinstance(types, list)
            or not types
            or not all(isinstance(t, str) and t in known for t in types)
        ):
            raise invalid("event_types", f"event_types must list some of {', '.join(known)}")
        values["event_types"] = sorted(set(types))
    if "description" in body:
        text = body["description"]
        if text is not None and (not isinstance(text, str) or len(text) > 500):
            raise invalid("description", "description must be a string of at most 500 characters")
        values["description"] = text
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise invalid("enabled", "enabled must be true or false")
        values["enabled"] = body["enabled"]
    return values


def _workspace(request: Request, principal: Principal, body: dict[str, Any] | None = None) -> str:
    named = request.query_params.get("workspace_id") or (body or {}).get("workspace_id")
    return principal.workspace_for(workspace_param(named, "workspace_id"))


def _scope(request: Request, principal: Principal) -> str | None:
    """Reads: the named workspace, the caller's, or (admin without one) every workspace."""
    named = workspace_param(request.query_params.get("workspace_id") or None, "workspace_id")
    if named is not None:
        principal.check_workspace(named)
        return named
    return principal.workspace_id


@requires_auth
async def list_webhooks(request: Request, principal: Principal) -> Response:
    page = Page.from_query(request.query_params)
    scope = _scope(request, principal)
    rows, total = await service_of(request).reader.run(
        lambda c: deliveries.list_webhooks(c, scope, page.limit, page.offset)
    )
    data = {"webhooks": [webhook_view(r) for r in rows], "pagination": page.body(total)}
    return ok(data, headers=page.headers(request, total))


@requires_auth
async def create_webhook(request: Request, principal: Principal) -> Response:
    service = service_of(request)
    body = await _body(request)
    for name in ("url", "event_types"):
        if body.get(name) is None:
            raise missing(name)
    values = _values(body, service.config.webhooks.allowlist)
    now = service.clock()
    values.update(
        id="wh_" + secrets.token_hex(8),
        workspace_id=_workspace(request, principal, body),
        secret="whsec_" + secrets.token_urlsafe(32),
        enabled=values.get("enabled", True),
        created_at=now,
        updated_at=now,
    )
    row = await service.committer.run(lambda c: deliveries.insert_webhook(c, values))
    return ok(webhook_view(row, secret=True), status_code=201)


@requires_auth
async def get_webhook(request: Request, principal: Principal) -> Response:
    webhook_id = _path_id(request)
    scope = _scope(request, principal)
    row = await service_of(request).reader.run(
        lambda c: deliveries.get_webhook(c, webhook_id, scope)
    )
    if row is None:
        raise _not_found(webhook_id)
    return ok(webhook_view(row))


@requires_auth
async def update_webhook(request: Request, principal: Principal) -> Response:
    service = service_of(request)
    webhook_id = _path_id(request)
    scope = _scope(request, principal)
    # An unknown (or another workspace's) webhook is 404 whatever the body says.
    found = await service.reader.run(lambda c: deliveries.get_webhook(c, webhook_id, scope))
    if found is None:
        raise _not_found(webhook_id)
    body = await _body(request)
    if body.get("workspace_id") not in (None, found.workspace_id):
        raise invalid("workspace_id", "a webhook cannot move to another workspace")
    values = _values(body, service.config.webhooks.allowlist)
    values["updated_at"] = service.clock()
    row = await service.committer.run(
        lambda c: deliveries.update_webhook(c, webhook_id, scope, values)
    )
    if row is None:
        raise _not_found(webhook_id)
    return ok(webhook_view(row))


@requires_auth
async def delete_webhook(request: Request, principal: Principal) -> Response:
    webhook_id = _path_id(request)
    scope = _scope(request, principal)
    deleted = await service_of(request).committer.run(
        lambda c: deliveries.delete_webhook(c, webhook_id, scope)
    )
    if not deleted:
        raise _not_found(webhook_id)
    return ok(message="Webhook removed successfully")


@requires_auth
async def test_webhook(request: Request, principal: Principal) -> Response:
    """Send one signed ``test`` event now and say what the endpoint answered."""
    service = service_of(request)
    webhook_id = _path_id(request)
    scope = _scope(request, principal)
    row = await service.reader.run(lambda c: deliveries.get_webhook(c, webhook_id, scope))
    if row is None:
        raise _not_found(webhook_id)
    now = service.clock()
    delivery_id = "test_" + secrets.token_hex(8)
    body = json.dumps(
        {
            "id": "evt_" + secrets.token_hex(12),
            "type": "test",
            "workspace_id": row.workspace_id,
            "created_at": iso_utc(now),
            "data": {"webhook_id": row.id},
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    sender = WebhookSender(service)
    try:
        result = await sender.deliver(row.url, row.secret, body, "test", delivery_id)
    finally:
        await sender.stop()
    data = {
        "webhook_id": row.id,
        "delivered": result.delivered,
        "status_code": result.status_code,
        "error": result.error,
    }
    return ok(data)


@requires_auth
async def list_deliveries(request: Request, principal: Principal) -> Response:
    query = request.query_params
    page = Page.from_query(query)
    status = query.get("status") or None
    if status is not None and status not in deliveries.STATUSES:
        raise ApiError(
            "INVALID_REQUEST",
            f"status must be one of {', '.join(deliveries.STATUSES)}",
            {"parameter": "status"},
        )
    webhook_id = query.get("webhook_id") or None
    if webhook_id is not None and (
        len(webhook_id) > _MAX_ID or any(ord(c) < 32 or ord(c) == 127 for c in webhook_id)
    ):
        raise ApiError(
            "INVALID_REQUEST", "webhook_id is not a webhook id", {"parameter": "webhook_id"}
        )
    scope = _scope(request, principal)
    rows, total = await service_of(request).reader.run(
        lambda c: deliveries.list_deliveries(c, scope, status, webhook_id, page.limit, page.offset)
    )
    data = {"deliveries": [delivery_view(r) for r in rows], "pagination": page.body(total)}
    return ok(data, headers=page.headers(request, total))


async def _replay(request: Request, principal: Principal, **which: str) -> Response:
    service = service_of(request)
    scope = _scope(request, principal)
    now = service.clock()
    count = await service.committer.run(lambda c: deliveries.replay(c, now, scope, **which))
    if "webhook_id" in which and not count:
        hook = await service.reader.run(
            lambda c: deliveries.get_webhook(c, which["webhook_id"], scope)
        )
        if hook is None:
            raise _not_found(which["webhook_id"])
    if "delivery_id" in which and not count:
        raise ApiError(
            "WEBHOOK_NOT_FOUND",
            f"no dead delivery {which['delivery_id']}",
            {"delivery_id": which["delivery_id"]},
        )
    if count and service.engagement.deliveries_waiting is not None:
        service.engagement.deliveries_waiting.set()
    return ok({"replayed": count})


@requires_auth
async def replay_delivery(request: Request, principal: Principal) -> Response:
    return await _replay(request, principal, delivery_id=_path_id(request, "delivery_id"))


@requires_auth
async def replay_webhook(request: Request, principal: Principal) -> Response:
    return await _replay(request, principal, webhook_id=_path_id(request))


def routes() -> list[Route]:
    """The webhook routes, relative to the mount point (/api or /v1)."""
    return [
        Route(
            "/webhooks", by_method(GET=list_webhooks, POST=create_webhook), methods=["GET", "POST"]
        ),
        Route("/webhooks/deliveries", list_deliveries, methods=["GET"]),
        Route("/webhooks/deliveries/{delivery_id:id}/replay", replay_delivery, methods=["POST"]),
        Route(
            "/webhooks/{webhook_id:id}",
            by_method(GET=get_webhook, PUT=update_webhook, DELETE=delete_webhook),
            methods=["GET", "PUT", "DELETE"],
        ),
        Route("/webhooks/{webhook_id:id}/test", test_webhook, methods=["POST"]),
        Route("/webhooks/{webhook_id:id}/replay", replay_webhook, methods=["POST"]),
    ]
