"""Request context: an id and rate-limit headers on every response, and a last line of defence.

Starlette's own server-error middleware answers a bare 500 and re-raises the
exception to the server, which logs a traceback. This middleware sits inside it
and turns anything the exception handlers did not catch into the 6.1 envelope.

It is plain ASGI and does all of its work in one ``send`` wrapper: it puts the
X-RateLimit-* headers (daemon.api.ratelimit) on every response the app answers,
then ``X-Request-ID``. The 500 it answers itself carries only ``X-Request-ID``.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.api.errors import internal_error
from daemon.api.paths import route_on_encoded_path
from daemon.api.ratelimit import response_rate_headers
from daemon.core.ids import random_bytes

REQUEST_ID_HEADER = "X-Request-ID"
# Echo a caller's id only when it is short and harmless in logs and headers.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}\Z")
_HEADERS_KEY = "relay.headers"
_REQUEST_ID = b"x-request-id"
_RATE_LIMIT = b"x-ratelimit-limit"
_NAMES: dict[str, bytes] = {}  # header name -> its raw (lower-case) form


def new_request_id() -> str:
    return "req-" + random_bytes(8).hex()  # secrets.token_hex(8), from a pooled draw


def pick_request_id(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is sane, otherwise a fresh ``req-...``."""
    if incoming and _SANE_REQUEST_ID.match(incoming):
        return incoming
    return new_request_id()


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's raw headers by (lower-case) name, first value of a repeated one.

    What ``request.headers.get(name)`` finds, read once per request instead of a
    scan (and a caught KeyError for every absent header) per lookup.
    """
    found: dict[bytes, bytes] | None = scope.get(_HEADERS_KEY)
    if found is None:
        raw = scope.get("headers", ())
        listed = raw if isinstance(raw, list) else list(raw)
        found = {name: value for name, value in reversed(listed)}
        scope[_HEADERS_KEY] = found
    return found


def header(request: Request, name: bytes) -> str | None:
    """``request.headers.get(name)`` for a lower-case ``name``."""
    value = request_headers(request.scope).get(name)
    return None if value is None else value.decode("latin-1")


def _raw_name(name: str) -> bytes:
    raw = _NAMES.get(name)
    if raw is None:
        raw = _NAMES[name] = name.lower().encode("latin-1")
    return raw


# The last headers dict encoded, and its raw form: an admin caller's rate headers
# are one shared dict for a second (daemon.tenancy.Tenancy.report_requests).
_last_encoded: tuple[dict[str, str] | None, list[tuple[bytes, bytes]]] = (None, [])


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """``headers`` as raw (lower-case name, value) pairs, as MutableHeaders would set them."""
    global _last_encoded
    known, raw = _last_encoded
    if known is headers:
        return raw
    raw = [(_raw_name(name), value.encode("latin-1")) for name, value in headers.items()]
    _last_encoded = (headers, raw)
    return raw


def _set(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    """MutableHeaders.__setitem__ on raw headers: replace the first, drop repeats, else append."""
    found = [index for index, (key, _) in enumerate(headers) if key == name]
    if not found:
        headers.append((name, value))
        return
    for index in reversed(found[1:]):
        del headers[index]
    headers[found[0]] = (name, value)


class RequestContextMiddleware:
    """Gives each HTTP request an id, echoes it as X-Request-ID, adds the X-RateLimit-*
    headers, and never lets a 500 out raw."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route_on_encoded_path(scope)
        incoming = request_headers(scope).get(_REQUEST_ID)
        request_id = pick_request_id(None if incoming is None else incoming.decode("latin-1"))
        scope.setdefault("state", {})["request_id"] = request_id
        raw_id = request_id.encode("latin-1")
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = message["headers"] = list(message["headers"])
                _set(headers, _REQUEST_ID, raw_id)
            await send(message)

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                headers = list(message["headers"])
                names = {key for key, _ in headers}
                if _RATE_LIMIT not in names:
                    for raw, value in _encoded(response_rate_headers(scope)):
                        if raw in names:
                            _set(headers, raw, value)
                        else:
                            headers.append((raw, value))
                started = True  # from here on as when the two were separate middlewares
                message["headers"] = headers
                if _REQUEST_ID in names:
                    _set(headers, _REQUEST_ID, raw_id)
                else:
                    headers.append((_REQUEST_ID, raw_id))
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            response = internal_error(Request(scope), exc)
            if started:
                return  # the status line is out; all we can do is log and end the response
            await response(scope, receive, send_with_id)
