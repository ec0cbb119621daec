"""Maintenance mode: whether the relay takes new mail, what it tells clients, whether it delivers.

Pure data: times are passed in. SMTP reads :meth:`MaintenanceState.smtp_reply`, the
sending API :meth:`MaintenanceState.retry_after`, the dispatcher ``pause_delivery``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

DEFAULT_MESSAGE = "Service in maintenance mode, try again later"
MAX_MESSAGE = 200
DEFAULT_RETRY_AFTER = 300


def _clean(message: str) -> str:
    # One SMTP reply line: no CR/LF or other controls, bounded length.
    text = " ".join("".join(c if c.isprintable() else " " for c in message).split())
    return text[:MAX_MESSAGE] or DEFAULT_MESSAGE


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class MaintenanceState:
    """Off by default. ``pause_delivery`` also stops the delivery workers while on."""

    enabled: bool = False
    message: str = DEFAULT_MESSAGE
    started_at: datetime | None = None
    expected_end: datetime | None = None
    pause_delivery: bool = False

    @classmethod
    def turned_on(
        cls,
        now: datetime,
        message: str | None = None,
        expected_minutes: float | None = None,
        pause_delivery: bool = False,
    ) -> MaintenanceState:
        """The state after ``POST .../maintenance/mode {"enabled": true}`` at ``now``."""
        end = now + timedelta(minutes=expected_minutes) if expected_minutes else None
        return cls(True, _clean(message or DEFAULT_MESSAGE), now, end, pause_delivery)

    def turned_off(self) -> MaintenanceState:
        """Back to normal; the message is kept only for the record."""
        return replace(self, enabled=False, pause_delivery=False, expected_end=None)

    @property
    def delivery_paused(self) -> bool:
        return self.enabled and self.pause_delivery

    def smtp_reply(self) -> str:
        """The reply to a new SMTP transaction while on (the session is then closed)."""
        return f"421 4.3.2 {self.message}"

    def retry_after(self, now: datetime) -> int:
        """Seconds a client should wait: until the expected end, else a default."""
        if self.expected_end is None:
            return DEFAULT_RETRY_AFTER
        return max(1, math.ceil((self.expected_end - now).total_seconds()))

    def to_json(self) -> dict[str, Any]:
        """The stored form (the settings table)."""
        return {
            "enabled": self.enabled,
            "message": self.message,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "expected_end": self.expected_end.isoformat() if self.expected_end else None,
            "pause_delivery": self.pause_delivery,
        }

    @classmethod
    def from_json(cls, data: Any) -> MaintenanceState:
        """Read the stored form; anything unreadable means off."""
        if not isinstance(data, dict):
            return cls()
        message = data.get("message")
        return cls(
            enabled=data.get("enabled") is True,
            message=_clean(message) if isinstance(message, str) else DEFAULT_MESSAGE,
            started_at=_time(data.get("started_at")),
            expected_end=_time(data.get("expected_end")),
            pause_delivery=data.get("pause_delivery") is True,
        )
