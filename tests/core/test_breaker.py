"""The circuit breaker's transitions, as tables."""

from __future__ import annotations

import pytest

from daemon.core.breaker import (
    DEGRADED,
    DOWN,
    HEALTHY,
    PROBE,
    SEND,
    WAIT,
    Breaker,
    BreakerPolicy,
)

POLICY = BreakerPolicy(degraded_after=2, down_after=4, cooldown=30.0)


def run(events: str, start: float = 0.0) -> tuple[Breaker, list[str]]:
    """Apply ``events`` one per second: f(ail), s(ucceed), p(robe start), a(bandon)."""
    breaker, statuses, now = Breaker(), [], start
    for event in events:
        now += 1.0
        if event == "f":
            breaker = breaker.failed(now, POLICY)
        elif event == "s":
            breaker = breaker.succeeded()
        elif event == "p":
            breaker = breaker.probe_started()
        elif event == "a":
            breaker = breaker.probe_abandoned()
        statuses.append(breaker.status(POLICY))
    return breaker, statuses


@pytest.mark.parametrize(
    ("events", "statuses"),
    [
        ("", []),
        ("f", [HEALTHY]),
        ("ff", [HEALTHY, DEGRADED]),
        ("ffs", [HEALTHY, DEGRADED, HEALTHY]),
        ("ffff", [HEALTHY, DEGRADED, DEGRADED, DOWN]),
        ("fffsff", [HEALTHY, DEGRADED, DEGRADED, HEALTHY, HEALTHY, DEGRADED]),
        ("fffff", [HEALTHY, DEGRADED, DEGRADED, DOWN, DOWN]),
        ("ffffs", [HEALTHY, DEGRADED, DEGRADED, DOWN, HEALTHY]),
    ],
)
def test_status_follows_consecutive_failures(events: str, statuses: list[str]) -> None:
    assert run(events)[1] == statuses


@pytest.mark.parametrize(
    ("events", "at", "admission", "retry_in"),
    [
        ("", 100.0, SEND, 0.0),
        ("fff", 100.0, SEND, 0.0),  # degraded still gets mail
        ("ffff", 4.0, WAIT, 30.0),  # opened at t=4
        ("ffff", 33.9, WAIT, 0.1),
        ("ffff", 34.0, PROBE, 0.0),  # cool-down over: one probe
        ("ffffp", 40.0, WAIT, 0.0),  # a probe is in flight: the rest wait
        ("ffffpa", 40.0, PROBE, 0.0),  # the probe was abandoned: another may try
        ("ffffpf", 10.0, WAIT, 26.0),  # the probe failed at t=6: open again until 36
        ("ffffps", 40.0, SEND, 0.0),  # the probe succeeded: closed
    ],
)
def test_admission_and_cooldown(events: str, at: float, admission: str, retry_in: float) -> None:
    breaker, _ = run(events)
    assert breaker.admission(at, POLICY) == admission
    assert breaker.retry_in(at, POLICY) == pytest.approx(retry_in)


def test_down_before_degraded_when_thresholds_cross() -> None:
    policy = BreakerPolicy(degraded_after=5, down_after=1, cooldown=0.0)
    breaker = Breaker().failed(1.0, policy)
    assert breaker.status(policy) == DOWN
    assert breaker.admission(1.0, policy) == PROBE


@pytest.mark.parametrize("kwargs", [{"degraded_after": 0}, {"down_after": 0}, {"cooldown": -1.0}])
def test_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]
