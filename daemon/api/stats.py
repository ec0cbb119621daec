"""System statistics (reference 2.2): ``GET /api/stats`` and the live ``/api/stats/realtime``.

Queue counts come from the database and follow the caller's workspace (a
workspace key, or the admin with ``X-Workspace-ID``, sees that workspace's
queue); processing times and provider health describe this daemon's recent
deliveries (daemon.metrics); ``rate_limits.global`` counts today's messages
(UTC) against ``rate_limits.global_daily``. The realtime stream sends one
``event: metrics`` per second and ends when the client goes away or the daemon
stops accepting (so a stream never holds up shutdown).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import daemon
from daemon.api.auth import Principal, requires_auth, service_of
from daemon.api.errors import iso_utc
from daemon.api.recipients import workspace_param
from daemon.api.responses import ok
from daemon.service import RelayService
from daemon.store import counters, queue
from daemon.store.engine import StoreError

REALTIME_INTERVAL = 1.0


def _scope(request: Request, principal: Principal) -> str | None:
    named = workspace_param(request.query_params.get("workspace_id") or None, "workspace_id")
    if named is not None:
        principal.check_workspace(named)
        return named
    return principal.workspace_id


def _visible(
    providers: dict[str, Any], service: RelayService, workspace_id: str | None
) -> dict[str, Any]:
    """Within a workspace, leave out the providers bound to other workspaces."""
    if workspace_id is None:
        return providers
    configured = service.config.providers
    return {
        pid: figures
        for pid, figures in providers.items()
        if pid in configured and configured[pid].workspace_id in ("", None, workspace_id)
    }


def _midnight(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _figures(conn: Any, workspace_id: str | None, today: datetime) -> tuple[dict[str, int], int]:
    return queue.count_by_status(conn, workspace_id), counters.queued_since(conn, today)


@requires_auth
async def get_stats(request: Request, principal: Principal) -> Response:
    """GET /api/stats."""
    service = service_of(request)
    workspace_id = _scope(request, principal)
    now = service.clock()
    today = _midnight(now)
    by_status, used_today = await service.reader.run(lambda c: _figures(c, workspace_id, today))
    limit = service.config.rate_limits.global_daily
    data = {
        "system": {
            "version": daemon.__version__,
            "uptime_seconds": int((now - service.started_at).total_seconds()),
            "current_time": iso_utc(now),
        },
        "queue": {"total": sum(by_status.values()), **by_status},
        "processing": service.metrics.processing(),
        # Rates and latency of recent calls; status from each provider's circuit breaker.
        "providers": _visible(
            service.providers_state.overlay(service.metrics.providers(service.config.providers)),
            service,
            workspace_id,
        ),
        "rate_limits": {
            "global": {
                "used_today": used_today,
                "limit_today": limit or None,
                "reset_at": iso_utc(today + timedelta(days=1)),
            }
        },
    }
    return ok(data)


async def metric_events(
    service: RelayService, workspace_id: str | None, interval: float = REALTIME_INTERVAL
) -> AsyncIterator[str]:
    """Server-Sent Events: one ``metrics`` event per interval while the daemon runs."""
    gauge = service.metrics.realtime_clients
    gauge.inc()
    try:
        while service.accepting:
            depth: int | None
            try:
                depth = await service.reader.run(lambda c: counters.pending_depth(c, workspace_id))
            except StoreError:
                depth = None  # the database is out of reach: the stream carries on without it
            data = {
                "timestamp": iso_utc(service.clock()),
                "emails_per_second": service.metrics.emails_per_second(),
                "queue_depth": depth,
                "active_processors": service.metrics.active_processors,
            }
            yield f"event: metrics\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            await asyncio.sleep(interval)
    finally:
        gauge.dec()


@requires_auth
async def realtime(request: Request, principal: Principal) -> Response:
    """GET /api/stats/realtime: text/event-stream until the client disconnects."""
    service = service_of(request)
    workspace_id = _scope(request, principal)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":
        # No body goes out for HEAD, so nothing would end an endless stream: the
        # connection would stay busy with it and hang the client's next request.
        return Response(media_type="text/event-stream", headers=headers)
    return StreamingResponse(
        metric_events(service, workspace_id), media_type="text/event-stream", headers=headers
    )


def routes() -> list[Route]:
    """The statistics routes, relative to the mount point (/api or /v1)."""
    return [
        Route("/stats", get_stats, methods=["GET"]),
        Route("/stats/realtime", realtime, methods=["GET"]),
    ]
