"""Plans, endpoint limits, windows and the X-RateLimit-* headers (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from daemon.core import plans

NOW = datetime(2024, 1, 15, 10, 30, 15, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("plan", "tier"),
    [
        ("free", plans.Tier(100, 1000, 10)),
        ("basic", plans.Tier(1000, 10000, 50)),
        ("pro", plans.Tier(10000, 100000, 100)),
        ("enterprise", plans.Tier(None, None, None)),
    ],
)
def test_tiers_follow_the_reference(plan: str, tier: plans.Tier) -> None:
    assert plans.tier_for(plan, None) == tier


def test_enterprise_custom_limits() -> None:
    custom = {"requests_per_hour": 5, "requests_per_day": 0, "burst": 2}
    assert plans.tier_for("enterprise", custom) == plans.Tier(5, None, 2)
    assert plans.tier_for("free", custom) == plans.TIERS["free"]  # only enterprise is custom


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("POST", "/api/messages", "POST /api/messages"),
        ("POST", "/v1/messages", "POST /api/messages"),
        ("GET", "/api/messages", "GET /api/messages"),
        ("HEAD", "/api/messages", "GET /api/messages"),
        ("GET", "/api/stats/realtime", "GET /api/stats/realtime"),
        ("POST", "/api/admin/keys", "POST /api/admin/*"),
        ("GET", "/api/messages/msg-1", None),
        ("GET", "/api/admin/keys", None),
        ("POST", "/apimessages", None),
        ("GET", "/health", None),
    ],
)
def test_endpoint_limits(method: str, path: str, name: str | None) -> None:
    found = plans.endpoint_limit(method, path)
    assert (found.name if found else None) == name


def test_windows_are_utc_aligned() -> None:
    assert plans.window_start(NOW, plans.HOUR) == datetime(2024, 1, 15, 10, tzinfo=UTC)
    assert plans.window_reset(NOW, plans.DAY) == datetime(2024, 1, 16, tzinfo=UTC)
    assert plans.window_start(NOW, plans.MINUTE) == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def test_most_constraining_window_and_headers() -> None:
    hour = plans.WindowUse("hour", plans.HOUR, 100, 40, datetime(2024, 1, 15, 11, tzinfo=UTC))
    day = plans.WindowUse("day", plans.DAY, 1000, 950, datetime(2024, 1, 16, tzinfo=UTC))
    chosen = plans.most_constraining([hour, day])
    assert chosen is day
    headers = plans.rate_headers(chosen, "ws-001", NOW)
    assert headers == {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "50",
        "X-RateLimit-Reset": str(int(datetime(2024, 1, 16, tzinfo=UTC).timestamp())),
        "X-RateLimit-Reset-After": str(13 * 3600 + 29 * 60 + 45),  # 44.75 s, rounded up
        "X-RateLimit-Workspace": "ws-001",
    }
    unlimited = plans.rate_headers(None, "ws-001", NOW)
    assert unlimited["X-RateLimit-Limit"] == "unlimited"


def test_daily_limit_zero_is_unlimited() -> None:
    assert plans.daily_limit(0) is None
    assert plans.daily_limit(None) is None
    assert plans.daily_limit(7) == 7
