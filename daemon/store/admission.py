"""Admitting a commit's worth of messages under the daily quotas: a few statements per batch.

:func:`admit` is the batch function the committer hands every message of one
commit to (``committer.run_batched(admit, Admission(...))``). Per batch it

1. creates or touches the counter rows the batch needs and reads their counts
   back, with ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``, one row after
   the other in key order (on PostgreSQL that locks each row as
   ``SELECT ... FOR UPDATE`` would);
2. decides each message in arrival order, in memory: admitted only if every one
   of its windows has room for one more (all or nothing per message);
3. adds each touched counter's total in one ``UPDATE`` executemany, and inserts
   the admitted messages with :func:`daemon.store.queue.insert_prepared`, whose
   parameters :func:`daemon.store.queue.prepare_messages` built before the
   transaction began (outside the SQLite writer lock).

Why the counts stay exact: on PostgreSQL the row locks make a second daemon's
batch wait for this transaction and then read the committed counts (READ
COMMITTED re-evaluates a conflicting row after waiting on its lock); rows are
locked in one global order, so two daemons queue instead of deadlocking. On
SQLite the first statement of step 1 takes the write lock before anything is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect

from daemon.core.message import NewMessage
from daemon.store import queue
from daemon.store.direct import Direct
from daemon.store.tenancy import Bucket, Consumed, usage_counters

CounterKey = tuple[str, datetime]


@dataclass(frozen=True)
class Admission:
    """One message and the counter windows it must fit in (scope order, for refusals)."""

    message: NewMessage
    buckets: tuple[Bucket, ...]


def _lock_statement(dialect: str) -> Any:
    """Create-or-touch a counter row and return its count.

    ``DO UPDATE SET count = count`` (not DO NOTHING) so that the row comes back
    through RETURNING, and on PostgreSQL the conflicting row is locked as by
    ``SELECT ... FOR UPDATE``, re-read after waiting for a concurrent transaction.
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    c = usage_counters.c
    return (
        insert(usage_counters)
        .values(
            key=sa.bindparam("b_key"),
            window_start=sa.bindparam("b_start"),
            count=0,
            expires_at=sa.bindparam("b_expires"),
        )
        .on_conflict_do_update(index_elements=[c.key, c.window_start], set_={"count": c.count})
        .returning(c.key, c.window_start, c.count)
    )


_LOCK = Direct(
    _lock_statement,
    results=(usage_counters.c.key, usage_counters.c.window_start, usage_counters.c.count),
)


_ADD = Direct(
    usage_counters.update()
    .where(
        usage_counters.c.key == sa.bindparam("b_key"),
        usage_counters.c.window_start == sa.bindparam("b_start"),
    )
    .values(count=usage_counters.c.count + sa.bindparam("b_n"))
)


def lock_counters(conn: Connection, buckets: Sequence[Bucket]) -> dict[CounterKey, int]:
    """The current count of each distinct bucket, its row created at 0 and locked."""
    distinct = {(b.key, b.window_start): b for b in buckets}
    if not distinct:
        return {}
    rows = [
        row
        for b in (distinct[key] for key in sorted(distinct))  # one lock order for all
        for row in _LOCK.execute(
            conn, {"b_key": b.key, "b_start": b.window_start, "b_expires": b.expires_at}
        )
    ]
    found = {(key, start): int(count) for key, start, count in rows}
    missing = set(distinct) - set(found)
    if missing:  # never count from 0 by mistake
        raise RuntimeError(f"usage counters not returned: {sorted(k for k, _ in missing)}")
    # Keys as the buckets spell them (the database may hand back an equal, other datetime).
    return {key: found[key] for key in distinct}


def add_counts(conn: Connection, deltas: dict[CounterKey, int]) -> None:
    """Add each delta to its (locked) counter row, in one executemany."""
    if deltas:
        _ADD.executemany(
            conn, [{"b_key": k, "b_start": s, "b_n": n} for (k, s), n in sorted(deltas.items())]
        )


class _Admit:
    """The batch function (a :class:`daemon.store.committer.PreparedBatch`).

    The messages' insert parameters are built by :meth:`prepare`, which the
    committer runs before it takes the writer lock; only the counter statements,
    the decisions and the inserts themselves run inside the transaction.
    """

    def prepare(self, dialect: Dialect, items: list[Admission]) -> queue.PreparedMessages:
        return queue.prepare_messages(dialect, [item.message for item in items])

    def run(
        self, conn: Connection, items: list[Admission], prepared: queue.PreparedMessages
    ) -> list[Consumed]:
        """Admit or refuse each item in order; the admitted are counted and inserted."""
        counts = lock_counters(conn, [b for item in items for b in item.buckets])
        deltas: dict[CounterKey, int] = {}
        admitted: list[int] = []
        results: list[Consumed] = []
        for index, item in enumerate(items):
            keys = [(b.key, b.window_start) for b in item.buckets]
            full = next(
                (
                    i
                    for i, (bucket, key) in enumerate(zip(item.buckets, keys, strict=True))
                    if bucket.limit is not None and counts[key] + 1 > bucket.limit
                ),
                None,
            )
            if full is None:
                for key in keys:
                    counts[key] += 1
                    deltas[key] = deltas.get(key, 0) + 1
                admitted.append(index)
            results.append(Consumed(full is None, tuple(counts[key] for key in keys), full))
        add_counts(conn, deltas)
        queue.insert_prepared(conn, prepared.subset(admitted))
        return results

    def __call__(self, conn: Connection, items: list[Admission]) -> list[Consumed]:
        return self.run(conn, items, self.prepare(conn.dialect, items))


admit = _Admit()
