"""The queue on SQLite and PostgreSQL: enqueue, claim with leases, outcomes, cancel, retry."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import functools
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.core.ids import message_id
from daemon.core.message import Attempt, NewMessage, Outcome, Recipient
from daemon.store import audience, queue
from daemon.store.committer import Committer, writer_lock_path
from daemon.store.models import delivery_attempts, message_recipients, messages

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


def new_message(
    priority: int = 1, due: datetime = NOW, status: str = "queued", rcpts: int = 1, **kw: object
) -> NewMessage:
    return NewMessage(
        id=message_id(int(due.timestamp() * 1000)),
        uuid=str(uuid.uuid4()),
        mail_from="a@example.com",
        recipients=[Recipient(f"r{i}@example.org", "FAILURE", None) for i in range(rcpts)],
        raw=b"Subject: t\r\n\r\nbody\r\n",
        queued_at=NOW,
        next_attempt_at=due,
        priority=priority,
        status=status,
        subject="t",
        **kw,  # type: ignore[arg-type]
    )


def insert(engine: Engine, *batch: NewMessage) -> None:
    with engine.begin() as conn:
        queue.insert_messages(conn, list(batch))


def test_insert_and_claim_by_priority_then_due_time(engine: Engine) -> None:
    low = new_message(priority=2)
    early = new_message(due=NOW - timedelta(minutes=2))
    high = new_message(priority=0)
    later = new_message(due=NOW + timedelta(hours=1), status="scheduled")
    insert(engine, low, early, high, later)
    with engine.begin() as conn:
        claimed = queue.claim(conn, NOW, 10, "w1", LEASE)
    assert [c.id for c in claimed] == [high.id, early.id, low.id]
    assert claimed[0].raw == b"Subject: t\r\n\r\nbody\r\n"
    assert claimed[0].recipients == [Recipient("r0@example.org", "FAILURE", None)]
    with engine.connect() as conn:
        counts = queue.count_by_status(conn)
    assert counts["processing"] == 3 and counts["scheduled"] == 1
    with engine.begin() as conn:
        assert queue.claim(conn, NOW, 10, "w2", LEASE) == []
        assert [c.id for c in queue.claim(conn, NOW + timedelta(hours=2), 10, "w2", LEASE)] == [
            later.id
        ]


def test_concurrent_claims_never_share_a_message(engine: Engine) -> None:
    insert(engine, *[new_message() for _ in range(200)])
    seen: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while True:
                with engine.begin() as conn:
                    got = queue.claim(conn, NOW, 7, name, LEASE)
                if not got:
                    return
                with lock:
                    seen.extend(c.id for c in got)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 200 and len(set(seen)) == 200


def test_expired_lease_is_reaped_and_stale_outcome_dropped(engine: Engine) -> None:
    msg = new_message()
    insert(engine, msg)
    with engine.begin() as conn:
        (first,) = queue.claim(conn, NOW, 1, "dead-worker", LEASE)
        assert queue.reap_expired(conn, NOW + timedelta(minutes=1)) == 0
        assert queue.reap_expired(conn, NOW + timedelta(minutes=6)) == 1
        (second,) = queue.claim(conn, NOW + timedelta(minutes=6), 1, "new-worker", LEASE)
    assert second.id == first.id
    late = Outcome(first.id, "dead-worker", "sent", NOW, 0)
    with engine.begin() as conn:
        assert queue.apply_outcomes(conn, [late]) == 0
        done = Outcome(
            second.id,
            "new-worker",
            "sent",
            NOW + timedelta(minutes=7),
            0,
            provider="outbox",
            provider_message_id="x.eml",
            attempts=(Attempt("outbox", "sent", NOW, 250, "ok", 3),),
            recipient_status=(("r0@example.org", "sent", None),),
        )
        assert queue.apply_outcomes(conn, [done]) == 1
    with engine.connect() as conn:
        row = queue.get_message(conn, msg.id)
        assert (row.status, row.provider, row.provider_message_id) == ("sent", "outbox", "x.eml")
        assert [a.outcome for a in queue.get_attempts(conn, msg.id)] == ["sent"]
        assert [r.status for r in queue.get_recipients(conn, msg.id)] == ["sent"]


def _taken_over(engine: Engine, msg: NewMessage) -> None:
    """``dead-worker`` claims ``msg``, its lease expires, ``new-worker`` takes it over."""
    insert(engine, msg)
    with engine.begin() as conn:
        queue.claim(conn, NOW, 1, "dead-worker", LEASE)
        queue.reap_expired(conn, NOW + timedelta(minutes=6))
        queue.claim(conn, NOW + timedelta(minutes=6), 1, "new-worker", LEASE)


def _late(msg: NewMessage, *statuses: tuple[str, str, str | None]) -> Outcome:
    """The dead worker's result: it did talk to its provider."""
    outcome = "sent" if any(s == "sent" for _, s, _ in statuses) else "permanent"
    return Outcome(
        msg.id,
        "dead-worker",
        "sent" if outcome == "sent" else "failed",
        NOW + timedelta(minutes=8),
        0,
        provider="outbox",
        provider_message_id="late.eml",
        attempts=(Attempt("outbox", outcome, NOW + timedelta(minutes=7), 250, "250 late", 9),),
        recipient_status=statuses,
    )


