"""Delivery while the database cannot be used (another process holds its lock, the
stand-in here for any outage: a lock timeout is what the store reports as unavailable,
like a refused connection or a full disk): results are held, not lost, and a round
that could not even start uses no retry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.jobs import Jobs
from daemon.store.engine import bound_lock_waits
from tests.delivery.conftest import Running, ServiceFactory, attempts, new_message, wait_status
from tests.delivery.test_dispatcher import sink_provider
from tests.sink import Sink
from tests.store.test_committer_resilience import locked

LOCK_WAIT = 0.2  # seconds a statement waits for the lock, then the store is "unavailable"


async def test_a_result_the_database_cannot_take_now_is_held_not_delivered_twice(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    """A delivery that finished while the database was unavailable had its result dropped
    ("could not record the result"): the message stayed ``processing``, its lease expired,
    and it was delivered a second time (16 duplicates in a 10s PostgreSQL outage under
    load). The result now waits for the database and is written when it is back."""
    bound_lock_waits(engine, LOCK_WAIT)
    release = asyncio.Event()
    async with Sink(hold=release) as sink:
        service = await make_service(
            queue={"lease": "1s", "process_interval": "100ms"}, providers=sink_provider(sink)
        )
        await running.start(service)
        mid = await service.enqueue(new_message())
        await asyncio.wait_for(sink.held.wait(), 10)
        with locked(engine):
            release.set()  # the upstream takes the message; its result cannot be written
            await sink.wait_for(1)
            await asyncio.sleep(1.6)  # the lease (1s) expires meanwhile: renewals fail too
        row = await wait_status(engine, mid, "sent")
        await asyncio.sleep(1.5)  # a second delivery, if any, would arrive by now
        assert len(sink.messages) == 1
    assert [a.outcome for a in attempts(engine, mid)] == ["sent"]
    assert row.retry_count == 0


@contextmanager
def table_locked(engine: Engine, table: str) -> Iterator[None]:
    other = sa.create_engine(engine.url)
    try:
        with other.connect() as conn:
            conn.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        other.dispose()


# PostgreSQL: one table can be locked (SQLite locks the file: the claim would fail first).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_round_the_database_stops_before_it_starts_uses_no_retry(
    engine: Engine, make_service: ServiceFactory, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """With tracking on, a round first looks up and stores its rewrite: the database
    failing there was taken for a crash of our code, logged with a traceback and charged
    one of the message's retries, though nothing had been sent. Now it waits its turn."""
    bound_lock_waits(engine, LOCK_WAIT)
    async with Sink() as sink:
        service = await make_service(
            queue={"process_interval": "100ms", "retry_base": "1s"},
            providers=sink_provider(sink),
            tracking={"enabled": True, "base_url": "https://t.example.com", "secret": "s" * 32},
        )
        html = (
            b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n"
            b"Content-Type: text/html\r\n\r\n<p><a href='https://example.com/'>x</a></p>\r\n"
        )
        with table_locked(engine, "message_tracking"):
            await running.start(service)
            mid = await service.enqueue(new_message(raw=html))
            deadline = asyncio.get_running_loop().time() + 10.0
            row = await wait_status(engine, mid, "queued")
            while row.error is None:
                assert asyncio.get_running_loop().time() < deadline, "never postponed"
                await asyncio.sleep(0.02)
                row = await wait_status(engine, mid, "queued")
        assert row.retry_count == 0
        assert "database unavailable" in row.error
        row = await wait_status(engine, mid, "sent")
        await sink.wait_for(1)
    assert [(a.provider, a.outcome) for a in attempts(engine, mid)] == [("sink", "sent")]
    assert row.retry_count == 0
    assert not [r for r in caplog.records if r.exc_info], "no traceback for an outage"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# The jobs do not depend on the database kind: SQLite only, to keep it short.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_scheduled_job_the_database_fails_says_so_once_and_runs_on(
    engine: Engine, make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """APScheduler logged each failed run of a job with its traceback: every interval of
    every job, for as long as the database was out. Now a line when a job starts failing
    and one when it works again; the job keeps its schedule."""
    bound_lock_waits(engine, LOCK_WAIT)
    service = await make_service(accounts={"expiry_interval": "1s"})
    jobs = Jobs(service)
    jobs.start()
    try:
        with locked(engine):
            await asyncio.sleep(2.6)  # the job runs (and fails) twice or three times
        await asyncio.sleep(1.2)  # and once more with the database back
    finally:
        jobs.stop()
    said = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "expire_addresses" in r.getMessage()
    ]
    assert said[0].startswith("job expire_addresses: database unavailable"), said
    assert said[1].startswith("job expire_addresses: working again after "), said
    assert len(said) == 2, said
    assert not [r for r in caplog.records if r.exc_info], "no traceback for an outage"
