"""Reply classification, backoff and the next-status decision."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from daemon.core.retry import (
    AUTH_ERROR,
    PERMANENT,
    SENT,
    TEMPORARY,
    Decision,
    backoff,
    classify_http,
    classify_smtp,
    classify_transport_error,
    decide,
    effective_max_retries,
    enhanced_code,
    retries_end,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Fixed(random.Random):
    """An RNG whose random() always returns one value (0 = shortest jitter, ~1 = longest)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        (250, "2.0.0 Ok: queued", SENT),
        (251, "User not local; will forward", SENT),
        (421, "4.3.2 Service shutting down", TEMPORARY),
        (450, "4.2.1 Mailbox busy", TEMPORARY),
        (451, "4.3.0 Local error", TEMPORARY),
        (452, "4.3.1 Insufficient storage", TEMPORARY),
        (454, "4.7.0 Temporary authentication failure", TEMPORARY),
        (550, "5.1.1 No such user", PERMANENT),
        (552, "5.3.4 Message too big", PERMANENT),
        (553, "5.1.3 Bad address", PERMANENT),
        (554, "5.7.1 Relay access denied", PERMANENT),
        (535, "5.7.8 Authentication credentials invalid", AUTH_ERROR),
        (535, "", AUTH_ERROR),
        (534, "5.7.9 Mechanism too weak", AUTH_ERROR),
        (530, "5.7.0 Authentication required", AUTH_ERROR),
        (550, "5.7.8 Bad credentials", AUTH_ERROR),
        (999, "what", TEMPORARY),
        (0, "", TEMPORARY),
    ],
)
def test_classify_smtp(code: int, text: str, kind: str) -> None:
    assert classify_smtp(code, text) == kind


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, SENT),
        (202, SENT),
        (400, PERMANENT),
        (404, PERMANENT),
        (413, PERMANENT),
        (422, PERMANENT),
        (401, AUTH_ERROR),
        (403, AUTH_ERROR),
        (408, TEMPORARY),
        (429, TEMPORARY),
        (500, TEMPORARY),
        (502, TEMPORARY),
        (503, TEMPORARY),
        (302, TEMPORARY),  # a redirect means a misconfigured base URL: keep the message
    ],
)
def test_classify_http(status: int, kind: str) -> None:
    assert classify_http(status) == kind


def test_transport_errors_are_temporary() -> None:
    assert classify_transport_error() == TEMPORARY


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("5.1.1 No such user", "5.1.1"),
        ("550 5.1.1 No such user", "5.1.1"),
        ("550-5.7.1 policy", "5.7.1"),
        ("4.4.2 timeout", "4.4.2"),
        ("2.0.0 Ok", "2.0.0"),
        ("Ok: queued as 5.1.1", None),
        ("6.1.1 nope", None),
        ("", None),
    ],
)
def test_enhanced_code(text: str, code: str | None) -> None:
    assert enhanced_code(text) == code


@pytest.mark.parametrize(
    ("message_max", "config_max", "expected"), [(None, 3, 3), (0, 3, 0), (7, 3, 7), (-2, 3, 0)]
)
def test_message_limit_overrides_config(
    message_max: int | None, config_max: int, expected: int
) -> None:
    assert effective_max_retries(message_max, config_max) == expected


@pytest.mark.parametrize(
    ("retry", "shortest", "longest"),
    [
        (0, 30.0, 60.0),
        (1, 60.0, 120.0),
        (5, 960.0, 1920.0),
        (6, 1800.0, 3600.0),  # 3840 capped at 3600
        (40, 1800.0, 3600.0),
        (10_000, 1800.0, 3600.0),  # no overflow
    ],
)
def test_backoff_doubles_caps_and_jitters(retry: int, shortest: float, longest: float) -> None:
    assert backoff(retry, 60.0, 3600.0, Fixed(0.0)) == shortest
    assert backoff(retry, 60.0, 3600.0, Fixed(0.999999)) == pytest.approx(longest, rel=1e-5)
    rng = random.Random(7)
    samples = [backoff(retry, 60.0, 3600.0, rng) for _ in range(200)]
    assert all(shortest <= s <= longest for s in samples)
    assert len(set(samples)) > 100  # jitter actually spreads retries out