def _state(engine: Engine, msg: NewMessage) -> tuple[Any, list[tuple[str, str]], list[str]]:
    with engine.connect() as conn:
        row = queue.get_message(conn, msg.id)
        rcpts = [(r.address, r.status) for r in queue.get_recipients(conn, msg.id)]
        tries = [f"{a.provider}:{a.outcome}:{a.reply}" for a in queue.get_attempts(conn, msg.id)]
    return row, rcpts, tries


def test_a_late_result_keeps_its_attempts_but_leaves_a_running_delivery_alone(
    engine: Engine,
) -> None:
    """The message is being delivered by the worker that took it over: the late result
    adds its attempt and settles the recipient it delivered (still pending), nothing else:
    not its failure of the other, not the message's status or lease."""
    msg = new_message(rcpts=2)
    _taken_over(engine, msg)
    late = _late(msg, ("r0@example.org", "sent", None), ("r1@example.org", "failed", "550 no"))
    with engine.begin() as conn:
        assert queue.apply_outcomes(conn, [late]) == 0
    row, rcpts, tries = _state(engine, msg)
    assert (row.status, row.error, row.provider) == ("processing", None, None)
    assert rcpts == [("r0@example.org", "sent"), ("r1@example.org", "pending")]
    assert tries == ["outbox:sent:250 late"]
    with engine.connect() as conn:
        owner = conn.execute(sa.select(messages.c.lease_owner).where(messages.c.id == msg.id))
        assert owner.scalar() == "new-worker"
        # The newer delivery only has r1 left to send to.
        assert [r.address for r in queue.get_recipients(conn, msg.id) if r.status == "pending"] == [
            "r1@example.org"
        ]


def test_a_late_delivery_finishes_a_message_waiting_for_a_retry(engine: Engine) -> None:
    """The worker that took the message over deferred it; the late result had delivered
    it. The message is done (it is not sent again at the retry), through the late result's
    provider, and its campaign counts it delivered and finished, once."""
    msg = new_message(rcpts=2, campaign_id="spring")
    _taken_over(engine, msg)
    later = NOW + timedelta(hours=1)
    deferral = Outcome(
        msg.id,
        "new-worker",
        "queued",
        NOW + timedelta(minutes=7),
        1,
        later,
        provider="sink",
        error="r0@example.org: 451 busy; r1@example.org: 451 busy",
        attempts=(Attempt("sink", "temporary", NOW + timedelta(minutes=6), 451, "451 busy"),),
    )
    late = _late(msg, ("r0@example.org", "sent", None), ("r1@example.org", "sent", None))
    with engine.begin() as conn:
        assert queue.apply_outcomes(conn, [deferral]) == 1
        assert queue.apply_outcomes(conn, [late]) == 0
    row, rcpts, tries = _state(engine, msg)
    assert (row.status, row.provider, row.provider_message_id) == ("sent", "outbox", "late.eml")
    assert (row.error, row.retry_count, row.processed_at) == (None, 1, late.processed_at)
    assert rcpts == [("r0@example.org", "sent"), ("r1@example.org", "sent")]
    assert tries == ["sink:temporary:451 busy", "outbox:sent:250 late"]
    with engine.begin() as conn:
        assert queue.claim(conn, later, 5, "w", LEASE) == []  # nothing left to deliver
        camp = conn.execute(
            sa.select(audience.campaigns).where(audience.campaigns.c.id == "spring")
        ).one()
    assert (camp.sent, camp.delivered, camp.bounced, camp.pending) == (2, 2, 0, 0)
    assert camp.completed_at is not None


