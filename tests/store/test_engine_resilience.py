"""The engine's bounds on waiting for the database: connect timeout and keepalives on
PostgreSQL connections, and the running daemon's bound on lock waits."""

from __future__ import annotations

import sqlalchemy as sa

from daemon.store.engine import make_engine
from tests.conftest import StartServer


async def test_the_running_daemon_waits_for_a_lock_at_most_30s(start_server: StartServer) -> None:
    """SQLite gave up on a lock after 30s (its busy timeout); PostgreSQL waited as long as
    the lock was held (an operator's forgotten transaction: for ever), and every SMTP
    session with it. Both now answer 451 after 30s."""
    server = await start_server()
    with server.service.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar() == 30000
        else:
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "30s"


def test_postgresql_connections_time_out_and_keep_alive_unless_the_url_says_otherwise(
    pg_url: str,
) -> None:
    """libpq waits for ever to connect and notices a vanished server after two hours of
    TCP keepalive by default: relayd's connections get bounds of their own."""
    for url, timeout in ((pg_url, "10"), (f"{pg_url}&connect_timeout=3", "3")):
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
                dsn = conn.connection.dbapi_connection.info.dsn  # type: ignore[union-attr]
        finally:
            engine.dispose()
        assert params["connect_timeout"] == timeout
        assert "keepalives=1" in dsn and "tcp_user_timeout=60000" in dsn
