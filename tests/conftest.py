"""Shared fixtures: databases (SQLite and PostgreSQL), configs, and a running relayd."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.config import Config, build_config
from daemon.store.engine import make_engine
from daemon.store.migrate import upgrade

PG_URL = os.environ.get("RELAY_TEST_DATABASE_URL", "")
IN_CI = bool(os.environ.get("CI"))


def _pg_schema_url(base: str) -> Iterator[str]:
    """A fresh PostgreSQL schema per test, selected through search_path."""
    schema = "t_" + secrets.token_hex(6)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL at RELAY_TEST_DATABASE_URL is unreachable: {exc}")
        pytest.skip("PostgreSQL unreachable (set RELAY_TEST_DATABASE_URL)")
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store/queue/API test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.db'}"
        return
    yield from _pg_schema_url(require_postgresql())


def require_postgresql() -> str:
    """RELAY_TEST_DATABASE_URL; without it a test fails in CI and skips elsewhere."""
    if not PG_URL:
        if IN_CI:
            pytest.fail("CI is set but RELAY_TEST_DATABASE_URL is not")
        pytest.skip("RELAY_TEST_DATABASE_URL not set")
    return PG_URL


@pytest.fixture
def pg_url() -> Iterator[str]:
    """PostgreSQL only (what SQLite has no counterpart of): a fresh schema."""
    yield from _pg_schema_url(require_postgresql())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLite only: for tests of behaviour the database does not change."""
    return f"sqlite:///{tmp_path / 'relay.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated engine on the parametrized database."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


ConfigFactory = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    """Build a Config for tests: temp data_dir, ephemeral ports, fast queue, plus overrides.

    ``make_config(db_url, smtp={"require_auth": True}, providers={...})``
    """

    def factory(database_url: str | None = None, **sections: Any) -> Config:
        layer: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            # SMTP in the test process itself (tests/smtp/test_workers.py runs worker processes).
            "smtp": {"port": 0, "tls_port": 0, "hostname": "relay.test", "workers": 0},
            "http": {"port": 0},
            "queue": {"process_interval": "1s", "retry_base": "1s", "retry_max": "2s"},
            "auth": {"admin_token": "test-admin-token"},
        }
        if database_url:
            layer["database"] = {"url": database_url}
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(layer.get(key), dict):
                layer[key] = {**layer[key], **value}
            else:
                layer[key] = value
        return build_config([("file", layer)])

    return factory


@pytest.fixture
async def relay(make_config: ConfigFactory, sqlite_url: str) -> AsyncIterator[Any]:
    """A running relayd (SMTP + HTTP + workers) on loopback ephemeral ports, SQLite, outbox."""
    from daemon.server import Server

    server = Server(make_config(sqlite_url))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# ``await start_server(**sections)``: a started relayd (the daemon.server.Server).
StartServer = Callable[..., Awaitable[Any]]


@pytest.fixture
async def start_server(db_url: str, make_config: ConfigFactory) -> AsyncIterator[StartServer]:
    """Start relayd Servers on the parametrized database (config sections as keywords);
    each still running is stopped after the test."""
    from daemon.server import Server

    running: list[Server] = []

    async def start(**sections: Any) -> Server:
        server = Server(make_config(db_url, **sections))
        await server.start()
        running.append(server)
        return server

    yield start
    for server in reversed(running):
        if not server._stopped.is_set():
            await server.stop()


MIDNIGHT_MARGIN = 60.0  # seconds: longer than any one test that counts today's sends


@pytest.fixture
def clear_of_midnight() -> None:
    """For tests of daily quotas on the real clock: start well clear of UTC midnight.

    Daily windows roll over at 00:00 UTC; a test that sends and then counts must
    not straddle that moment, so one that would start in the last minute of a day
    waits for the next.
    """
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    left = (midnight - now).total_seconds()
    if left < MIDNIGHT_MARGIN:
        time.sleep(left + 0.5)