def test_a_late_delivery_to_some_recipients_leaves_the_rest_to_the_retry(engine: Engine) -> None:
    msg = new_message(rcpts=2)
    _taken_over(engine, msg)
    later = NOW + timedelta(hours=1)
    deferral = Outcome(msg.id, "new-worker", "queued", NOW, 1, later, error="451 busy")
    late = _late(msg, ("r0@example.org", "sent", None))
    with engine.begin() as conn:
        queue.apply_outcomes(conn, [deferral])
        queue.apply_outcomes(conn, [late])
    row, rcpts, _ = _state(engine, msg)
    assert (row.status, row.error) == ("queued", "451 busy")
    assert rcpts == [("r0@example.org", "sent"), ("r1@example.org", "pending")]
    with engine.begin() as conn:
        (again,) = queue.claim(conn, later, 5, "w", LEASE)
    assert [r.address for r in again.recipients] == ["r1@example.org"]


def test_a_late_result_never_overwrites_what_was_decided(engine: Engine) -> None:
    """The newer delivery already failed the recipient for good: that stays, and so does
    the message; the late attempt is still in the history. A late result for a message
    deleted meanwhile is dropped without an error."""
    msg, gone = new_message(), new_message()
    _taken_over(engine, msg)
    failed = Outcome(
        msg.id,
        "new-worker",
        "failed",
        NOW,
        0,
        error="r0@example.org: 550 no",
        recipient_status=(("r0@example.org", "failed", "550 no"),),
    )
    with engine.begin() as conn:
        queue.apply_outcomes(conn, [failed])
        late = [
            _late(msg, ("r0@example.org", "sent", None)),
            _late(gone, ("r0@example.org", "sent", None)),
        ]
        assert queue.apply_outcomes(conn, late) == 0
    row, rcpts, tries = _state(engine, msg)
    assert (row.status, row.error) == ("failed", "r0@example.org: 550 no")
    assert rcpts == [("r0@example.org", "failed")]
    assert tries == ["outbox:sent:250 late"]
    with engine.connect() as conn:
        assert queue.get_attempts(conn, gone.id) == []


def test_delay_dsn_is_recorded_with_its_outcome_once(engine: Engine) -> None:
    scheduled = NOW - timedelta(hours=1)
    msg = new_message(send_at=scheduled)
    insert(engine, msg)
    later = NOW + timedelta(minutes=10)
    with engine.begin() as conn:
        (first,) = queue.claim(conn, NOW, 1, "w1", LEASE)
        assert (first.dsn_delayed, first.send_at) == (False, scheduled)
        # A lost lease records nothing, the delay DSN mark included.
        lost = Outcome(first.id, "someone-else", "queued", NOW, 1, later, dsn_delayed=True)
        assert queue.apply_outcomes(conn, [lost]) == 0
        deferred = Outcome(first.id, "w1", "queued", NOW, 1, later, dsn_delayed=True)
        assert queue.apply_outcomes(conn, [deferred]) == 1
        (second,) = queue.claim(conn, later, 1, "w2", LEASE)
        assert second.dsn_delayed is True
        again = Outcome(second.id, "w2", "queued", later, 2, later + timedelta(minutes=10))
        assert queue.apply_outcomes(conn, [again]) == 1
    with engine.connect() as conn:
        stamp = conn.execute(
            sa.select(messages.c.dsn_delayed_at).where(messages.c.id == msg.id)
        ).scalar_one()
    assert stamp == NOW


