"""Typed errors raised by the client: each carries the API's error code and HTTP status."""

from __future__ import annotations

from typing import Any


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
    """The resource does not exist (404)."""


class ApiError(RelayError):
    """Any other refusal or failure reported by the daemon (400, 409, 429, 5xx...)."""


class UnreachableError(RelayError):
    """No HTTP response at all: connection refused, timeout, DNS or TLS failure."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__("UNREACHABLE", f"cannot reach relayd at {url}: {reason}")
        self.url = url
        self.reason = reason


class ConfigurationError(RelayError):
    """The client itself is misconfigured (a base URL that is not http(s)://host..., a token
    or workspace id an HTTP header cannot carry)."""


def error_for_status(
    status: int, code: str, message: str, details: Any, request_id: str | None
) -> RelayError:
    """The error class the client raises for an HTTP error status."""
    cls: type[RelayError]
    if status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = NotFoundError
    else:
        cls = ApiError
    return cls(code, message, status, details, request_id)
