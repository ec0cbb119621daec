"""The group committer when the database cannot be used: locked by another process, its
connection ended by the server. Writers get an answer within one lock wait, a connection
the server ended is replaced without failing anyone, and the log says it once."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from daemon.store import queue, tenancy
from daemon.store.committer import Committer, Reader
from daemon.store.engine import StoreError, bound_lock_waits, make_engine
from daemon.store.migrate import upgrade
from tests.conftest import PG_URL

LOCK_WAIT = 0.3  # seconds: the bound the tests give their engine


@contextmanager
def locked(engine: Engine) -> Iterator[None]:
    """Another process's write transaction holding the database (SQLite) or the messages
    table (PostgreSQL) until the block ends."""
    if engine.dialect.name == "sqlite":
        assert engine.url.database is not None
        other = sqlite3.connect(engine.url.database, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()
        return
    other_engine = sa.create_engine(engine.url)
    try:
        with other_engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        other_engine.dispose()


def reap(conn: Connection) -> int:
    """A write on the messages table (nothing to reap: it changes no row)."""
    return queue.reap_expired(conn, datetime.now(UTC))


@pytest.fixture
async def committer(db_url: str) -> AsyncIterator[Committer]:
    engine = make_engine(db_url)
    upgrade(engine)
    bound_lock_waits(engine, LOCK_WAIT)
    writer = Committer(engine)
    await writer.start()
    yield writer
    await writer.close()
    engine.dispose()


async def test_a_locked_database_fails_a_whole_batch_within_one_lock_wait(
    committer: Committer,
) -> None:
    """A batch that failed was tried again one write at a time, each waiting out the
    lock again: with the database locked, the 20th writer (an SMTP session waiting for
    its reply to DATA) waited 21 lock waits (10 minutes with the daemon's 30s) instead
    of one. A database that is locked is so for every write of the batch."""
    with locked(committer._engine):
        started = time.monotonic()
        results = await asyncio.gather(
            *(committer.run(reap) for _ in range(20)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    assert all(isinstance(r, StoreError) and r.unavailable for r in results), results
    assert elapsed < 6 * LOCK_WAIT, f"writers waited {elapsed:.1f}s for a {LOCK_WAIT}s lock"
    assert await committer.run(reap) == 0  # the lock gone, writes work again


async def test_an_unavailable_database_is_logged_when_it_starts_and_when_it_ends(
    committer: Committer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every failed write logged a line of its own: an outage under load flooded the log
    with thousands. Now one line when writes start failing, one when they work again."""
    caplog.set_level(logging.DEBUG, logger="relayd.store")
    with locked(committer._engine):
        for _ in range(4):
            failed = await asyncio.gather(
                *(committer.run(reap) for _ in range(3)), return_exceptions=True
            )
            assert all(isinstance(r, StoreError) for r in failed)
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 1, warned
        assert committer.failing
    assert await committer.run(lambda c: c.execute(sa.text("SELECT 1")).scalar()) == 1
    if committer._engine.dialect.name == "sqlite":
        # A transaction that writes nothing commits on a read-only file too: no proof.
        assert committer.failing
    await committer.run(_write_something)
    assert not committer.failing
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2, lines
    assert lines[0].startswith("database unavailable, writes fail until it is back: ")
    assert lines[1].startswith("database writes work again after ")
    assert lines[1].endswith("unavailable (12 failed meanwhile)")


def _write_something(conn: Connection) -> None:
    tenancy.ensure_workspace(conn, "w-resilience", "free", datetime.now(UTC))


def test_a_new_sqlite_connection_reads_at_once_while_another_process_writes(
    sqlite_url: str,
) -> None:
    """Each new SQLite connection set ``auto_vacuum``, which waits for the write lock: while
    another process held it (a backup, an operator's sqlite3 shell), every connection the
    pool opened, readers included (the API, /health), waited 30s and then failed."""
    engine = make_engine(sqlite_url)
    try:
        upgrade(engine)
        engine.dispose()
        with locked(engine):
            started = time.monotonic()
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM messages")).scalar() == 0
            assert time.monotonic() - started < 1.0
            with engine.connect() as conn:  # set when the file was made, as before
                assert conn.execute(sa.text("PRAGMA auto_vacuum")).scalar() == 2
    finally:
        engine.dispose()


async def test_a_connection_the_server_ended_is_replaced_without_failing_the_write(
    pg_url: str,
) -> None:
    """The writer keeps its connection between commits; PostgreSQL ending it (a restart,
    ``pg_terminate_backend``, a failover) failed the next commit, and every SMTP session
    in it got a 451 from a database that was up again. Nothing of that transaction had
    reached the server, so it now runs again on a fresh connection."""
    engine = make_engine(pg_url)
    upgrade(engine)
    writer = Committer(engine)
    await writer.start()
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        for _ in range(3):
            pid = await writer.run(lambda c: c.execute(sa.text("SELECT pg_backend_pid()")).scalar())
            with admin.connect() as conn:
                assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            # The server is done with it before the next commit, as after a restart.
            deadline = time.monotonic() + 5
            with admin.connect() as conn:
                while conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                ).scalar():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
            assert await writer.run(reap) == 0
            new_pid = await writer.run(
                lambda c: c.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            )
            assert new_pid != pid
    finally:
        admin.dispose()
        await writer.close()
        engine.dispose()


