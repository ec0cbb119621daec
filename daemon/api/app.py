"""The Starlette application: routes of every resource family, auth, errors, request ids.

Relay routes live under ``/api`` and, as the reference's versioning section
names them, under ``/v1`` (``/v1/messages`` ...). The Maylng dialect shares
``/v1`` (``/v1/accounts``, ``/v1/account``, ``/v1/email-addresses``,
``/v1/emails``). ``/health`` needs no token.
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
    mandrill,
    maylng_accounts,
    maylng_addresses,
    maylng_emails,
    messages,
    metrics,
    openapi,
    providers,
    queue_admin,
    quotas,
    recipients,
    stats,
    tracking,
    unsubscribe,
    webhooks,
    workspaces,
)
from daemon.api.auth_lockout import HttpAuthLockout
from daemon.api.errors import EXCEPTION_HANDLERS, iso_utc
from daemon.api.maylng_common import MaylngError, on_maylng_error
from daemon.api.middleware import RequestContextMiddleware
from daemon.service import RelayService

HEALTH_DB_TIMEOUT = 5.0


async def health(request: Request) -> Response:
    """GET /health: 200 ``"status": "ok"`` (the Maylng shape, plus details), or 503
    degraded when the database does not answer or the daemon is draining for
    shutdown (so load balancers move away)."""
    service: RelayService = request.app.state.service
    try:
        database_ok = await asyncio.wait_for(service.ping(), HEALTH_DB_TIMEOUT)
    except TimeoutError:
        database_ok = False
    healthy = database_ok and service.accepting
    now = service.clock()
    body = {
        "status": "ok" if healthy else "degraded",
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
    return [*messages.routes(), *_other_relay_routes()]


def _other_relay_routes() -> list[BaseRoute]:
    return [
        *admin_config.routes(),
        *maintenance.routes(),
        *queue_admin.routes(),
        *recipients.routes(),
        *campaigns.routes(),
        *stats.routes(),
        *workspaces.routes(),
        *quotas.routes(),
        *providers.routes(),
        *webhooks.routes(),
    ]


def maylng_routes() -> list[BaseRoute]:
    """The Maylng dialect (accounts, sender addresses, emails), relative to /v1."""
    return [*maylng_accounts.routes(), *maylng_addresses.routes(), *maylng_emails.routes()]


def create_app(service: RelayService) -> Starlette:
    """Build the HTTP API around ``service`` (kept on ``app.state.service``)."""
    routes: list[BaseRoute] = [
        # The mounts first: the router tries routes in order, and the API is what is
        # busy. No other route's path starts with /api/ or /v1/, so the order
        # changes which route answers no request.
        Mount("/api", routes=relay_routes()),
        # The Maylng routes come before the other relay routes in the same mount, so a
        # wrong method is a 405 there. The busy send route comes first: no Maylng
        # route matches a /messages path, so it changes which route answers no request.
        Mount("/v1", routes=[*messages.routes(), *maylng_routes(), *_other_relay_routes()]),
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_document, methods=["GET"]),
        *metrics.routes(),
        # Public engagement endpoints (no token; not under the API rate limits).
        *tracking.routes(),
        *unsubscribe.routes(),
        *mandrill.routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContextMiddleware),  # request ids and X-RateLimit-* headers
        ],
        exception_handlers={**EXCEPTION_HANDLERS, MaylngError: on_maylng_error},
    )
    app.state.service = service
    # Failed authentications by client address (daemon.api.auth_lockout): one per app.
    app.state.auth_lockout = HttpAuthLockout()
    return app
