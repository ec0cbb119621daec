"""The error catalogue of the relay API (reference 6.2) and the envelope every error uses (6.1).

Additions where 6.2 has no code (documented in DESIGN.md and here):
409 ``INVALID_STATE`` (cancel/retry in the wrong status), 409 ``RECIPIENT_EXISTS``,
422 ``IDEMPOTENCY_KEY_REUSED``, 404 ``API_KEY_NOT_FOUND``, 404 ``CAMPAIGN_NOT_FOUND``,
404 ``WEBHOOK_NOT_FOUND``,
404 ``ROUTE_NOT_FOUND`` (no such endpoint), 404 ``PROVIDER_NOT_FOUND`` and
405 ``METHOD_NOT_ALLOWED``. A daemon that is draining for shutdown answers 503
``MAINTENANCE_MODE``: from a client's point of view it is down for maintenance,
and the ``Retry-After`` header says when to try again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from daemon.api.responses import Json
from daemon.core.accounts import is_maylng_path
from daemon.service import MaintenanceMode, NotAccepting
from daemon.store.engine import StoreError

log = logging.getLogger("relayd.api")


@dataclass(frozen=True)
class ErrorKind:
    """One catalogue entry: the HTTP status a code always carries and its default message."""

    status: int
    message: str


CATALOGUE: dict[str, ErrorKind] = {
    # Authentication & Authorization
    "AUTH_REQUIRED": ErrorKind(401, "Authentication required"),
    "INVALID_TOKEN": ErrorKind(401, "Invalid or expired token"),
    "INSUFFICIENT_PERMISSIONS": ErrorKind(403, "Insufficient permissions"),
    "WORKSPACE_ACCESS_DENIED": ErrorKind(403, "No access to workspace"),
    # Validation
    "INVALID_REQUEST": ErrorKind(400, "Invalid request format"),
    "MISSING_REQUIRED_FIELD": ErrorKind(400, "Required field missing"),
    "INVALID_EMAIL_FORMAT": ErrorKind(400, "Invalid email address format"),
    "MESSAGE_TOO_LARGE": ErrorKind(413, "Message exceeds size limit"),
    # Rate limiting
    "RATE_LIMIT_EXCEEDED": ErrorKind(429, "Rate limit exceeded"),
    "QUOTA_EXCEEDED": ErrorKind(429, "Daily quota exceeded"),
    # Resources
    "MESSAGE_NOT_FOUND": ErrorKind(404, "Message not found"),
    "RECIPIENT_NOT_FOUND": ErrorKind(404, "Recipient not found"),
    "WORKSPACE_NOT_FOUND": ErrorKind(404, "Workspace not found"),
    # Processing
    "QUEUE_FULL": ErrorKind(503, "Queue is full"),
    "PROVIDER_ERROR": ErrorKind(502, "Provider API error"),
    "ALL_PROVIDERS_DOWN": ErrorKind(503, "All providers unavailable"),
    # System
    "INTERNAL_ERROR": ErrorKind(500, "Internal server error"),
    "DATABASE_ERROR": ErrorKind(500, "Database error"),
    "MAINTENANCE_MODE": ErrorKind(503, "Service in maintenance mode"),
    # Additions (see the module docstring)
    "INVALID_STATE": ErrorKind(409, "Operation not allowed in the current state"),
    "RECIPIENT_EXISTS": ErrorKind(409, "Recipient already exists"),
    "CAMPAIGN_NOT_FOUND": ErrorKind(404, "Campaign not found"),
    "API_KEY_NOT_FOUND": ErrorKind(404, "API key not found"),
    "WEBHOOK_NOT_FOUND": ErrorKind(404, "Webhook not found"),
    "IDEMPOTENCY_KEY_REUSED": ErrorKind(422, "Idempotency key reused with a different request"),
    "ROUTE_NOT_FOUND": ErrorKind(404, "No such endpoint"),
    "METHOD_NOT_ALLOWED": ErrorKind(405, "Method not allowed for this endpoint"),
    "PROVIDER_NOT_FOUND": ErrorKind(404, "Provider not found"),
}

# Starlette's own HTTPExceptions (routing, body parsing) mapped onto the catalogue.
_STATUS_CODES = {404: "ROUTE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "MESSAGE_TOO_LARGE"}


class ApiError(Exception):
    """An error answered in the 6.1 envelope; the status comes from the catalogue."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        kind = CATALOGUE[code]
        super().__init__(message or kind.message)
        self.code = code
        self.status = kind.status
        self.message = message or kind.message
        self.details = details or {}
        self.headers = headers or {}


