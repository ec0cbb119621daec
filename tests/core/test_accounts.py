"""The Maylng plan table, windows, address rules and status mapping (pure)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from daemon.core.accounts import (
    PREFIX_PATTERN,
    effective_status,
    email_status,
    generate_prefix,
    is_maylng_path,
    limits_for,
    month_window,
    sending_windows,
)


def test_plan_table_follows_the_reference() -> None:
    free, pro, enterprise = (limits_for(p) for p in ("free", "pro", "enterprise"))
    assert (free.emails_per_hour, free.emails_per_day, free.emails_per_month) == (100, 1000, 1000)
    assert (free.email_addresses, free.api_calls_per_hour) == (5, 1000)
    assert (pro.emails_per_month, pro.email_addresses, pro.api_calls_per_hour) == (50000, 50, 10000)
    assert (enterprise.emails_per_hour, enterprise.emails_per_month) == (10000, 1000000)
    assert limits_for("basic") == free  # the relay-only plan gets the free row


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (
            datetime(2025, 7, 6, 10, tzinfo=UTC),
            datetime(2025, 7, 1, tzinfo=UTC),
            datetime(2025, 8, 1, tzinfo=UTC),
        ),
        (
            datetime(2025, 12, 31, 23, 59, tzinfo=UTC),
            datetime(2025, 12, 1, tzinfo=UTC),
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
    ],
)
def test_month_window(now: datetime, start: datetime, end: datetime) -> None:
    window = month_window(now)
    assert (window.start, window.end) == (start, end)


def test_sending_windows_hold_now() -> None:
    now = datetime(2025, 7, 6, 10, 30, tzinfo=UTC)
    windows = sending_windows(limits_for("pro"), now)
    assert [(w.name, limit) for w, limit in windows] == [
        ("hour", 1000),
        ("day", 10000),
        ("month", 50000),
    ]
    assert all(w.start <= now < w.end for w, _ in windows)


def test_generated_prefixes_are_valid_local_parts() -> None:
    rng = random.Random(7)
    prefixes = {generate_prefix(rng) for _ in range(50)}
    assert len(prefixes) == 50
    assert all(PREFIX_PATTERN.match(p) and len(p) == 12 for p in prefixes)
    assert not PREFIX_PATTERN.match("-dash") and not PREFIX_PATTERN.match("a b")


def test_effective_status() -> None:
    now = datetime(2025, 7, 6, tzinfo=UTC)
    assert effective_status("active", now - timedelta(seconds=1), now) == "expired"
    assert effective_status("active", now + timedelta(seconds=1), now) == "active"
    assert effective_status("active", None, now) == "active"
    assert effective_status("disabled", now - timedelta(days=1), now) == "disabled"


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        ("queued", None, ("queued", None)),
        ("processing", None, ("queued", None)),
        ("scheduled", None, ("scheduled", None)),
        ("sent", None, ("sent", None)),
        ("delivered", None, ("delivered", None)),
        ("failed", "550 no such user", ("failed", "550 no such user")),
        ("auth_error", None, ("failed", "the provider refused the relay's credentials")),
        ("cancelled", None, ("failed", "cancelled")),
        ("cancelled", "account deleted", ("failed", "account deleted")),
    ],
)
def test_email_status(status: str, error: str | None, expected: tuple[str, str | None]) -> None:
    assert email_status(status, error) == expected


def test_maylng_paths_are_not_the_relay_aliases() -> None:
    for path in ("/v1/accounts", "/v1/account", "/v1/account/api-key", "/v1/emails/x/status"):
        assert is_maylng_path(path)
    for path in ("/v1/messages", "/v1/accountsx", "/api/emails", "/v1/email-addressesx"):
        assert not is_maylng_path(path)
