"""Hot statements compiled once per dialect and run on the transaction's DBAPI cursor.

``conn.execute(statement, rows)`` costs far more Python time than the database
spends on a small indexed write: cache-key generation, the compiled cache,
per-call bind processing set-up, the result machinery. The statements every
accepted or delivered message runs are few and fixed, so :class:`Direct`
compiles each once per dialect with SQLAlchemy itself (same SQL, same casts,
same type processors, hence the same stored values: SQLite's DateTime strings,
JSON text, PostgreSQL's JSONB) and then hands plain tuples to the DBAPI cursor
of the caller's connection, inside the caller's transaction.

Driver errors go through SQLAlchemy's own handler (``DBAPIError``, invalidation of
a lost connection), so callers classify them (disk full, unavailable) as before.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.expression import Executable

from daemon.store.models import UTCDateTime

Processor = Callable[[Any], Any] | None

# A positional paramstyle per dialect, so rows go to the driver as tuples.
_POSITIONAL = {"sqlite": "qmark", "postgresql": "format"}


def _sqlite_utc_datetime(value: datetime | None) -> str | None:
    """``UTCDateTime`` then SQLite's DATETIME processor, in one step: naive UTC text."""
    if value is None:
        return None
    # isoformat: the zero-padded "%Y-%m-%d %H:%M:%S.%f" that SQLAlchemy stores.
    if value.tzinfo is UTC:  # the usual case: only the "+00:00" to drop
        return value.isoformat(" ", "microseconds")[:26]
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _empty_json_first(proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The JSON processor, with the common empty list and dict answered without json.dumps."""

    def process(value: Any) -> Any:
        if not value and value.__class__ is list:
            return "[]"
        if not value and value.__class__ is dict:
            return "{}"
        return proc(value)

    return process


_DATETIME_SAMPLES = (
    None,
    datetime(2026, 11, 21, 15, 0, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 21, 15, 0, 0, 123456, tzinfo=UTC),
    datetime(1, 2, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 1, 2, 3, 4, 5, 60),
    datetime(1, 1, 1, tzinfo=UTC),
)
_JSON_SAMPLES: tuple[Any, ...] = ([], {}, [1, "é"], {"a": None}, None)


def _bind_processor(type_: Any, dialect: Dialect) -> Processor:
    """SQLAlchemy's bind processor for ``type_``, or a faster one proven to give the same text.

    The fast ones serve SQLite's DateTime text and JSON text, the bulk of the per-row work of
    an insert; each is checked against SQLAlchemy's own on samples before it is used.
    """
    proc = type_._cached_bind_processor(dialect)
    if proc is None or dialect.name != "sqlite":
        return proc  # type: ignore[no-any-return]
    fast: Callable[[Any], Any] | None = None
    samples: tuple[Any, ...] = ()
    if isinstance(type_, UTCDateTime):
        fast, samples = _sqlite_utc_datetime, _DATETIME_SAMPLES
    elif isinstance(type_, sa.JSON):
        fast, samples = _empty_json_first(proc), _JSON_SAMPLES
    if fast is not None and all(fast(v) == proc(v) for v in samples):
        return fast
    return proc  # type: ignore[no-any-return]


class _Shape:
    """SQL text for one statement (and IN-list length), and how to build its parameters."""

    def __init__(
        self,
        sql: str,
        positiontup: Sequence[str],
        binds: Mapping[str, Any],
        expansion: Mapping[str, Sequence[str]],
        dialect: Dialect,
    ) -> None:
        self.sql = sql
        item_of = {
            item: (name, i) for name, items in expansion.items() for i, item in enumerate(items)
        }
        # Per placeholder: the row key to read (None: a constant of the statement), the
        # position in that key's list (IN lists), the type's bind processor, or the
        # already processed constant.
        self.binds: list[tuple[str | None, int | None, Processor, Any]] = []
        for name in positiontup:
            index: int | None = None
            if name in item_of:
                name, index = item_of[name]
            bind = binds[name]
            proc = _bind_processor(bind.type, dialect)
            if bind.required or bind.expanding:
                self.binds.append((name, index, proc, None))
            else:
                value = bind.effective_value
                self.binds.append((None, None, None, proc(value) if proc else value))
        # Every placeholder read from a row key (no constants, no IN list): one itemgetter
        # call reads them all, then only the typed ones go through their processor.
        self._getter: Callable[[Mapping[str, Any]], Any] | None = None
        if self.binds and all(
            name is not None and index is None for name, index, _, _ in self.binds
        ):
            keys = [str(name) for name, _, _, _ in self.binds]
            self._getter = operator.itemgetter(*keys) if len(keys) > 1 else _one(keys[0])
        self._procs: list[tuple[int, Callable[[Any], Any]]] = [
            (i, proc) for i, (_, _, proc, _) in enumerate(self.binds) if proc is not None
        ]

    def params(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        if self._getter is not None:
            if not self._procs:
                return self._getter(row)  # type: ignore[no-any-return]
            values = list(self._getter(row))
            for i, proc in self._procs:
                values[i] = proc(values[i])
            return tuple(values)
        out: list[Any] = []
        for name, index, process, const in self.binds:
            if name is None:
                out.append(const)
                continue
            value = row[name] if index is None else row[name][index]
            out.append(process(value) if process is not None else value)
        return tuple(out)


def _one(key: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    return lambda row: (row[key],)


class _Plan:
    """One dialect's compiled statement; its shapes (one, or one per IN-list length)."""

    def __init__(
        self,
        statement: Any,
        dialect: Dialect,
        column_keys: Sequence[str] | None,
        results: Sequence[Any],
        many: bool,
    ) -> None:
        positional = dialect
        if dialect.paramstyle != _POSITIONAL[dialect.name]:  # PostgreSQL: pyformat by default
            dialect_class: Any = type(dialect)
            positional = dialect_class(paramstyle=_POSITIONAL[dialect.name])
            positional.server_version_info = dialect.server_version_info
        kwargs: dict[str, Any] = {"for_executemany": True} if many else {}
        if column_keys is not None:
            kwargs["column_keys"] = list(column_keys)
        compiled = statement.compile(dialect=positional, **kwargs)
        if compiled.positiontup is None:
            raise TypeError("a Direct statement needs a positional paramstyle")
        self._compiled = compiled
        self._dialect = dialect
        self.results: list[Processor] = [
            col.type._cached_result_processor(dialect, None) for col in results
        ]
        self.expanding = [n for n in compiled.positiontup if compiled.binds[n].expanding]
        if len(self.expanding) > 1 or (self.expanding and many):
            raise TypeError("a Direct statement takes at most one IN list, and not in executemany")
        self._single: _Shape | None = None
        self._by_length: dict[int, _Shape] = {}
        if not self.expanding:
            self._single = _Shape(
                compiled.string, compiled.positiontup, compiled.binds, {}, dialect
            )

    def shape(self, row: Mapping[str, Any]) -> _Shape:
        if self._single is not None:
            return self._single
        name = self.expanding[0]
        length = len(row[name])
        if not length:
            raise ValueError(f"empty IN list {name!r}")
        shape = self._by_length.get(length)
        if shape is None:
            expanded = self._compiled.construct_expanded_state({name: [None] * length})
            shape = _Shape(
                expanded.statement,
                expanded.positiontup or (),
                self._compiled.binds,
                expanded.parameter_expansion,
                self._dialect,
            )
            if len(self._by_length) < 1024:
                self._by_length[length] = shape
        return shape


class Direct:
    """A Core statement run straight on the DBAPI cursor (see the module doc).

    ``build(dialect_name)`` returns the statement; its bind parameters must be
    named (``sa.bindparam("x")``) and are read from each row mapping by name.
    With ``columns_from_rows`` (an INSERT without values) the columns are the keys
    of the rows given, as SQLAlchemy's executemany takes them from the first row.
    ``results`` are the columns a RETURNING or SELECT gives back, in order, so
    their result processors (SQLite's DateTime parsing, UTC tzinfo) apply.
    """

    def __init__(
        self,
        build: Callable[[str], Executable] | Executable,
        *,
        columns_from_rows: bool = False,
        results: Sequence[Any] = (),
    ) -> None:
        self._build = build
        self._columns_from_rows = columns_from_rows
        self._results = tuple(results)
        self._plans: dict[tuple[type[Dialect], bool, tuple[str, ...] | None], _Plan] = {}

    def plan(
        self, dialect: Dialect, many: bool = False, row: Mapping[str, Any] | None = None
    ) -> _Plan:
        columns = tuple(row or ()) if self._columns_from_rows else None
        key = (type(dialect), many, columns)
        plan = self._plans.get(key)
        if plan is None:
            build = self._build
            statement = build(dialect.name) if callable(build) else build
            plan = _Plan(statement, dialect, columns, self._results, many)
            if len(self._plans) < 64:
                self._plans[key] = plan
        return plan

    def execute(
        self, conn: Connection, row: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run once with ``row``; returns the processed result rows (empty without results)."""
        plan = self.plan(conn.dialect, row=row)
        shape = plan.shape(row or {})
        params = shape.params(row or {})
        cursor = _cursor(conn)
        try:
            cursor.execute(shape.sql, params)
            rows = cursor.fetchall() if plan.results else []
        except Exception as exc:
            _reraise(conn, exc, cursor, shape.sql, params)
        finally:
            cursor.close()
        if plan.results and rows:
            procs = plan.results
            if any(procs):
                return [
                    tuple([p(v) if p else v for p, v in zip(procs, r, strict=True)]) for r in rows
                ]
        return [tuple(r) for r in rows]

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row (a driver executemany); no results."""
        if rows:
            self.run_prepared(conn, self.prepare(conn.dialect, rows))

    def prepare(self, dialect: Dialect, rows: Sequence[Mapping[str, Any]]) -> Prepared:
        """The SQL and driver parameters of an executemany of ``rows``, built ahead.

        Building the parameters is most of an executemany's Python time; done before
        the transaction, it stays out of the time the SQLite writer lock is held.
        """
        if not rows:
            return Prepared("", [])
        shape = self.plan(dialect, many=True, row=rows[0]).shape({})
        return Prepared(shape.sql, [shape.params(r) for r in rows])

    @staticmethod
    def run_prepared(conn: Connection, prepared: Prepared) -> None:
        """Run a prepared executemany on the transaction's connection."""
        if not prepared.params:
            return
        cursor = _cursor(conn)
        try:
            cursor.executemany(prepared.sql, prepared.params)
        except Exception as exc:
            _reraise(conn, exc, cursor, prepared.sql, prepared.params)
        finally:
            cursor.close()


@dataclass(frozen=True)
class Prepared:
    """An executemany's SQL and its rows' driver parameters (see :meth:`Direct.prepare`)."""

    sql: str
    params: list[tuple[Any, ...]]

    def subset(self, indexes: Sequence[int]) -> Prepared:
        """The same statement for the rows at ``indexes`` only."""
        if len(indexes) == len(self.params):
            return self
        return Prepared(self.sql, [self.params[i] for i in indexes])


def _cursor(conn: Connection) -> Any:
    # The DBAPI connection of the transaction the caller is in.
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _reraise(conn: Connection, exc: Exception, cursor: Any, sql: str, params: Any) -> NoReturn:
    """Raise as ``conn.execute`` would: wrapped in ``DBAPIError``, a lost connection
    invalidated, ``handle_error`` hooks run (SQLAlchemy's own handler, as
    ``exec_driver_sql`` uses it; call it from the ``except`` block)."""
    conn._handle_dbapi_exception(exc, sql, params, cursor, None)
