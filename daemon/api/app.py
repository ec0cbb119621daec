"""The Starlette application: routes of every resource family, auth, errors, request ids.

Relay routes live under ``/api`` and, as the reference's versioning section
names them, under ``/v1`` (``/v1/messages`` ...). ``/health`` needs no token.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

import daemon
from daemon.api import (
    admin_config,
    campaigns,
    maintenance,
    messages,
    metrics,
    openapi,
    queue_admin,
    quotas,
    recipients,
    stats,
    workspaces,
)
from daemon.api.errors import EXCEPTION_HANDLERS, iso_utc
from daemon.api.middleware import RequestContextMiddleware
from daemon.api.ratelimit import RateLimitHeadersMiddleware
from daemon.service import RelayService

HEALTH_DB_TIMEOUT = 5.0


async def health(request: Request) -> Response:
    """GET /health: 200 healthy, or 503 degraded when the database does not answer
    or the daemon is draining for shutdown (so load balancers move away)."""
    service: RelayService = request.app.state.service
    try:
        database_ok = await asyncio.wait_for(service.ping(), HEALTH_DB_TIMEOUT)
    except TimeoutError:
        database_ok = False
    healthy = database_ok and service.accepting
    now = service.clock()
    body = {
        "status": "healthy" if healthy else "degraded",
        "service": "relayd",
        "version": daemon.__version__,
        "database": "ok" if database_ok else "unavailable",
        "accepting": service.accepting,
        "uptime_seconds": int((now - service.started_at).total_seconds()),
        "timestamp": iso_utc(now),
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


def relay_routes() -> list[BaseRoute]:
    """Every relay resource family, relative to /api (and /v1)."""
    return [
        *messages.routes(),
        *admin_config.routes(),
        *maintenance.routes(),
        *queue_admin.routes(),
        *recipients.routes(),
        *campaigns.routes(),
        *stats.routes(),
        *workspaces.routes(),
        *quotas.routes(),
    ]


def create_app(service: RelayService) -> Starlette:
    """Build the HTTP API around ``service`` (kept on ``app.state.service``)."""
    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_document, methods=["GET"]),
        *metrics.routes(),
        Mount("/api", routes=relay_routes()),
        Mount("/v1", routes=relay_routes()),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContextMiddleware),
            Middleware(RateLimitHeadersMiddleware),
        ],
        exception_handlers=dict(EXCEPTION_HANDLERS),
    )
    app.state.service = service
    return app
