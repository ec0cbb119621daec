"""Plans, request-rate tiers, endpoint limits and counting windows (pure: time is passed in).

Tiers follow the reference's "Rate Limits" table. ``burst`` is the most
requests one workspace may make within one second. Enterprise workspaces take
their numbers from ``custom_limits`` (``requests_per_hour``,
``requests_per_day``, ``burst``); a number left out is unlimited.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

PLANS = ("free", "basic", "pro", "enterprise")
CUSTOM_LIMIT_KEYS = ("requests_per_hour", "requests_per_day", "burst")

SECOND = 1
MINUTE = 60
HOUR = 3600
DAY = 86400


@dataclass(frozen=True)
class Tier:
    """Request limits of a plan; None is unlimited."""

    per_hour: int | None
    per_day: int | None
    burst: int | None


TIERS = {
    "free": Tier(100, 1000, 10),
    "basic": Tier(1000, 10000, 50),
    "pro": Tier(10000, 100000, 100),
}


def tier_for(plan: str, custom_limits: dict[str, Any] | None) -> Tier:
    """The request limits of ``plan`` (enterprise: its custom limits)."""
    if plan in TIERS:
        return TIERS[plan]
    custom = custom_limits or {}

    def pick(name: str) -> int | None:
        value = custom.get(name)
        return value if isinstance(value, int) and value > 0 else None

    return Tier(pick("requests_per_hour"), pick("requests_per_day"), pick("burst"))


@dataclass(frozen=True)
class EndpointLimit:
    """A per-minute limit on one method and path family (reference "Endpoint-Specific Limits")."""

    name: str
    method: str
    pattern: re.Pattern[str]
    per_minute: int


ENDPOINT_LIMITS = (
    EndpointLimit("POST /api/messages", "POST", re.compile(r"^/messages/?\Z"), 100),
    EndpointLimit("GET /api/messages", "GET", re.compile(r"^/messages/?\Z"), 1000),
    EndpointLimit("GET /api/stats/realtime", "GET", re.compile(r"^/stats/realtime/?\Z"), 10),
    EndpointLimit("POST /api/admin/*", "POST", re.compile(r"^/admin(/.*)?\Z"), 10),
)


def relative_path(path: str) -> str | None:
    """A relay route's path without its ``/api`` or ``/v1`` mount, or None for other paths."""
    for mount in ("/api", "/v1"):
        if path == mount or path.startswith(mount + "/"):
            return path[len(mount) :] or "/"
    return None


def endpoint_limit(method: str, path: str) -> EndpointLimit | None:
    """The endpoint-specific limit a request falls under, if any."""
    relative = relative_path(path)
    if relative is None:
        return None
    method = "GET" if method == "HEAD" else method
    for limit in ENDPOINT_LIMITS:
        if limit.method == method and limit.pattern.match(relative):
            return limit
    return None


def window_start(now: datetime, seconds: int) -> datetime:
    """The start of the fixed window of ``seconds`` that holds ``now`` (UTC-aligned)."""
    stamp = int(now.timestamp())
    return datetime.fromtimestamp(stamp - stamp % seconds, UTC)


def window_reset(now: datetime, seconds: int) -> datetime:
    """When the window holding ``now`` ends (a new day starts at 00:00 UTC)."""
    return window_start(now, seconds) + timedelta(seconds=seconds)


@dataclass(frozen=True)
class WindowUse:
    """One limit window with its count: what the X-RateLimit-* headers describe."""

    name: str
    seconds: int
    limit: int
    used: int
    reset_at: datetime

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


def most_constraining(windows: list[WindowUse]) -> WindowUse | None:
    """The window with the fewest requests left (ties: the one that resets last)."""
    if not windows:
        return None
    return min(windows, key=lambda w: (w.remaining, -w.seconds))


def rate_headers(window: WindowUse | None, workspace_id: str, now: datetime) -> dict[str, str]:
    """The headers of reference 6.3 for ``window`` (no window: nothing limits this caller)."""
    if window is None:
        reset = window_reset(now, HOUR)
        limit = remaining = "unlimited"
    else:
        reset = window.reset_at
        limit, remaining = str(window.limit), str(window.remaining)
    return {
        "X-RateLimit-Limit": limit,
        "X-RateLimit-Remaining": remaining,
        "X-RateLimit-Reset": str(int(reset.timestamp())),
        # Rounded up: a caller that waits this long finds the window reset, never a
        # fraction of a second early (a 429 from the burst second says 1, not 0).
        "X-RateLimit-Reset-After": str(max(0, math.ceil((reset - now).total_seconds()))),
        "X-RateLimit-Workspace": workspace_id,
    }


def daily_limit(configured: int | None) -> int | None:
    """A daily quota setting as a ceiling: None or 0 is unlimited."""
    return configured if configured else None
