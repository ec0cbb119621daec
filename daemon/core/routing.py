"""Provider routing: the order in which a message tries the configured providers.

Pure: the random split between providers of one priority comes from an RNG argument.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
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


def priority_groups(
    providers: Iterable[ProviderConfig],
    workspace_id: str,
    available: Collection[str] | None = None,
) -> tuple[tuple[ProviderConfig, ...], ...]:
    """The candidates for a workspace, grouped by priority (best first), each by id.

    Fixed for a given configuration and set of running providers, so it may be kept
    (see :class:`RouteCache`); only the weighted split within a group is drawn anew.
    """
    pool = candidates(providers, workspace_id)
    if available is not None:
        pool = [p for p in pool if p.id in available]
    pool.sort(key=lambda p: (p.priority, p.id))
    return tuple(tuple(group) for _, group in groupby(pool, key=lambda p: p.priority))


def order_groups(groups: Iterable[tuple[ProviderConfig, ...]], rng: random.Random) -> list[str]:
    """Provider ids in priority order, each group split by weighted draws."""
    order: list[str] = []
    for group in groups:
        if len(group) == 1:
            # The same result and the same draws as weighted_order, without the lists.
            provider = group[0]
            if provider.weight > 0:
                rng.random()
            order.append(provider.id)
        else:
            order.extend(p.id for p in weighted_order(list(group), rng))
    return order


def order_providers(
    providers: Iterable[ProviderConfig],
    workspace_id: str,
    rng: random.Random,
    available: Collection[str] | None = None,
) -> list[str]:
    """Provider ids to try for a message, best first (lower priority number first).

    ``available`` limits the result to providers that are actually built and running.
    """
    return order_groups(priority_groups(providers, workspace_id, available), rng)


class RouteCache:
    """:func:`priority_groups` per workspace, kept while the configured and the running
    providers stay the same objects (a reload or a runtime change replaces them)."""

    MAX_WORKSPACES = 4096

    def __init__(self) -> None:
        self._providers: Mapping[str, ProviderConfig] | None = None
        self._available: Collection[str] | None = None
        self._groups: dict[str, tuple[tuple[ProviderConfig, ...], ...]] = {}

    def order(
        self,
        providers: Mapping[str, ProviderConfig],
        workspace_id: str,
        rng: random.Random,
        available: Collection[str] | None = None,
    ) -> list[str]:
        """The same as :func:`order_providers` over ``providers.values()``."""
        if providers is not self._providers or available is not self._available:
            self._providers, self._available = providers, available
            self._groups.clear()
        groups = self._groups.get(workspace_id)
        if groups is None:
            if len(self._groups) >= self.MAX_WORKSPACES:
                self._groups.clear()
            groups = priority_groups(providers.values(), workspace_id, available)
            self._groups[workspace_id] = groups
        return order_groups(groups, rng)


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