@pytest.mark.parametrize("retry", [30, 62, 100, 10_000])
def test_without_a_cap_a_late_retry_still_has_a_date(retry: int) -> None:
    # retry_max = 0 and X-Retry-Count 100: 60s * 2**30 is past what a timedelta holds.
    decision = decide(TEMPORARY, retry, retry + 1, NOW, 60.0, 0.0, Fixed(0.999999))
    assert decision.status == "queued" and decision.next_attempt_at is not None
    waited = decision.next_attempt_at - NOW
    assert timedelta(days=36499) < waited <= timedelta(days=36500)
    assert retries_end(NOW, retry, retry + 1, 60.0, 0.0) == NOW + timedelta(days=36500)


def test_backoff_without_base_is_immediate() -> None:
    assert backoff(3, 0.0, 10.0, Fixed(0.5)) == 0.0


@pytest.mark.parametrize(
    ("kind", "retry_count", "max_retries", "expected"),
    [
        (SENT, 0, 3, Decision("sent", 0)),
        (SENT, 2, 3, Decision("sent", 2)),
        (PERMANENT, 0, 3, Decision("failed", 0)),
        (PERMANENT, 1, 3, Decision("failed", 1)),
        (AUTH_ERROR, 0, 3, Decision("auth_error", 0)),
        (TEMPORARY, 0, 3, Decision("queued", 1, NOW + timedelta(seconds=10))),
        (TEMPORARY, 2, 3, Decision("queued", 3, NOW + timedelta(seconds=40))),
        (TEMPORARY, 3, 3, Decision("failed", 3)),
        (TEMPORARY, 0, 0, Decision("failed", 0)),
        (TEMPORARY, 5, 3, Decision("failed", 5)),
    ],
)
def test_decide(kind: str, retry_count: int, max_retries: int, expected: Decision) -> None:
    # Fixed(0.0) gives the shortest delay: base * 2**retry / 2 with base 20s.
    assert decide(kind, retry_count, max_retries, NOW, 20.0, 3600.0, Fixed(0.0)) == expected


def test_decide_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown delivery result"):
        decide("bounced", 0, 3, NOW, 1.0, 2.0, Fixed(0.0))


@pytest.mark.parametrize(
    ("retry_count", "max_retries", "base", "cap", "seconds"),
    [
        (1, 3, 20.0, 3600.0, 40 + 80),  # retries 1 and 2 still to come after the next one
        (3, 3, 20.0, 3600.0, 0),  # the next attempt is the last
        (1, 5, 20.0, 100.0, 40 + 80 + 100 + 100),  # capped
        (1, 4, 0.0, 100.0, 0),  # no backoff: retries come at once
        # No cap: the exponent stops growing at 62, as backoff's does.
        (1, 70, 1e-12, 0.0, sum(2.0**k * 1e-12 for k in range(1, 62)) + 2.0**62 * 1e-12 * 8),
    ],
)
def test_retries_end(
    retry_count: int, max_retries: int, base: float, cap: float, seconds: float
) -> None:
    expected = NOW + timedelta(seconds=seconds)
    assert retries_end(NOW, retry_count, max_retries, base, cap) == expected


def test_retries_end_is_when_the_slowest_schedule_gives_up() -> None:
    # Longest jitter every time: the last attempt lands exactly on the bound; any other is earlier.
    for rng in (Fixed(0.999999999), random.Random(7)):
        first = decide(TEMPORARY, 0, 4, NOW, 30.0, 100.0, rng)
        assert first.next_attempt_at is not None
        bound = retries_end(first.next_attempt_at, first.retry_count, 4, 30.0, 100.0)
        assert bound is not None
        decision = first
        while decision.status == "queued":
            assert decision.next_attempt_at is not None
            last = decision.next_attempt_at
            decision = decide(TEMPORARY, decision.retry_count, 4, last, 30.0, 100.0, rng)
        assert last <= bound
        assert (bound - last).total_seconds() < (1 if isinstance(rng, Fixed) else 200)


def test_retries_end_past_any_date_is_unknown() -> None:
    assert retries_end(NOW, 0, 10**12, 3600.0, 0.0) is None