class PgProxy:
    """A TCP proxy to PostgreSQL that can turn into a black hole: connections it holds are
    cut, new ones accepted and never answered (a server gone from the network, its packets
    dropped, looks the same to the client)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.blackhole = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> PgProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    def cut(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        if self.blackhole:
            return  # kept open, never answered
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._open.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_server_gone_from_the_network_fails_writes_within_one_connect_timeout(
    pg_url: str,
) -> None:
    """A PostgreSQL host that stops answering (partition, failover) left a new connection
    waiting for ever (libpq has no connect timeout by default), and every write after it.
    With a connect timeout, each batch failed only after all its writes had waited theirs
    one by one. Now a batch waits one connect timeout, and writes work once it is back."""
    url = sa.engine.make_url(pg_url)
    async with PgProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(
            host="127.0.0.1", port=proxy.port, query={**url.query, "connect_timeout": "1"}
        )
        engine = make_engine(through.render_as_string(hide_password=False))
        await asyncio.to_thread(upgrade, engine)  # the proxy serves on this loop
        writer = Committer(engine)
        await writer.start()
        try:
            assert await writer.run(reap) == 0
            proxy.blackhole = True
            proxy.cut()
            started = time.monotonic()
            results = await asyncio.gather(
                *(writer.run(reap) for _ in range(10)), return_exceptions=True
            )
            elapsed = time.monotonic() - started
            assert all(isinstance(r, StoreError) and r.unavailable for r in results), results
            assert elapsed < 3.5, f"writers waited {elapsed:.1f}s for a 1s connect timeout"
            proxy.blackhole = False
            assert await writer.run(reap) == 0
        finally:
            await writer.close()
            engine.dispose()


async def test_reads_of_an_unavailable_database_are_logged_once_and_once_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The API logged a warning for every request it answered 500 DATABASE_ERROR: under
    load, thousands of lines in an outage. Reads now say it once when they start failing
    and once when they work again (here: a database whose volume is not mounted yet)."""
    caplog.set_level(logging.DEBUG, logger="relayd.store")
    volume = tmp_path / "volume"
    engine = make_engine(f"sqlite:///{volume / 'relay.db'}")
    volume.rmdir()  # made by make_engine; gone, as an unmounted volume's mount point
    reader = Reader(engine)
    try:

        def count(conn: Connection) -> int:
            return int(conn.execute(sa.text("SELECT count(*) FROM sqlite_master")).scalar_one())

        for _ in range(5):
            with pytest.raises(StoreError) as refused:
                await reader.run(count)
            assert refused.value.unavailable
        volume.mkdir()
        assert await reader.run(count) == 0
        assert await reader.run(count) == 0
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 2, lines
        assert lines[0].startswith("database reads: ")
        assert "unable to open database file" in lines[0]
        assert lines[1].startswith("database reads: working again after ")
        assert lines[1].endswith("(5 failed rounds)")
    finally:
        reader.close()
        engine.dispose()
