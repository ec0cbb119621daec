"""The reference's Python client module: ``from smtp_relay import Client``.

A thin alias of :mod:`relayctl.client`, so the API reference's example runs unchanged.
"""

from relayctl.client import (
    ApiError,
    Attachment,
    AuthError,
    Client,
    ConfigurationError,
    NotFoundError,
    RelayError,
    SendResult,
    UnreachableError,
)

__all__ = [
    "ApiError",
    "Attachment",
    "AuthError",
    "Client",
    "ConfigurationError",
    "NotFoundError",
    "RelayError",
    "SendResult",
    "UnreachableError",
]
