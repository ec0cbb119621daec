"""Typed errors raised by the client: each carries the API's error code and HTTP status."""

from __future__ import annotations

from typing import Any

from relayctl.settings import redact_url

# The daemon's codes for a request whose content it refuses (daemon/api/errors.py, under
# "Validation"): the caller's input is wrong, not the daemon's state.
VALIDATION_CODES = frozenset(
    {"INVALID_REQUEST", "MISSING_REQUIRED_FIELD", "INVALID_EMAIL_FORMAT", "MESSAGE_TOO_LARGE"}
)
# relayd's 404 for a path it has no route for (a wrong --url, or an older relayd).
ROUTE_NOT_FOUND = "ROUTE_NOT_FOUND"
# The message relayd's Maylng routes ({"error": ...}) give the same 404.
_NO_SUCH_ENDPOINT = "no such endpoint"


class RelayError(Exception):
    """Base of every error the client raises.

    ``code`` is the API's error code (``MESSAGE_NOT_FOUND``, ``INVALID_STATE``...) or one of
    the client's own (``UNREACHABLE``, ``INVALID_RESPONSE``, ``INVALID_URL``,
    ``INVALID_TOKEN``, ``INVALID_WORKSPACE``); ``status`` is the HTTP status, or None when no
    response arrived.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        details: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r})"


class AuthError(RelayError):
    """The daemon refused the credentials (401) or the action (403)."""


class NotFoundError(RelayError):
    """The resource does not exist (404 with ``MESSAGE_NOT_FOUND``, ``RECIPIENT_NOT_FOUND``...).

    A 404 for the endpoint itself is an :class:`EndpointNotFoundError`, not this.
    """


class ApiError(RelayError):
    """Any other refusal or failure reported by the daemon (400, 409, 429, 5xx...)."""


class InvalidRequestError(ApiError):
    """The daemon refused the request's content as invalid (``INVALID_REQUEST``,
    ``MISSING_REQUIRED_FIELD``, ``INVALID_EMAIL_FORMAT``, ``MESSAGE_TOO_LARGE``, or a 400/422
    of the Maylng routes): the input needs fixing, retrying it as is cannot work."""


class EndpointNotFoundError(ApiError):
    """A 404 for the endpoint, not for a resource: ``ROUTE_NOT_FOUND``, or a 404 without
    relayd's error body. The base URL is not a relayd, or the relayd there is too old to
    have this endpoint."""


class UnreachableError(RelayError):
    """No HTTP response at all: connection refused, timeout, DNS or TLS failure."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__("UNREACHABLE", f"cannot reach relayd at {redact_url(url)}: {reason}")
        self.url = url
        self.reason = reason


class ConfigurationError(RelayError):
    """The client itself is misconfigured (a base URL that is not http(s)://host..., a token
    or workspace id an HTTP header cannot carry)."""


def error_for_status(
    status: int,
    code: str,
    message: str,
    details: Any,
    request_id: str | None,
    *,
    dialect: str | None = "api",
) -> RelayError:
    """The error class the client raises for an HTTP error status.

    ``dialect`` is the shape of the error body: ``"api"`` for relayd's envelope
    (``{"error": {"code": ...}}``), ``"maylng"`` for its Maylng routes' ``{"error": "..."}``,
    None for a body that is neither (a proxy's HTML page, another program on the port).
    """
    cls: type[RelayError]
    if status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = _not_found_class(code, message, dialect)
    elif (dialect == "api" and code in VALIDATION_CODES) or (
        dialect == "maylng" and status in (400, 422)
    ):
        cls = InvalidRequestError
    else:
        cls = ApiError
    return cls(code, message, status, details, request_id)


def _not_found_class(code: str, message: str, dialect: str | None) -> type[RelayError]:
    """A 404: a missing resource, a missing endpoint, or (another code) a plain refusal."""
    if dialect == "api":
        if code == ROUTE_NOT_FOUND:
            return EndpointNotFoundError
        return NotFoundError if code.endswith("_NOT_FOUND") else ApiError
    if dialect == "maylng" and message.strip().lower() not in (_NO_SUCH_ENDPOINT, "not found"):
        return NotFoundError  # "account not found", "email address not found"...
    return EndpointNotFoundError
