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
from daemon.providers.outbox import OutboxProvider
from daemon.providers.smtp import SmtpProvider

AVAILABLE_TYPES = ("outbox", "smtp")


def build_providers(config: Config) -> dict[str, Provider]:
    """One provider per ``[providers.<id>]`` section; a type not built yet is a ConfigError."""
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
        else:
            raise ConfigError(
                f"providers.{pid}.type",
                f"provider type {pc.type!r} is not available yet "
                f"(available: {', '.join(AVAILABLE_TYPES)})",
            )
    return built


__all__ = [
    "AVAILABLE_TYPES",
    "DeliveryResult",
    "Envelope",
    "HealthResult",
    "OutboxProvider",
    "Provider",
    "RecipientResult",
    "SmtpProvider",
    "build_providers",
]
