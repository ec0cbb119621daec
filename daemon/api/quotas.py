"""``GET /api/rate-limit``: today's sending quotas, global, per workspace and per user (2.3)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.auth import Principal, requires_auth, service_of
from daemon.api.errors import ApiError
from daemon.api.responses import ok
from daemon.core.ids import WORKSPACE_ID


def requested_workspace(request: Request, principal: Principal) -> str:
    """The workspace a read acts in: ``workspace_id`` in the query, else the caller's own."""
    named = request.query_params.get("workspace_id")
    if named is not None and not WORKSPACE_ID.match(named):
        raise ApiError(
            "INVALID_REQUEST", "workspace_id is not valid", {"parameter": "workspace_id"}
        )
    return principal.workspace_for(named or None)


@requires_auth
async def rate_limit_status(request: Request, principal: Principal) -> Response:
    """GET /api/rate-limit: quota limits, use and reset times of the caller's workspace."""
    workspace_id = requested_workspace(request, principal)
    return ok(await service_of(request).tenancy.quota_status(workspace_id))


def routes() -> list[Route]:
    return [Route("/rate-limit", rate_limit_status, methods=["GET"])]