# The last few seconds formatted: a busy API stamps the same second many times.
_ISO_SECONDS: dict[int, str] = {}


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, to the second, as the reference writes timestamps."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    second = math.floor(value.timestamp())  # the text depends on the instant only
    text = _ISO_SECONDS.get(second)
    if text is None:
        text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if len(_ISO_SECONDS) >= 64:
            _ISO_SECONDS.clear()
        _ISO_SECONDS[second] = text
    return text


def request_id_of(request: Request) -> str:
    """The id the request-context middleware gave this request."""
    return str(getattr(request.state, "request_id", "") or "")


def _now(request: Request) -> datetime:
    service = getattr(request.app.state, "service", None)
    return service.clock() if service is not None else datetime.now(UTC)


def envelope(request: Request, error: ApiError) -> JSONResponse:
    """The 6.1 error body for ``error``, with its status and extra headers.

    The Maylng routes (daemon.api.maylng_common) answer ``{"error": message}``.
    """
    if is_maylng_path(request.url.path):
        field = error.details.get("field")
        named = not isinstance(field, str) or field in error.message
        message = error.message if named else f"{field}: {error.message}"
        return Json({"error": message}, error.status, headers=error.headers)
    body = {
        "success": False,
        "error": {
            "code": error.code,
            "message": error.message,
            "details": error.details,
            "request_id": request_id_of(request),
            "timestamp": iso_utc(_now(request)),
        },
    }
    return Json(body, status_code=error.status, headers=error.headers)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return envelope(request, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _STATUS_CODES.get(exc.status_code)
    if code is None:
        code = "INVALID_REQUEST" if exc.status_code < 500 else "INTERNAL_ERROR"
    headers = dict(exc.headers or {})
    details: dict[str, Any] = {}
    if exc.status_code == 405 and "Allow" in headers:
        details["allowed_methods"] = [m.strip() for m in headers["Allow"].split(",")]
    elif exc.status_code == 404:
        details["path"] = request.url.path
    return envelope(request, ApiError(code, None, details, headers))


async def on_store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    # An unavailable database is said once per outage by the store (its reads and its
    # writes); each request it fails is only worth a line at info, for its request id.
    log.log(
        logging.INFO if exc.unavailable else logging.WARNING,
        "database error on %s %s [%s]: %s",
        request.method,
        request.url.path,
        request_id_of(request),
        exc,
    )
    reason = "the disk is full" if exc.disk_full else "the database is unavailable"
    return envelope(request, ApiError("DATABASE_ERROR", f"{reason}; try again later"))


async def on_not_accepting(request: Request, exc: Exception) -> Response:
    if isinstance(exc, MaintenanceMode):  # turned on through the admin API
        state = exc.state
        retry_after = state.retry_after(_now(request))
        details = {"expected_end": iso_utc(state.expected_end)} if state.expected_end else {}
        return envelope(
            request,
            ApiError("MAINTENANCE_MODE", state.message, details, {"Retry-After": str(retry_after)}),
        )
    return envelope(
        request,
        ApiError(
            "MAINTENANCE_MODE",
            "relayd is shutting down and accepts no new messages",
            {},
            {"Retry-After": "30"},
        ),
    )


async def on_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client left while its body was being read: nobody to answer, nothing went wrong."""
    log.debug(
        "client disconnected during %s %s [%s]",
        request.method,
        request.url.path,
        request_id_of(request),
    )
    return Response(status_code=400)  # the connection is gone: the server drops it


def internal_error(request: Request, exc: BaseException) -> Response:
    """A bug: log one line with the request id (traceback at debug level), answer 500."""
    rid = request_id_of(request)
    log.error(
        "unhandled %s on %s %s [%s]: %s",
        type(exc).__name__,
        request.method,
        request.url.path,
        rid,
        str(exc).splitlines()[0] if str(exc) else "",
    )
    log.debug("traceback of [%s]", rid, exc_info=exc)
    return envelope(request, ApiError("INTERNAL_ERROR"))


EXCEPTION_HANDLERS = {
    ApiError: on_api_error,
    HTTPException: on_http_exception,
    StoreError: on_store_error,
    NotAccepting: on_not_accepting,
    ClientDisconnect: on_client_disconnect,
}
