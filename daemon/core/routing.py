"""Provider routing: the order in which a message tries the configured providers.

Pure: the random split between providers of one priority comes from an RNG argument.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from itertools import groupby

from daemon.config import ProviderConfig


def candidates(providers: Iterable[ProviderConfig], workspace_id: str) -> list[ProviderConfig]:
    """Enabled providers for a workspace: its own ones if it has any, else the global ones."""
    enabled = [p for p in providers if p.enabled]
    own = [p for p in enabled if p.workspace_id and p.workspace_id == workspace_id]
    return own or [p for p in enabled if not p.workspace_id]


def weighted_order(group: list[ProviderConfig], rng: random.Random) -> list[ProviderConfig]:
    """Order one priority group by weighted draws without replacement.

    A provider of weight 0 is only used after every weighted one of its priority.
    """
    weighted = [p for p in group if p.weight > 0]
    spare = [p for p in group if p.weight <= 0]
    ordered: list[ProviderConfig] = []
    while weighted:
        total = sum(p.weight for p in weighted)
        point = rng.random() * total
        for index, provider in enumerate(weighted):
            point -= provider.weight
            if point < 0 or index == len(weighted) - 1:
                ordered.append(weighted.pop(index))
                break
    return ordered + spare


def order_providers(
    providers: Iterable[ProviderConfig],
    workspace_id: str,
    rng: random.Random,
    available: Collection[str] | None = None,
) -> list[str]:
    """Provider ids to try for a message, best first (lower priority number first).

    ``available`` limits the result to providers that are actually built and running.
    """
    pool = candidates(providers, workspace_id)
    if available is not None:
        pool = [p for p in pool if p.id in available]
    pool.sort(key=lambda p: (p.priority, p.id))
    order: list[str] = []
    for _, group in groupby(pool, key=lambda p: p.priority):
        order.extend(p.id for p in weighted_order(list(group), rng))
    return order


# A message that found every candidate down or at its rate limit waits at least this
# long (no busy loop) and at most this long (a limit or cool-down may end early).
MIN_WAIT = 1.0
MAX_WAIT = 300.0


def wait_time(retry_ins: Iterable[float]) -> float:
    """How long a message waits when no candidate could take it: until the first frees up."""
    soonest = min(retry_ins, default=MAX_WAIT)
    return min(MAX_WAIT, max(MIN_WAIT, soonest))


def can_deliver(
    providers: Iterable[ProviderConfig],
    workspace_id: str,
    down: Collection[str],
    available: Collection[str] | None = None,
) -> bool:
    """Whether some candidate for the workspace is not down (false when there is none)."""
    pool = candidates(providers, workspace_id)
    if available is not None:
        pool = [p for p in pool if p.id in available]
    return any(p.id not in down for p in pool)
