"""Group commit: one writer thread runs every queued write of a moment in one transaction.

Callers ``await committer.run(op)``; the future resolves only after the
transaction holding ``op`` has committed (and, on SQLite with synchronous=FULL,
been fsynced). Writes that arrive while a commit is in progress form the next
batch, so under load one fsync covers many messages and nobody waits on a timer.

Bookkeeping nobody is waiting on (delivery claims and results) may instead be
submitted with ``within=seconds``: it joins the next commit anyone else starts,
or starts one itself when that time is up. With SMTP served by worker processes
this keeps the daemon's delivery writes from taking the SQLite writer lock
(and an fsync) for every few messages while the workers need it for ingest.

When the database cannot be used at all (connection refused or lost, locked past
the busy timeout, disk full: :func:`daemon.store.engine.is_unavailable`) every
write of the batch fails at once with that error, and the log says so once, when it
starts, and once more when writes work again, not once per write.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from daemon.store.engine import (
    FailureLog,
    StoreError,
    classify_error,
    is_unavailable,
    store_unavailable,
)

log = logging.getLogger("relayd.store")

T = TypeVar("T")
ItemT = TypeVar("ItemT")
KEEP_CONNECTION = 1.0  # seconds the writer keeps its connection between commits
# Seconds a failed write counts for Committer.failing when no other write follows.
FAILING_MEMORY = 10.0
Op = Callable[[Connection], Any]
BatchFn = Callable[[Connection, list[Any]], list[Any]]


class PreparedBatch(Protocol):
    """A batch function whose Python work on its items can be done before the transaction.

    ``prepare(dialect, items)`` builds what needs no database (statement parameters);
    the committer runs it in the writer thread *before* it takes the SQLite writer
    lock, and then ``run(conn, items, prepared)`` inside the transaction. Called as
    a plain batch function, it does both in the transaction.
    """

    def prepare(self, dialect: Dialect, items: list[Any]) -> Any: ...

    def run(self, conn: Connection, items: list[Any], prepared: Any) -> list[Any]: ...

    def __call__(self, conn: Connection, items: list[Any]) -> list[Any]: ...


class _DeadConnection(Exception):
    """The kept connection was found dead before anything of the transaction committed."""


class _Batched:
    """Items sharing ``fn`` in one commit are handed to ``fn`` together (one executemany)."""

    def __init__(self, fn: BatchFn, item: Any) -> None:
        self.fn = fn
        self.item = item


def _groups(ops: list[Op | _Batched]) -> dict[BatchFn, list[int]]:
    groups: dict[BatchFn, list[int]] = {}
    for index, op in enumerate(ops):
        if isinstance(op, _Batched):
            groups.setdefault(op.fn, []).append(index)
    return groups


def _prepare_all(
    dialect: Dialect, ops: list[Op | _Batched], groups: dict[BatchFn, list[int]]
) -> dict[BatchFn, Any]:
    """What each :class:`PreparedBatch` group of ``ops`` prepares, before any lock is taken."""
    prepared: dict[BatchFn, Any] = {}
    for fn, indexes in groups.items():
        prepare = getattr(fn, "prepare", None)
        if prepare is not None:
            prepared[fn] = prepare(dialect, [ops[i].item for i in indexes])  # type: ignore[union-attr]
    return prepared


def _run_all(
    conn: Connection,
    ops: list[Op | _Batched],
    groups: dict[BatchFn, list[int]],
    prepared: dict[BatchFn, Any] | None = None,
) -> list[Any]:
    results: list[Any] = [None] * len(ops)
    for index, op in enumerate(ops):
        if not isinstance(op, _Batched):
            results[index] = op(conn)
    for fn, indexes in groups.items():
        items = [ops[i].item for i in indexes]  # type: ignore[union-attr]
        if prepared is not None and fn in prepared:
            values = fn.run(conn, items, prepared[fn])  # type: ignore[attr-defined]
        else:
            values = fn(conn, items)
        for index, value in zip(indexes, values, strict=True):
            results[index] = value
    return results


def _changes(conn: Connection) -> int | None:
    """Rows a SQLite connection changed since it opened (None elsewhere: not needed)."""
    raw = conn.connection.dbapi_connection
    return raw.total_changes if isinstance(raw, sqlite3.Connection) else None


def writer_lock_path(engine: Engine) -> str | None:
    """The lock file the writers of one SQLite database take turns through (None: no file)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database + ".writer-lock"