def test_release_hands_back_leases(engine: Engine) -> None:
    insert(engine, new_message(), new_message())
    with engine.begin() as conn:
        queue.claim(conn, NOW, 5, "me", LEASE)
        assert queue.release(conn, "someone-else", NOW) == 0
        assert queue.release(conn, "me", NOW) == 2
        assert len(queue.claim(conn, NOW, 5, "other", LEASE)) == 2


def test_cancel_and_retry_states(engine: Engine) -> None:
    queued, failed = new_message(), new_message()
    insert(engine, queued, failed)
    with engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == failed.id).values(status="failed"))
        conn.execute(
            message_recipients.update()
            .where(message_recipients.c.message_id == failed.id)
            .values(status="failed", error="550 no")
        )
        assert queue.cancel(conn, queued.id, NOW) is True
        with pytest.raises(queue.InvalidState) as info:
            queue.cancel(conn, queued.id, NOW)
        assert info.value.status == "cancelled"
        assert queue.cancel(conn, "msg-nope", NOW) is False
        assert queue.cancel(conn, failed.id, NOW, workspace_id="other") is False
        result = queue.retry(conn, failed.id, NOW)
        assert result == {"message_id": failed.id, "status": "queued", "retry_count": 1}
        with pytest.raises(queue.InvalidState):
            queue.retry(conn, failed.id, NOW)
        assert queue.retry(conn, "msg-nope", NOW) is None
        assert [r.status for r in queue.get_recipients(conn, failed.id)] == ["pending"]


def test_retry_sends_to_suppressed_recipients_again_unless_all_still_are(engine: Engine) -> None:
    failed = new_message(rcpts=2)
    insert(engine, failed)

    def recipient(conn: sa.Connection, email: str, status: str) -> None:
        audience.insert_recipient(
            conn,
            {"workspace_id": "default", "email": email, "status": status, "metadata": {},
             "suppression_reason": "test", "created_at": NOW, "updated_at": NOW},
        )  # fmt: skip

    with engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == failed.id).values(status="failed"))
        for address, status in (("r0@example.org", "suppressed"), ("r1@example.org", "failed")):
            conn.execute(
                message_recipients.update()
                .where(message_recipients.c.address == address)
                .values(status=status, error="no")
            )
        recipient(conn, "r0@example.org", "UNSUBSCRIBED")
        recipient(conn, "R1@example.org", "BOUNCED")
    with engine.begin() as conn, pytest.raises(queue.AllSuppressed) as info:
        queue.retry(conn, failed.id, NOW)
    assert info.value.status == "failed"
    assert info.value.suppressed == (
        ("r0@example.org", "suppressed: recipient is UNSUBSCRIBED (test)"),
        ("r1@example.org", "suppressed: recipient is BOUNCED (test)"),
    )
    with engine.begin() as conn:
        assert queue.get_message(conn, failed.id).status == "failed"  # nothing changed
        audience.update_recipient(conn, "default", "r1@example.org", {"status": "ACTIVE"})
        assert queue.retry(conn, failed.id, NOW) is not None
        # Both go to delivery, which checks r0's suppression afresh.
        assert [r.status for r in queue.get_recipients(conn, failed.id)] == ["pending"] * 2


def _partly_sent(engine: Engine, *statuses: str) -> NewMessage:
    """A ``sent`` message whose recipients r0, r1... ended with ``statuses``."""
    msg = new_message(rcpts=len(statuses), campaign_id="spring")
    insert(engine, msg)
    with engine.begin() as conn:
        (claimed,) = queue.claim(conn, NOW, 1, "w", LEASE)
        outcome = Outcome(
            msg.id,
            "w",
            "sent",
            NOW,
            0,
            provider="sink",
            provider_message_id="SINK1",
            error="r1@example.org: 451 busy",
            recipient_status=tuple(
                (r.address, status, None if status == "sent" else "451 busy")
                for r, status in zip(claimed.recipients, statuses, strict=True)
            ),
        )
        assert queue.apply_outcomes(conn, [outcome]) == 1
    return msg


