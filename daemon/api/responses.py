"""Success responses and method dispatch shared by the resource modules."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Endpoint = Callable[[Request], Awaitable[Response]]

# What JSONResponse.render passes to json.dumps, built once: dumps makes a new
# encoder per call when given any option.
_ENCODE = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
).encode


_JSON_TYPE = JSONResponse.media_type.encode("latin-1")


class Json(JSONResponse):
    """JSONResponse with the same bytes and headers, rendered by one shared encoder."""

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        if headers or media_type is not None or background is not None or status_code < 200:
            super().__init__(content, status_code, headers, media_type, background)
            return
        # What Response.__init__ and init_headers make of the common case, directly.
        self.status_code = status_code
        self.background = None
        self.body = body = _ENCODE(content).encode("utf-8")
        self.raw_headers = [(b"content-type", _JSON_TYPE)]
        if status_code not in (204, 304):
            self.raw_headers.insert(0, (b"content-length", str(len(body)).encode("latin-1")))

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
