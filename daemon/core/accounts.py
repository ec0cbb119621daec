"""Maylng accounts (pure): the plan table, counting windows, address rules and email statuses.

The plan table is the Maylng reference's "Rate Limits" table. It binds the
Maylng routes (``/v1/accounts``, ``/v1/account``, ``/v1/email-addresses``,
``/v1/emails``); the relay routes keep the relay's own tiers. A workspace on
the relay-only plan ``basic`` gets the ``free`` row on Maylng routes.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from daemon.core import plans

ACCOUNT_PLANS = ("free", "pro", "enterprise")
ADDRESS_TYPES = ("temporary", "persistent")
ADDRESS_STATUSES = ("active", "expired", "disabled")
EMAIL_STATUSES = ("queued", "scheduled", "sent", "delivered", "failed")
KEY_PREFIX = "maylng_"

# A lowercase local part: letters, digits and . _ + - inside, no dot at either end.
PREFIX_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?\Z")
_PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
GENERATED_PREFIX_LENGTH = 12


MAYLNG_PATHS = ("/v1/accounts", "/v1/account", "/v1/email-addresses", "/v1/emails")


def is_maylng_path(path: str) -> bool:
    """True for the Maylng routes, which answer errors as ``{"error": ...}``."""
    return any(path == p or path.startswith(p + "/") for p in MAYLNG_PATHS)


@dataclass(frozen=True)
class PlanLimits:
    """One row of the reference's plan table."""

    emails_per_hour: int
    emails_per_day: int
    emails_per_month: int
    email_addresses: int
    api_calls_per_hour: int


PLAN_LIMITS = {
    "free": PlanLimits(100, 1_000, 1_000, 5, 1_000),
    "pro": PlanLimits(1_000, 10_000, 50_000, 50, 10_000),
    "enterprise": PlanLimits(10_000, 100_000, 1_000_000, 500, 100_000),
}


def limits_for(plan: str) -> PlanLimits:
    """The Maylng limits of a workspace's plan (``basic`` and unknown plans: ``free``)."""
    return PLAN_LIMITS.get(plan, PLAN_LIMITS["free"])


@dataclass(frozen=True)
class Window:
    """A counting window: its name, start and end (exclusive)."""

    name: str
    start: datetime
    end: datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())


def month_window(now: datetime) -> Window:
    """The calendar month (UTC) holding ``now``."""
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return Window("month", start, end)


def fixed_window(name: str, seconds: int, now: datetime) -> Window:
    return Window(name, plans.window_start(now, seconds), plans.window_reset(now, seconds))


def sending_windows(limits: PlanLimits, now: datetime) -> list[tuple[Window, int]]:
    """The hour, day and month windows an email counts in, each with its limit."""
    return [
        (fixed_window("hour", plans.HOUR, now), limits.emails_per_hour),
        (fixed_window("day", plans.DAY, now), limits.emails_per_day),
        (month_window(now), limits.emails_per_month),
    ]


def generate_prefix(rng: random.Random, length: int = GENERATED_PREFIX_LENGTH) -> str:
    """A random local part for an address created without a prefix (``rng``: SystemRandom)."""
    return "".join(rng.choice(_PREFIX_ALPHABET) for _ in range(length))


def effective_status(status: str, expires_at: datetime | None, now: datetime) -> str:
    """An address's status as of ``now``: an active one past its expiry is expired already."""
    if status == "active" and expires_at is not None and expires_at <= now:
        return "expired"
    return status


def email_status(status: str, error: str | None) -> tuple[str, str | None]:
    """A queue status as a Maylng email status, with the failure reason it implies.

    ``processing`` (a worker holds it) is still ``queued`` to a Maylng client;
    ``auth_error`` (the provider refused our credentials) and ``cancelled``
    (through ``/api`` or account deletion) are ``failed``, the reason says which.
    """
    if status in ("queued", "processing"):
        return "queued", None
    if status in ("scheduled", "sent", "delivered"):
        return status, None
    if status == "cancelled":
        return "failed", error or "cancelled"
    if status == "auth_error":
        return "failed", error or "the provider refused the relay's credentials"
    return "failed", error or "delivery failed"