def test_retry_of_a_partial_delivery_sends_only_to_the_recipients_without_it(
    engine: Engine,
) -> None:
    msg = _partly_sent(engine, "sent", "failed")
    with engine.begin() as conn:
        result = queue.retry(conn, msg.id, NOW + timedelta(minutes=1))
        assert result == {"message_id": msg.id, "status": "queued", "retry_count": 1}
        assert [(r.address, r.status) for r in queue.get_recipients(conn, msg.id)] == [
            ("r0@example.org", "sent"),
            ("r1@example.org", "pending"),
        ]
        (again,) = queue.claim(conn, NOW + timedelta(minutes=1), 5, "w2", LEASE)
        assert [r.address for r in again.recipients] == ["r1@example.org"]
        camp = conn.execute(
            sa.select(audience.campaigns).where(audience.campaigns.c.id == "spring")
        ).one()
        # r1's failure no longer counts; the message is pending again.
        assert (camp.sent, camp.delivered, camp.bounced, camp.pending) == (1, 1, 0, 1)
        # It fails again: the message stays sent (r0 got it), through the same provider.
        retried = Outcome(
            msg.id,
            "w2",
            "failed",
            NOW + timedelta(minutes=2),
            1,
            error="r1@example.org: 451 busy",
            recipient_status=(("r1@example.org", "failed", "451 busy"),),
        )
        assert queue.apply_outcomes(conn, [retried]) == 1
    row, rcpts, _ = _state(engine, msg)
    assert (row.status, row.provider, row.provider_message_id) == ("sent", "sink", "SINK1")
    assert rcpts == [("r0@example.org", "sent"), ("r1@example.org", "failed")]
    # A message every recipient got is not retried, alone or in bulk.
    everyone = _partly_sent(engine, "sent", "sent")
    with engine.begin() as conn, pytest.raises(queue.InvalidState) as info:
        queue.retry(conn, everyone.id, NOW)
    assert info.value.status == "sent"
    with engine.begin() as conn:
        assert queue.requeue(conn, [messages.c.id == everyone.id], NOW) == []


def test_a_partial_delivery_whose_others_are_all_suppressed_is_refused(engine: Engine) -> None:
    msg = _partly_sent(engine, "sent", "suppressed")
    with engine.begin() as conn:
        audience.insert_recipient(
            conn,
            {"workspace_id": "default", "email": "r1@example.org", "status": "UNSUBSCRIBED",
             "metadata": {}, "suppression_reason": "test", "created_at": NOW, "updated_at": NOW},
        )  # fmt: skip
    with engine.begin() as conn, pytest.raises(queue.AllSuppressed) as info:
        queue.retry(conn, msg.id, NOW)
    assert info.value.status == "sent"
    assert [a for a, _ in info.value.suppressed] == ["r1@example.org"]


def test_list_filters_and_totals(engine: Engine) -> None:
    a = new_message(workspace_id="ws-a")
    b = new_message(workspace_id="ws-b", rcpts=2)
    insert(engine, a, b)
    with engine.connect() as conn:
        rows, total = queue.list_messages(conn, queue.ListFilter(), 1, 0)
        assert total == 2 and len(rows) == 1
        rows, total = queue.list_messages(conn, queue.ListFilter(workspace_id="ws-b"), 10, 0)
        assert [r.id for r in rows] == [b.id]
        rows, _ = queue.list_messages(conn, queue.ListFilter(to="r1@example.org"), 10, 0)
        assert [r.id for r in rows] == [b.id]
        rows, total = queue.list_messages(conn, queue.ListFilter(status="failed"), 10, 0)
        assert total == 0
        assert queue.pending_depth(conn) == 2
        assert queue.next_due(conn) == NOW


