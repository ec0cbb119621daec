"""Provider send budgets: per UTC day and a sliding per-second window."""

from __future__ import annotations

import pytest

from daemon.core.throttle import DAILY, PER_SECOND, Throttle

DAY = "2024-01-15"


@pytest.mark.parametrize(
    ("per_day", "per_second", "times", "allowed"),
    [
        (0, 0, [0.0] * 5, [True] * 5),
        (3, 0, [0.0, 1.0, 2.0, 3.0], [True, True, True, False]),
        (
            0,
            2,
            [0.0, 0.1, 0.2, 0.99, 1.0, 1.05, 1.1],
            [True, True, False, False, True, False, True],
        ),
        # The window slides: two at 0.5/0.75 block until 1.5, across the second boundary.
        (0, 2, [0.5, 0.75, 1.1, 1.4, 1.5], [True, True, False, False, True]),
        (2, 5, [0.0, 0.1, 5.0], [True, True, False]),
    ],
)
def test_take_follows_the_limits(
    per_day: int, per_second: int, times: list[float], allowed: list[bool]
) -> None:
    throttle = Throttle()
    got = [throttle.take(t, DAY, 3600.0, per_day, per_second).allowed for t in times]
    assert got == allowed


def test_verdict_names_the_limit_and_when_it_frees() -> None:
    throttle = Throttle()
    throttle.take(10.0, DAY, 500.0, 1, 1)
    per_second = Throttle()
    per_second.take(10.0, DAY, 500.0, 0, 1)
    daily = throttle.take(20.0, DAY, 480.0, 1, 1)
    assert (daily.limit, daily.retry_in) == (DAILY, 480.0)
    second = per_second.take(10.25, DAY, 500.0, 0, 1)
    assert second.limit == PER_SECOND
    assert second.retry_in == pytest.approx(0.75)


def test_a_new_day_starts_from_zero() -> None:
    throttle = Throttle(DAY, 10)
    assert not throttle.take(0.0, DAY, 1.0, 10, 0).allowed
    assert throttle.take(2.0, "2024-01-16", 86400.0, 10, 0).allowed
    assert throttle.day_count == 1


def test_check_counts_nothing() -> None:
    throttle = Throttle()
    assert throttle.check(0.0, DAY, 1.0, 1, 1).allowed
    assert throttle.check(0.0, DAY, 1.0, 1, 1).allowed
    assert throttle.day_count == 0
