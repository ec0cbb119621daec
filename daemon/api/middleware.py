"""Request context: an id on every request and response, and a last line of defence.

Starlette's own server-error middleware answers a bare 500 and re-raises the
exception to the server, which logs a traceback. This middleware sits inside it
and turns anything the exception handlers did not catch into the 6.1 envelope.
"""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.api.errors import internal_error

REQUEST_ID_HEADER = "X-Request-ID"
# Echo a caller's id only when it is short and harmless in logs and headers.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def new_request_id() -> str:
    return "req-" + secrets.token_hex(8)


def pick_request_id(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is sane, otherwise a fresh ``req-...``."""
    if incoming and _SANE_REQUEST_ID.match(incoming):
        return incoming
    return new_request_id()


class RequestContextMiddleware:
    """Gives each HTTP request an id, echoes it as X-Request-ID, and never lets a 500 out raw."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = pick_request_id(incoming)
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            response = internal_error(Request(scope), exc)
            if started:
                return  # the status line is out; all we can do is log and end the response
            await response(scope, receive, send_with_id)