def test_to_filter_ignores_case_through_the_lower_address_index(engine: Engine) -> None:
    mixed = dataclasses.replace(new_message(), recipients=[Recipient("Mixed.Case@Example.ORG")])
    insert(engine, mixed, new_message())
    with engine.connect() as conn:
        for wanted in (
            "mixed.case@example.org",
            "MIXED.CASE@EXAMPLE.ORG",
            "Mixed.Case@Example.ORG",
        ):
            rows, total = queue.list_messages(conn, queue.ListFilter(to=wanted), 10, 0)
            assert ([r.id for r in rows], total) == ([mixed.id], 1), wanted
        for other in ("mixed.case@example", "%@example.org", "mixed_case@example.org"):
            assert queue.list_messages(conn, queue.ListFilter(to=other), 10, 0)[1] == 0, other
        # The subquery reads ix_message_recipients_address_lower, not the whole table.
        cond = queue._filter_conditions(queue.ListFilter(to="Mixed.Case@Example.ORG"))
        query = sa.select(sa.func.count()).select_from(messages).where(*cond)
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            plan = conn.execute(sa.text("EXPLAIN QUERY PLAN " + sql)).all()
        else:
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))  # a two-row table
            plan = conn.execute(sa.text("EXPLAIN " + sql)).all()
        assert "ix_message_recipients_address_lower" in " ".join(str(r[-1]) for r in plan), plan


async def test_group_commit_batches_concurrent_writes(engine: Engine) -> None:
    committer = Committer(engine)
    await committer.start()
    batch = [new_message() for _ in range(100)]
    await asyncio.gather(
        *(committer.run(functools.partial(queue.insert_messages, batch=[m])) for m in batch)
    )
    assert committer.ops == 100
    assert committer.commits < 100
    # One failing op fails alone; the others in its batch still commit.
    dup, fresh = batch[0], new_message()
    results = await asyncio.gather(
        committer.run(lambda c: queue.insert_messages(c, [dup])),
        committer.run(lambda c: queue.insert_messages(c, [fresh])),
        return_exceptions=True,
    )
    assert isinstance(results[0], Exception) and results[1] is None
    await committer.close()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 101
        assert conn.execute(sa.select(sa.func.count()).select_from(delivery_attempts)).scalar() == 0


def _session_id(conn: sa.Connection) -> Any:
    """Which database session ``conn`` is: the server's backend pid, or SQLite's handle."""
    if conn.dialect.name == "postgresql":
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    return id(conn.connection.dbapi_connection)


async def test_the_writer_holds_one_connection_between_commits_and_drops_it_after_a_failure(
    engine: Engine,
) -> None:
    committer = Committer(engine)
    await committer.start()
    try:
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        first = await committer.run(_session_id)
        # Kept by the writer between commits, not handed back to the pool each time.
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        assert await committer.run(_session_id) == first
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        with pytest.raises(ZeroDivisionError):
            await committer.run(lambda c: 1 / 0)
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # The next commit works, on a connection in a fresh state.
        inserted: object = await committer.run(lambda c: queue.insert_messages(c, [new_message()]))
        assert inserted is None
    finally:
        await committer.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 1


