"""Success responses and method dispatch shared by the resource modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Endpoint = Callable[[Request], Awaitable[Response]]


def ok(
    data: Any = None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    message: str | None = None,
) -> JSONResponse:
    """The success envelope of the relay routes: ``{"success": true, "data": ...}``."""
    body: dict[str, Any] = {"success": True}
    if data is not None:
        body["data"] = data
    if message is not None:
        body["message"] = message
    return JSONResponse(body, status_code=status_code, headers=headers)


def by_method(**endpoints: Endpoint) -> Endpoint:
    """One path served by an endpoint per method, so a 405 lists every allowed method."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return dispatch
