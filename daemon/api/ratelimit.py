"""API request limits (reference "Rate Limits") and the X-RateLimit-* headers of 6.3.

Workspace credentials are counted against their plan's hourly, daily and burst
limits and the endpoint-specific per-minute limits; past one, 429
``RATE_LIMIT_EXCEEDED``. The admin token (and an admin JWT) is exempt: its
responses report the acting workspace's windows (``X-Workspace-ID``, else
``default``) without counting. The headers describe the most constraining
window, the one with the fewest requests left, the burst second included; on a
429 the full window that opens last, so ``X-RateLimit-Reset-After`` and
``Retry-After`` say when a request is accepted again (rounded up, never 0). A
response to an unauthenticated request reports the default plan's hourly window,
untouched, for workspace ``anonymous``; a workspace whose plan sets no limit
reports ``unlimited``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import Scope

from daemon.api.errors import ApiError, iso_utc
from daemon.core import plans

if TYPE_CHECKING:
    from daemon.api.auth import Principal
    from daemon.service import RelayService

STATE_KEY = "rate_headers"
ANONYMOUS = "anonymous"


async def apply_rate_limits(request: Request, principal: Principal) -> None:
    """Count the request (workspace credentials) and keep the headers for the response."""
    scope = request.scope
    service: RelayService = scope["app"].state.service
    tenancy = service.tenancy
    if principal.is_admin:
        decision = await tenancy.report_requests(
            principal.acting_workspace, scope["method"], scope["path"]
        )
    else:
        assert principal.workspace_id is not None
        decision = await tenancy.count_request(
            principal.workspace_id, principal.key, scope["method"], scope["path"]
        )
    scope.setdefault("state", {})[STATE_KEY] = decision.headers  # request.state.rate_headers
    window = decision.exceeded
    if window is not None:
        retry_after = decision.headers["X-RateLimit-Reset-After"]
        raise ApiError(
            "RATE_LIMIT_EXCEEDED",
            f"{window.name} limit of {window.limit} requests exceeded for workspace "
            f"{principal.workspace_id}",
            {
                "limit": window.limit,
                "window": window.name,
                "window_seconds": window.seconds,
                "used": window.used,
                "reset_at": iso_utc(window.reset_at),
            },
            {**decision.headers, "Retry-After": str(max(1, int(retry_after)))},
        )


def response_rate_headers(scope: Scope) -> dict[str, str]:
    """The X-RateLimit-* headers for the response to ``scope`` (read only: may be shared).

    Those apply_rate_limits kept, else (no credentials checked) the default
    plan's hourly window, untouched, for workspace ``anonymous``.
    """
    known: dict[str, str] | None = scope.get("state", {}).get(STATE_KEY)
    if known is not None:
        return known
    service: RelayService = scope["app"].state.service
    now = service.clock()
    tier = plans.tier_for(service.config.rate_limits.default_plan, None)
    window = None
    if tier.per_hour is not None:
        reset = plans.window_reset(now, plans.HOUR)
        window = plans.WindowUse("hour", plans.HOUR, tier.per_hour, 0, reset)
    return plans.rate_headers(window, ANONYMOUS, now)
