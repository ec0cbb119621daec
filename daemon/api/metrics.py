"""``GET /metrics``: the daemon's figures in the Prometheus text exposition format.

Scrapers in ``http.metrics_networks`` (default: loopback) read it without a
token; anyone else needs the admin token (a workspace key gets 403
``INSUFFICIENT_PERMISSIONS``: the figures cover every workspace). The queue
depth gauges are refreshed from the database on each scrape.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.auth import authenticate, service_of
from daemon.api.errors import ApiError
from daemon.core.relay import is_trusted, parse_networks
from daemon.store import queue

# The text format generate_latest() writes (newer clients default their constant to 1.0.0).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(request: Request) -> Response:
    """GET /metrics."""
    service = service_of(request)
    client = request.client.host if request.client else ""
    if not is_trusted(client, parse_networks(service.config.http.metrics_networks)):
        principal = await authenticate(request, service)
        if not principal.is_admin:
            raise ApiError("INSUFFICIENT_PERMISSIONS", "/metrics needs the admin token")
    counts = await service.reader.run(queue.count_by_status)
    service.metrics.set_queue_depth(counts)
    return Response(service.metrics.exposition(), media_type=TEXT_FORMAT)


def routes() -> list[Route]:
    """The metrics route, at the root of the app (next to /health)."""
    return [Route("/metrics", metrics, methods=["GET"])]