class Committer:
    """Serialises writes through one thread and batches them into shared transactions.

    On a SQLite file, each transaction is taken under an exclusive ``flock`` of
    :func:`writer_lock_path`: with several processes writing (SMTP worker
    processes), a waiting writer is woken the moment the lock is free, instead of
    SQLite's busy handler sleeping for milliseconds between tries.
    """

    def __init__(self, engine: Engine, max_batch: int = 512) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._pending: list[tuple[Op | _Batched, asyncio.Future[Any]]] = []
        self._wakeup: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-writer")
        self._closed = False
        self.commits = 0
        self.ops = 0
        # The writer thread's own connection, kept from one commit to the next while
        # they follow within ``keep_connection`` seconds: checking one out of the pool
        # and back (with its reset) for every commit cost about as much Python time as
        # a small commit's statements. An idle one goes back to the pool, whose
        # pre-ping (PostgreSQL) replaces it if the server dropped it meanwhile; a
        # failure drops it.
        self.keep_connection = KEEP_CONNECTION
        self._conn: Connection | None = None
        self._conn_used = 0.0
        # Since when (monotonic) the database has been unavailable, and how many writes
        # failed meanwhile: logged when it starts and when it ends (writer thread only).
        self._down_since: float | None = None
        self._down_failures = 0
        self._last_failure = 0.0
        path = writer_lock_path(engine)
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path else None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if self._lock_fd is None:
            yield
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="group-commit")

    async def run(self, op: Callable[[Connection], T], *, within: float = 0.0) -> T:
        """Run ``op`` inside a batched transaction; returns once that transaction committed.

        ``within``: seconds ``op`` may wait for another write's commit to join before
        its own starts (0: commit at once).
        """
        return await self._submit(op, within)  # type: ignore[no-any-return]

    async def run_batched(self, fn: Callable[[Connection, list[ItemT]], list[T]], item: ItemT) -> T:
        """Like :meth:`run`, but every item for the same ``fn`` in a commit goes in one call.

        ``fn`` must return one result per item, in order. Hot paths (enqueue) use
        this so a commit of many messages costs a few executemany statements.
        """
        return await self._submit(_Batched(fn, item), 0.0)  # type: ignore[no-any-return]

    async def _submit(self, op: Op | _Batched, within: float) -> Any:
        if self._closed or self._wakeup is None:
            raise StoreError("the store is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((op, future))
        if within <= 0:
            self._wakeup.set()
        elif self._timer is None or self._timer.when() > loop.time() + within:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(within, self._time_up)
        return await future

    def hurry(self) -> None:
        """Commit what is waiting for a commit to join now (on the way to a stop)."""
        if self._pending and self._wakeup is not None:
            self._wakeup.set()

    def _time_up(self) -> None:
        self._timer = None
        if self._wakeup is not None:
            self._wakeup.set()

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._pending and self._timer is not None:
                self._timer.cancel()  # what waited for a commit joins this one
                self._timer = None
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                ops = [op for op, _ in batch]
                results = await loop.run_in_executor(self._executor, self._commit, ops)
                for (_, future), (ok, value) in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
            if self._closed:
                return

    def _commit(self, ops: list[Op | _Batched]) -> list[tuple[bool, Any]]:
        """Commit all ops together; if that fails, retry each alone so one bad op fails alone."""
        groups = _groups(ops)
        try:
            # Python work that needs no database, done before the lock (PreparedBatch).
            prepared: dict[BatchFn, Any] | None = _prepare_all(self._engine.dialect, ops, groups)
        except Exception as exc:
            log.debug("preparing a batch of %d failed (%s); one by one", len(ops), exc)
            prepared = None
        with self._exclusive():
            return self._commit_locked(ops, groups, prepared)

    def _transaction(
        self,
        ops: list[Op | _Batched],
        groups: dict[BatchFn, list[int]],
        prepared: dict[BatchFn, Any] | None = None,
    ) -> list[Any]:
        """Run ``ops`` in one transaction on the writer's connection and commit it.

        The connection kept from an earlier commit may have died since (the server
        restarted, or ended it): found dead before the commit was sent, nothing was
        written, so the transaction runs again once on a fresh connection instead of
        failing its writers (SMTP 451) for a database that is up.
        """
        now = time.monotonic()
        if self._conn is not None and now - self._conn_used > self.keep_connection:
            self._disconnect()
        conn = self._conn
        kept = conn is not None and not conn.closed and not conn.invalidated
        if conn is None or not kept:
            conn = self._conn = self._engine.connect()
        self._conn_used = now
        changes = _changes(conn) if self._down_since is not None else None
        try:
            try:
                results = self._run_in(conn, ops, groups, prepared, kept)
            except _DeadConnection:
                self._disconnect()
                conn = self._conn = self._engine.connect()
                results = self._run_in(conn, ops, groups, prepared, False)
        except BaseException:
            self._disconnect()  # whatever state it is in, the next commit starts afresh
            raise
        self.commits += 1
        self.ops += len(ops)
        # Back once something was written: on a read-only SQLite file a transaction that
        # changes nothing (a claim finding nothing due) still commits.
        if self._down_since is not None and (changes is None or _changes(conn) != changes):
            log.warning(
                "database writes work again after %.1fs unavailable (%d failed meanwhile)",
                time.monotonic() - self._down_since,
                self._down_failures,
            )
            self._down_since = None
        return results

    @property
    def failing(self) -> bool:
        """Writes fail for an unavailable database: one did in the last FAILING_MEMORY
        seconds, and nothing was written since."""
        return (
            self._down_since is not None and time.monotonic() - self._last_failure < FAILING_MEMORY
        )

    @staticmethod
    def _run_in(
        conn: Connection,
        ops: list[Op | _Batched],
        groups: dict[BatchFn, list[int]],
        prepared: dict[BatchFn, Any] | None,
        kept: bool,
    ) -> list[Any]:
        with conn.begin():
            try:
                return _run_all(conn, ops, groups, prepared)
            except DBAPIError as exc:
                if kept and exc.connection_invalidated:
                    raise _DeadConnection() from exc
                raise

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _commit_locked(
        self,
        ops: list[Op | _Batched],
        groups: dict[BatchFn, list[int]],
        prepared: dict[BatchFn, Any] | None,
    ) -> list[tuple[bool, Any]]:
        if prepared is not None or len(ops) == 1:
            try:
                return [(True, r) for r in self._transaction(ops, groups, prepared)]
            except Exception as exc:
                if len(ops) == 1 or is_unavailable(exc):
                    # Unavailable for all: one by one would only wait (a lock, a connect
                    # timeout) and fail once per op.
                    return [(False, self._wrap(exc, len(ops)))] * len(ops)
                log.debug("batch of %d failed (%s); retrying one by one", len(ops), exc)
        outcomes: list[tuple[bool, Any]] = []
        for index, op in enumerate(ops):
            try:
                outcomes.append((True, self._transaction([op], _groups([op]))[0]))
            except Exception as exc:
                error = self._wrap(exc)
                if store_unavailable(error):
                    left = len(ops) - index
                    self._down_failures += left - 1
                    return [*outcomes, *[(False, error)] * left]
                outcomes.append((False, error))
        return outcomes

    def _wrap(self, exc: Exception, writes: int = 1) -> Exception:
        """The error the callers of a failed transaction of ``writes`` writes get; logged
        once per write it refused, or once per outage when the database is unavailable."""
        if not isinstance(exc, SQLAlchemyError | OSError):
            return exc
        error = classify_error(exc)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not error.unavailable:
            log.warning("database write failed: %s", reason)
        elif self._down_since is None:
            self._down_since = self._last_failure = time.monotonic()
            self._down_failures = writes
            log.warning("database unavailable, writes fail until it is back: %s", reason)
        else:
            self._down_failures += writes
            self._last_failure = time.monotonic()
            log.debug("database still unavailable: %s", reason)
        return error

    async def close(self) -> None:
        """Finish queued writes, then stop the writer thread (again: nothing more to do)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class Reader:
    """Runs read-only queries on a small thread pool (SQLite WAL readers never block the writer).

    An unavailable database is logged once when reads start failing and once when they
    work again (:class:`FailureLog`, on the event loop's thread), so the API, which
    answers every read it cannot make with 500 DATABASE_ERROR, need not log each one.
    """

    def __init__(self, engine: Engine, workers: int = 4) -> None:
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="relay-reader")
        self._local = threading.local()
        self._failures = FailureLog(log, "database reads")

    async def run(self, op: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._read, op)
        except StoreError as exc:
            if exc.unavailable:
                self._failures.failed(exc.__cause__ or exc)  # the driver's words
            raise
        self._failures.worked()
        return result

    def _read(self, op: Callable[[Connection], T]) -> T:
        try:
            with self._engine.connect() as conn:
                return op(conn)
        except (SQLAlchemyError, OSError) as exc:
            raise classify_error(exc) from exc

    def close(self) -> None:
        self._executor.shutdown(wait=True)
