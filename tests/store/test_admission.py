"""Batched quota admission on SQLite and PostgreSQL: in-order decisions, one write per counter."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.store import admission
from daemon.store.committer import Committer
from daemon.store.engine import make_engine
from daemon.store.models import message_recipients, messages
from daemon.store.tenancy import Bucket, peek
from tests.store.test_queue import NOW, new_message

DAY = NOW.replace(hour=0)
EXPIRES = DAY + timedelta(days=2)


def bucket(key: str, limit: int | None) -> Bucket:
    return Bucket(key, DAY, EXPIRES, limit)


def stored(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(messages.c.id)).scalars())


def test_a_batch_is_decided_in_order_and_all_or_nothing(engine: Engine) -> None:
    glob, ws_a, ws_b = bucket("g", 4), bucket("ws:a", 2), bucket("ws:b", None)
    items = [
        admission.Admission(new_message(), (glob, ws_a)),  # admitted: g=1 a=1
        admission.Admission(new_message(), (glob, ws_b)),  # admitted: g=2 b=1
        admission.Admission(new_message(), (glob, ws_a)),  # admitted: g=3 a=2
        admission.Admission(new_message(), (glob, ws_a)),  # refused by ws:a (index 1)
        admission.Admission(new_message(), (glob, ws_b)),  # admitted: g=4 b=2
        admission.Admission(new_message(), (glob, ws_b)),  # refused by g (index 0)
    ]
    with engine.begin() as conn:
        results = admission.admit(conn, items)
    assert [r.ok for r in results] == [True, True, True, False, True, False]
    assert results[3].refused == 1 and results[3].counts == (3, 2)
    assert results[5].refused == 0 and results[5].counts == (4, 2)
    assert results[4].counts == (4, 2)
    # A refused message changed no counter: the counts are exactly the admitted ones.
    with engine.connect() as conn:
        assert peek(conn, [glob, ws_a, ws_b]) == (4, 2, 2)
    admitted = {item.message.id for item, r in zip(items, results, strict=True) if r.ok}
    assert stored(engine) == admitted


def test_later_batches_continue_from_the_stored_counts(engine: Engine) -> None:
    limited = bucket("ws:c", 3)
    for expected in ([True, True], [True, False], [False]):
        with engine.begin() as conn:
            results = admission.admit(
                conn, [admission.Admission(new_message(), (limited,)) for _ in expected]
            )
        assert [r.ok for r in results] == expected
    with engine.connect() as conn:
        assert peek(conn, [limited]) == (3,)


def test_concurrent_committers_never_pass_the_limit(engine: Engine) -> None:
    """Two daemons (two engines, two group committers) on one database: exactly the quota."""
    limit, per_daemon = 30, 40
    shared = bucket("ws:shared", limit)
    with engine.begin() as conn:  # the row exists: nothing but the row lock orders the two
        admission.lock_counters(conn, [shared])
    second = make_engine(engine.url.render_as_string(hide_password=False))
    outcomes: list[bool] = []
    start = threading.Barrier(2)

    def daemon(eng: Engine) -> None:
        async def run() -> list[bool]:
            committer = Committer(eng)
            await committer.start()
            start.wait()
            try:
                results = []
                for _ in range(per_daemon // 4):  # waves of 4: many small transactions
                    results += await asyncio.gather(
                        *(
                            committer.run_batched(
                                admission.admit, admission.Admission(new_message(), (shared,))
                            )
                            for _ in range(4)
                        )
                    )
            finally:
                await committer.close()
            return [r.ok for r in results]

        outcomes.extend(asyncio.run(run()))

    try:
        threads = [threading.Thread(target=daemon, args=(e,)) for e in (engine, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        second.dispose()
    assert len(outcomes) == 2 * per_daemon
    assert outcomes.count(True) == limit
    with engine.connect() as conn:
        assert peek(conn, [shared]) == (limit,)
    assert len(stored(engine)) == limit


def test_an_empty_bucket_list_admits(engine: Engine) -> None:
    with engine.begin() as conn:
        results = admission.admit(conn, [admission.Admission(new_message(), ())])
    assert results[0].ok and results[0].counts == ()


def test_refused_messages_leave_no_rows_and_the_admitted_keep_their_recipients(
    engine: Engine,
) -> None:
    limited = bucket("ws:d", 2)
    items = [
        admission.Admission(new_message(rcpts=2), (limited,)),
        admission.Admission(new_message(rcpts=3), (bucket("ws:e", 0),)),  # refused
        admission.Admission(new_message(rcpts=1), (limited,)),
        admission.Admission(new_message(rcpts=4), (limited,)),  # refused: ws:d is full
    ]
    with engine.begin() as conn:
        results = admission.admit(conn, items)
    assert [r.ok for r in results] == [True, False, True, False]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(message_recipients.c.message_id, message_recipients.c.address)
        ).all()
    expected = {
        (item.message.id, r.address)
        for item, result in zip(items, results, strict=True)
        if result.ok
        for r in item.message.recipients
    }
    assert set(rows) == expected and len(rows) == 3
