"""Provider order: workspace providers first, priority, weighted split."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from daemon.config import ProviderConfig
from daemon.core import routing
from daemon.core.routing import candidates, order_providers


def pc(pid: str, priority: int = 1, weight: int = 100, **kw: object) -> ProviderConfig:
    return ProviderConfig(id=pid, type="outbox", priority=priority, weight=weight, **kw)  # type: ignore[arg-type]


def test_lower_priority_number_first() -> None:
    providers = [pc("c", 3), pc("a", 1), pc("b", 2)]
    assert order_providers(providers, "ws", random.Random(1)) == ["a", "b", "c"]


def test_disabled_providers_are_skipped() -> None:
    providers = [pc("a", 1, enabled=False), pc("b", 2)]
    assert order_providers(providers, "ws", random.Random(1)) == ["b"]


def test_workspace_providers_replace_global_ones() -> None:
    providers = [
        pc("global", 1),
        pc("mine", 5, workspace_id="ws-1"),
        pc("theirs", workspace_id="ws-2"),
    ]
    assert order_providers(providers, "ws-1", random.Random(1)) == ["mine"]
    assert order_providers(providers, "ws-3", random.Random(1)) == ["global"]
    # A workspace whose own providers are all disabled falls back to the global ones.
    disabled = [pc("global"), pc("mine", workspace_id="ws-1", enabled=False)]
    assert [p.id for p in candidates(disabled, "ws-1")] == ["global"]


def test_weighted_split_within_a_priority() -> None:
    providers = [pc("big", 1, 70), pc("small", 1, 30), pc("backup", 2)]
    rng = random.Random(42)
    firsts: Counter[str] = Counter()
    for _ in range(10_000):
        order = order_providers(providers, "ws", rng)
        assert order[2] == "backup"
        assert sorted(order[:2]) == ["big", "small"]
        firsts[order[0]] += 1
    assert 6700 < firsts["big"] < 7300


def test_zero_weight_is_a_last_resort_within_its_priority() -> None:
    providers = [pc("spare", 1, 0), pc("main", 1, 1)]
    for seed in range(20):
        assert order_providers(providers, "ws", random.Random(seed)) == ["main", "spare"]


def test_only_available_providers() -> None:
    providers = [pc("a", 1), pc("b", 2)]
    assert order_providers(providers, "ws", random.Random(1), available={"b"}) == ["b"]


def test_same_seed_same_order() -> None:
    providers = [pc(str(i), 1, 10 + i) for i in range(6)]
    assert order_providers(providers, "ws", random.Random(9)) == order_providers(
        providers, "ws", random.Random(9)
    )


@pytest.mark.parametrize(
    ("retry_ins", "wait"),
    [
        ([], routing.MAX_WAIT),
        ([0.0], routing.MIN_WAIT),
        ([12.5, 3.0], 3.0),
        ([1e9], routing.MAX_WAIT),
    ],
)
def test_wait_time_is_the_first_provider_to_free_up(retry_ins: list[float], wait: float) -> None:
    assert routing.wait_time(retry_ins) == wait


@pytest.mark.parametrize(
    ("down", "workspace", "expected"),
    [
        (set(), "ws", True),
        ({"a"}, "ws", True),
        ({"a", "b"}, "ws", False),
        ({"own"}, "ws-own", False),  # a workspace's own providers replace the global ones
        ({"a", "b"}, "ws-own", True),
    ],
)
def test_can_deliver_while_a_candidate_is_not_down(
    down: set[str], workspace: str, expected: bool
) -> None:
    providers = [
        ProviderConfig("a", "smtp"),
        ProviderConfig("b", "smtp", priority=2),
        ProviderConfig("off", "smtp", enabled=False),
        ProviderConfig("own", "smtp", workspace_id="ws-own"),
    ]
    assert routing.can_deliver(providers, workspace, down) is expected


def test_no_candidate_cannot_deliver() -> None:
    assert routing.can_deliver([ProviderConfig("off", "smtp", enabled=False)], "ws", set()) is False


def _reference_order(
    providers: list[ProviderConfig], workspace_id: str, rng: random.Random
) -> list[str]:
    """order_providers as it was written before the grouping was cached: one weighted draw
    per group, including a group of one (the RNG sequence must not change)."""
    pool = sorted(candidates(providers, workspace_id), key=lambda p: (p.priority, p.id))
    order: list[str] = []
    for priority in sorted({p.priority for p in pool}):
        order.extend(
            p.id for p in routing.weighted_order([p for p in pool if p.priority == priority], rng)
        )
    return order


def test_route_cache_orders_and_draws_like_order_providers() -> None:
    providers = [
        pc("solo", 1, 5),
        pc("big", 2, 70),
        pc("small", 2, 30),
        pc("spare", 2, 0),
        pc("last", 3, 0),
        pc("own", 1, 1, workspace_id="ws-own"),
    ]
    by_id = {p.id: p for p in providers}
    cache = routing.RouteCache()
    cached, plain, reference = random.Random(3), random.Random(3), random.Random(3)
    for i in range(500):
        ws = "ws-own" if i % 7 == 0 else "ws"
        expected = _reference_order(providers, ws, reference)
        assert order_providers(providers, ws, plain) == expected
        assert cache.order(by_id, ws, cached) == expected
    assert cached.random() == plain.random() == reference.random()


def test_route_cache_follows_a_new_config_or_provider_set() -> None:
    cache = routing.RouteCache()
    rng = random.Random(1)
    first = {"a": pc("a", 1), "b": pc("b", 2)}
    available = {"a": object(), "b": object()}
    assert cache.order(first, "ws", rng, available) == ["a", "b"]
    second = {"a": pc("a", 2), "b": pc("b", 1)}
    assert cache.order(second, "ws", rng, available) == ["b", "a"]
    assert cache.order(second, "ws", rng, {"a": object()}) == ["a"]
