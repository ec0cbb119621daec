"""Delivery providers behind one small async interface, built from ``config.providers``."""

from __future__ import annotations

from daemon.config import Config, ConfigError
from daemon.providers.base import (
    DeliveryResult,
    Envelope,
    HealthResult,
    Provider,
    RecipientResult,
)
from daemon.providers.gmail import GmailProvider
from daemon.providers.mailgun import MailgunProvider
from daemon.providers.outbox import OutboxProvider
from daemon.providers.sendgrid import SendgridProvider
from daemon.providers.smtp import SmtpProvider

AVAILABLE_TYPES = ("outbox", "smtp", "mailgun", "gmail", "sendgrid")
_HTTP_TYPES: dict[str, type[MailgunProvider] | type[GmailProvider] | type[SendgridProvider]] = {
    "mailgun": MailgunProvider,
    "gmail": GmailProvider,
    "sendgrid": SendgridProvider,
}


def build_providers(config: Config) -> dict[str, Provider]:
    """One provider per ``[providers.<id>]`` section; bad settings are a ConfigError."""
    built: dict[str, Provider] = {}
    for pid, pc in config.providers.items():
        if pc.type == "outbox":
            built[pid] = OutboxProvider.from_config(pc, config)
        elif pc.type == "smtp":
            try:
                built[pid] = SmtpProvider.from_config(pc, config)
            except OSError as exc:
                # e.g. an unreadable ca_file or password_file
                raise ConfigError(f"providers.{pid}", str(exc)) from None
        elif pc.type in _HTTP_TYPES:
            built[pid] = _HTTP_TYPES[pc.type].from_config(pc, config)
        else:
            raise ConfigError(
                f"providers.{pid}.type",
                f"provider type {pc.type!r} is not available "
                f"(available: {', '.join(AVAILABLE_TYPES)})",
            )
    return built


__all__ = [
    "AVAILABLE_TYPES",
    "DeliveryResult",
    "Envelope",
    "GmailProvider",
    "HealthResult",
    "MailgunProvider",
    "OutboxProvider",
    "Provider",
    "RecipientResult",
    "SendgridProvider",
    "SmtpProvider",
    "build_providers",
]
