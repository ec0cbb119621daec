"""Success responses and method dispatch shared by the resource modules."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Endpoint = Callable[[Request], Awaitable[Response]]

# What JSONResponse.render passes to json.dumps, built once: dumps makes a new
# encoder per call when given any option.
_ENCODE = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
).encode


class Json(JSONResponse):
    """JSONResponse with the same bytes, rendered by one shared encoder."""

    def render(self, content: Any) -> bytes:
        return _ENCODE(content).encode("utf-8")


def ok(
    data: Any = None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    message: str | None = None,
) -> Json:
    """The success envelope of the relay routes: ``{"success": true, "data": ...}``."""
    body: dict[str, Any] = {"success": True}
    if data is not None:
        body["data"] = data
    if message is not None:
        body["message"] = message
    return Json(body, status_code=status_code, headers=headers)


def by_method(**endpoints: Endpoint) -> Endpoint:
    """One path served by an endpoint per method, so a 405 lists every allowed method."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return dispatch
