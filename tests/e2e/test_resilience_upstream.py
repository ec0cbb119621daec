"""An upstream SMTP server that stops answering: each attempt ends at the provider's
timeout, is recorded and retried; SIGTERM in the middle of one still stops relayd within
``queue.shutdown_grace`` with exit 0, and hands the lease back so the next start
delivers at once."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_resilience_postgres import SubjectSink, running_sink

pytestmark = pytest.mark.e2e


class SilentUpstream:
    """Greets, takes the envelope and the message, and never answers the final dot."""

    def __init__(self) -> None:
        self.received = threading.Event()  # the message's final dot went in
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._server.accept()
                self._conns.append(conn)
                threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn.makefile("rb") as lines:
            conn.sendall(b"220 silent.test ESMTP\r\n")
            in_data = False
            for line in lines:
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        self.received.set()  # ...and no reply, ever
                    continue
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250 silent.test\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    in_data = True
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    def close(self) -> None:
        self._server.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture
def silent() -> Iterator[SilentUpstream]:
    upstream = SilentUpstream()
    yield upstream
    upstream.close()


def provider(port: int, timeout: str) -> str:
    return (
        f'[providers.up]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {port}\n'
        f'tls = "none"\ntimeout = "{timeout}"\n'
    )


def send(daemon: Daemon) -> str:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@example.com")
        client.rcpt("b@example.org")
        code, reply = client.data(b"Subject: load one\r\nFrom: a@example.com\r\n\r\nx\r\n")
    assert code == 250
    return reply.decode().rsplit(" ", 1)[-1]


def rows(db: Path, query: str, *args: Any) -> list[Any]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(query, args).fetchall()


def edit(daemon: Daemon, old: str, new: str) -> None:
    """Replace ``old`` (once) in the daemon's generated config file."""
    text = daemon.config_path.read_text()
    assert text.count(old) == 1, old
    daemon.config_path.write_text(text.replace(old, new))


def test_a_silent_upstream_is_bounded_retried_and_a_stop_during_it_is_prompt(
    daemon_factory: type[Daemon], tmp_path: Path, silent: SilentUpstream
) -> None:
    sink: SubjectSink
    with contextlib.contextmanager(running_sink)() as (sink, sink_port):
        daemon = daemon_factory(tmp_path, provider(silent.port, "2s"))
        edit(daemon, 'shutdown_grace = "5s"', 'shutdown_grace = "1s"')
        daemon.start()
        message_id = send(daemon)
        db = tmp_path / "data" / "relay.db"
        query = "SELECT outcome, reply, duration_ms FROM delivery_attempts WHERE message_id = ?"
        deadline = time.monotonic() + 15
        while not (attempts := rows(db, query, message_id)):
            assert time.monotonic() < deadline, "the attempt was not recorded"
            time.sleep(0.05)
        ((outcome, reply, duration_ms),) = attempts  # ended by the provider's timeout
        assert outcome == "temporary" and "Timed out" in reply
        assert 1900 <= duration_ms < 4000
        # The retry (retry_base 1s) hangs as well; SIGTERM in the middle of it.
        silent.received.clear()
        assert silent.received.wait(10), "the attempt was not retried"
        started = time.monotonic()
        assert daemon.terminate() == 0
        assert time.monotonic() - started < 1.0 + 2.5, "the stop outlasted the grace"
        # The lease is handed back; the interrupted attempt uses no retry.
        assert rows(
            db, "SELECT status, lease_owner, retry_count FROM messages WHERE id = ?", message_id
        ) == [("queued", None, 1)]
        # Started again with an upstream that answers: delivered at once, not after a lease.
        edit(daemon, f"port = {silent.port}\n", f"port = {sink_port}\n")
        daemon.start()
        deadline = time.monotonic() + 5
        while "one" not in sink.received():
            assert time.monotonic() < deadline, "not delivered at once after the restart"
            time.sleep(0.05)
        assert daemon.terminate() == 0