async def test_a_connection_the_server_dropped_while_idle_is_not_used_again(
    engine: Engine,
) -> None:
    """PostgreSQL restarted, or killed the idle session: the next write still commits."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop a connection")
    committer = Committer(engine)
    committer.keep_connection = 0.05
    await committer.start()
    try:
        backend = await committer.run(_session_id)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": backend}).scalar()
        await asyncio.sleep(0.2)
        inserted: object = await committer.run(lambda c: queue.insert_messages(c, [new_message()]))
        assert inserted is None
        assert await committer.run(_session_id) != backend
    finally:
        await committer.close()


async def test_a_write_given_time_joins_the_next_commit_or_commits_when_time_is_up(
    engine: Engine,
) -> None:
    committer = Committer(engine)
    await committer.start()
    loop = asyncio.get_running_loop()
    # Alone, it waits for its time, then commits by itself.
    started = loop.time()
    await committer.run(lambda c: queue.insert_messages(c, [new_message()]), within=0.2)
    assert loop.time() - started >= 0.19
    assert committer.commits == 1
    # Another write's commit takes it along at once: one commit for both.
    waiting = asyncio.ensure_future(
        committer.run(lambda c: queue.insert_messages(c, [new_message()]), within=30.0)
    )
    await asyncio.sleep(0.1)
    assert not waiting.done()
    started = loop.time()
    await committer.run(lambda c: queue.insert_messages(c, [new_message()]))
    await asyncio.wait_for(waiting, 5.0)
    assert loop.time() - started < 5.0
    assert committer.commits == 2 and committer.ops == 3
    # Closing writes whatever is still waiting, without waiting for its time.
    last = asyncio.ensure_future(
        committer.run(lambda c: queue.insert_messages(c, [new_message()]), within=30.0)
    )
    await asyncio.sleep(0)
    await asyncio.wait_for(committer.close(), 5.0)
    await last
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 4


async def test_batched_writes_share_one_call_per_commit(engine: Engine) -> None:
    committer = Committer(engine)
    await committer.start()
    calls: list[int] = []

    def insert_all(conn: sa.Connection, batch: list[NewMessage]) -> list[str]:
        calls.append(len(batch))
        queue.insert_messages(conn, batch)
        return [m.id for m in batch]

    batch = [new_message() for _ in range(60)]
    ids = await asyncio.gather(*(committer.run_batched(insert_all, m) for m in batch))
    assert ids == [m.id for m in batch]
    assert sum(calls) == 60 and len(calls) < 60
    # A failing item (duplicate id) fails alone; its neighbours commit.
    results = await asyncio.gather(
        committer.run_batched(insert_all, batch[0]),
        committer.run_batched(insert_all, new_message()),
        return_exceptions=True,
    )
    assert isinstance(results[0], Exception) and isinstance(results[1], str)
    await committer.close()


class _LockProbe:
    """A PreparedBatch that records whether the SQLite writer lock was free at each step."""

    def __init__(self, lock_path: str | None) -> None:
        self.lock_path = lock_path
        self.steps: list[tuple[str, int, bool | None]] = []

    def _lock_free(self) -> bool | None:
        if self.lock_path is None:
            return None  # PostgreSQL: no lock file
        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing drops a lock this probe took
        return True

    def prepare(self, dialect: sa.Dialect, items: list[NewMessage]) -> queue.PreparedMessages:
        if any(m.metadata.get("fail") == "prepare" for m in items):
            raise ValueError("cannot prepare")
        self.steps.append(("prepare", len(items), self._lock_free()))
        return queue.prepare_messages(dialect, items)

    def run(
        self, conn: sa.Connection, items: list[NewMessage], prepared: queue.PreparedMessages
    ) -> list[str]:
        self.steps.append(("run", len(items), self._lock_free()))
        queue.insert_prepared(conn, prepared)
        return [m.id for m in items]

    def __call__(self, conn: sa.Connection, items: list[NewMessage]) -> list[str]:
        return self.run(conn, items, self.prepare(conn.dialect, items))


async def test_a_prepared_batch_builds_its_rows_before_the_writer_lock(engine: Engine) -> None:
    probe = _LockProbe(writer_lock_path(engine))
    committer = Committer(engine)
    await committer.start()
    try:
        batch = [new_message(rcpts=2) for _ in range(20)]
        ids = await asyncio.gather(*(committer.run_batched(probe, m) for m in batch))
        assert ids == [m.id for m in batch]
        assert [n for step, n, _ in probe.steps if step == "run"] == [
            n for step, n, _ in probe.steps if step == "prepare"
        ]
        if probe.lock_path is not None:
            # Prepared with the lock free, run while the committer holds it.
            assert {free for step, _, free in probe.steps if step == "prepare"} == {True}
            assert {free for step, _, free in probe.steps if step == "run"} == {False}
        # A batch whose preparation fails is committed item by item: only the bad one fails.
        bad = new_message(metadata={"fail": "prepare"})
        good = new_message()
        results = await asyncio.gather(
            committer.run_batched(probe, bad),
            committer.run_batched(probe, good),
            return_exceptions=True,
        )
        assert isinstance(results[0], ValueError) and results[1] == good.id
    finally:
        await committer.close()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 21
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(message_recipients)).scalar() == 41
        )
