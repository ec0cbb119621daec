"""The campaign endpoints of reference 2.5: statistics, and naming a campaign.

A campaign comes into being with its first message (``campaign_id`` in
``POST /api/messages`` or the ``X-Campaign-ID`` header over SMTP); its figures
are counters the queue keeps current (daemon.store.counters), so reading them
costs one row. Its status is ``active`` while any of its messages is pending
(queued, scheduled, processing) and ``completed`` after. An unknown campaign is
404 ``CAMPAIGN_NOT_FOUND``. Campaign ids are per workspace: an admin call
without a workspace that matches the id in several workspaces must name one.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.auth import Principal, requires_auth, service_of
from daemon.api.errors import ApiError, iso_utc
from daemon.api.fields import invalid, missing, object_body
from daemon.api.recipients import workspace_param
from daemon.api.responses import ok
from daemon.store import counters

_MAX_ID = 200
_MAX_BODY = 16 * 1024


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole > 0 else 0.0


def campaign_stats(row: Any) -> dict[str, Any]:
    """The body of GET /api/campaigns/{id}/stats (shape of reference 2.5)."""
    total, delivered = row.total_recipients, row.delivered
    return {
        "campaign_id": row.id,
        "name": row.name,
        "status": "active" if row.pending > 0 else "completed",
        "stats": {
            "total_recipients": total,
            "sent": row.sent,
            "delivered": delivered,
            "bounced": row.bounced,
            "opened": row.opened,
            "clicked": row.clicked,
            "unsubscribed": row.unsubscribed,
            "complained": row.complained,
        },
        "rates": {
            "delivery_rate": _rate(delivered, total),
            "open_rate": _rate(row.opened, delivered),
            "click_rate": _rate(row.clicked, delivered),
            "bounce_rate": _rate(row.bounced, total),
            "unsubscribe_rate": _rate(row.unsubscribed, total),
            "complaint_rate": _rate(row.complained, total),
        },
        "timeline": {
            "created_at": iso_utc(row.created_at),
            "started_at": iso_utc(row.started_at),
            "completed_at": iso_utc(row.completed_at) if row.pending <= 0 else None,
        },
    }


def _campaign_id(request: Request) -> str:
    value = str(request.path_params["campaign_id"])
    if len(value) > _MAX_ID or any(ord(c) < 32 for c in value):
        raise ApiError("CAMPAIGN_NOT_FOUND", "no such campaign", {"campaign_id": value[:_MAX_ID]})
    return value


def _scope(request: Request, principal: Principal, named: Any = None) -> str | None:
    """The workspace to look in: the one named (query or body), the caller's, or any."""
    requested = workspace_param(request.query_params.get("workspace_id") or None, "workspace_id")
    if named is not None:
        requested = workspace_param(named, "workspace_id")
    if requested is not None:
        principal.check_workspace(requested)
        return requested
    return principal.workspace_id


async def _find(request: Request, campaign_id: str, workspace_id: str | None) -> Any:
    rows = await service_of(request).reader.run(
        lambda c: counters.find_campaigns(c, campaign_id, workspace_id)
    )
    if not rows:
        raise ApiError(
            "CAMPAIGN_NOT_FOUND",
            f"no campaign {campaign_id}",
            {"campaign_id": campaign_id},
        )
    if len(rows) > 1:
        raise ApiError(
            "INVALID_REQUEST",
            f"campaign {campaign_id} exists in several workspaces; name one with "
            "X-Workspace-ID or workspace_id",
            {"parameter": "workspace_id"},
        )
    return rows[0]


@requires_auth
async def get_stats(request: Request, principal: Principal) -> Response:
    """GET /api/campaigns/{id}/stats."""
    campaign_id = _campaign_id(request)
    row = await _find(request, campaign_id, _scope(request, principal))
    return ok(campaign_stats(row))


@requires_auth
async def rename(request: Request, principal: Principal) -> Response:
    """PUT /api/campaigns/{id} with {"name": ...}: answers campaign_id, name, status, updated_at."""
    service = service_of(request)
    campaign_id = _campaign_id(request)
    body = await object_body(request, _MAX_BODY, {"name", "workspace_id"})
    name = body.get("name")
    if name is None:
        raise missing("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise invalid("name", "name must be a non-empty string of at most 200 characters")
    found = await _find(request, campaign_id, _scope(request, principal, body.get("workspace_id")))
    now = service.clock()
    row = await service.committer.run(
        lambda c: counters.rename_campaign(c, found.workspace_id, campaign_id, name.strip(), now)
    )
    if row is None:  # removed between the two calls
        raise ApiError("CAMPAIGN_NOT_FOUND", f"no campaign {campaign_id}")
    data = {
        "campaign_id": row.id,
        "workspace_id": row.workspace_id,
        "name": row.name,
        "status": "active" if row.pending > 0 else "completed",
        "updated_at": iso_utc(row.updated_at),
    }
    return ok(data)


def routes() -> list[Route]:
    """The campaign routes, relative to the mount point (/api or /v1)."""
    return [
        Route("/campaigns/{campaign_id:id}", rename, methods=["PUT"]),
        Route("/campaigns/{campaign_id:id}/stats", get_stats, methods=["GET"]),
    ]
