"""``smtp.workers = N``: SMTP served by N worker processes sharing the daemon's ports.

The whole daemon runs (in-process Server); its workers are real processes. Each
test talks SMTP and HTTP on loopback and reads the database, on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from daemon.server import Server
from daemon.smtp.workers import WorkerPool
from daemon.store.engine import make_engine
from tests.conftest import StartServer

HOST = "127.0.0.1"
AUTH = {"Authorization": "Bearer test-admin-token"}
MESSAGE = b"Subject: worker test\r\nFrom: a@example.com\r\nTo: b@example.org\r\n\r\nhello\r\n"


@pytest.fixture
def start_server(start_server: StartServer) -> StartServer:
    """The shared fixture, with two SMTP worker processes unless ``smtp`` says otherwise."""

    async def start(**sections: Any) -> Server:
        smtp = {"workers": 2, **sections.pop("smtp", {})}
        return await start_server(smtp=smtp, **sections)  # type: ignore[no-any-return]

    return start


def pool(server: Server) -> WorkerPool:
    assert isinstance(server.smtp, WorkerPool)
    return server.smtp


def send(port: int, count: int, rcpt: str = "b@example.org") -> list[tuple[int, bytes]]:
    """``count`` messages over one connection; the DATA replies."""
    replies = []
    with smtplib.SMTP(HOST, port, local_hostname="client.test", timeout=20) as client:
        client.ehlo()
        for _ in range(count):
            client.mail("a@example.com")
            refused = client.rcpt(rcpt)
            if refused[0] != 250:  # e.g. the daily quota, already used up at RCPT
                replies.append(refused)
                client.rset()
                continue
            replies.append(client.data(MESSAGE))
    return replies


def parallel(clients: int, session: Callable[[], Any]) -> list[Any]:
    """``session`` run by ``clients`` threads at once (call off the event loop: the
    daemon under test runs on it and commits the workers' messages)."""
    with ThreadPoolExecutor(clients) as threads:
        return list(threads.map(lambda _: session(), range(clients)))


def mail_reply(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP(HOST, port, local_hostname="client.test", timeout=20) as client:
        client.ehlo()
        return client.mail("a@example.com")


def statuses(url: str) -> dict[str, str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, status FROM messages")).all()
    finally:
        engine.dispose()
    return {str(i): str(s) for i, s in rows}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_workers_accept_durably_and_the_daemon_delivers(
    start_server: StartServer, db_url: str
) -> None:
    server = await start_server()
    pids = pool(server).pids
    assert len(pids) == 2 and os.getpid() not in pids
    batches = await asyncio.to_thread(parallel, 8, lambda: send(server.smtp_port, 5))
    replies = [reply for batch in batches for reply in batch]
    assert all(
        code == 250 and text.startswith(b"2.0.0 Ok: queued as msg-") for code, text in replies
    )
    ids = {text.decode().rsplit(" ", 1)[1] for _, text in replies}
    assert len(ids) == 40
    # Every acknowledged message is stored; the daemon (woken by the workers) delivers them all.
    await wait_until(lambda: set(statuses(db_url)) >= ids)

    def all_sent() -> bool:
        now = statuses(db_url)  # one reading of the table per check
        return all(now[i] == "sent" for i in ids)

    await wait_until(all_sent, timeout=30)
    outbox = Path(server.config.data_path) / "outbox"
    assert len(list(outbox.glob("*.eml"))) == 40
    # The workers' SMTP figures reach the daemon's /metrics. They travel on the control
    # socket apart from the wake-up that got the mail delivered, so they may come a moment
    # after it: wait for all 40, then check there are no more.
    async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH, timeout=10) as http:

        async def smtp_figures() -> tuple[float, float]:
            metrics = (await http.get("/metrics")).text
            accepted = transactions = 0.0
            for line in metrics.splitlines():
                if line.startswith('relay_messages_accepted_total{source="smtp"'):
                    accepted += float(line.rsplit(" ", 1)[1])
                elif line.startswith("relay_smtp_transaction_seconds_count "):
                    transactions = float(line.rsplit(" ", 1)[1])
            return accepted, transactions

        deadline = time.monotonic() + 20
        while min(figures := await smtp_figures()) < 40.0:
            assert time.monotonic() < deadline, f"SMTP figures still {figures}"
            await asyncio.sleep(0.05)
    assert figures == (40.0, 40.0)


async def test_workers_follow_maintenance_mode(start_server: StartServer) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH) as http:
        on = await http.post(
            "/api/admin/maintenance/mode", json={"enabled": True, "message": "Disk swap"}
        )
        assert on.status_code == 200, on.text
        # Both workers refuse (several connections, so each worker is asked).
        for _ in range(6):
            assert await asyncio.to_thread(mail_reply, server.smtp_port) == (
                421,
                b"4.3.2 Disk swap",
            )
        off = await http.post("/api/admin/maintenance/mode", json={"enabled": False})
        assert off.status_code == 200, off.text
    for _ in range(6):
        assert (await asyncio.to_thread(mail_reply, server.smtp_port))[0] == 250


@pytest.mark.usefixtures("clear_of_midnight")
async def test_workers_count_the_daily_quota_exactly(start_server: StartServer) -> None:
    server = await start_server(rate_limits={"global_daily": 7})
    batches = await asyncio.to_thread(parallel, 6, lambda: send(server.smtp_port, 2))
    codes = [code for batch in batches for code, _ in batch]
    assert codes.count(250) == 7
    assert all(code == 452 for code in codes if code != 250)


def two_workers_without(server: Server, gone: set[int]) -> Callable[[], list[int] | None]:
    """A wait_until check: the pool's pids once it has two again, none of them in ``gone``."""

    def check() -> list[int] | None:
        pids = pool(server).pids  # one reading per check: a dying worker may leave between two
        return pids if len(pids) == 2 and not gone & set(pids) else None

    return check


async def test_a_killed_worker_is_started_again(start_server: StartServer) -> None:
    server = await start_server()
    victim = pool(server).pids[0]
    os.kill(victim, signal.SIGKILL)
    pids = await wait_until(two_workers_without(server, {victim}))
    assert len(pids) == 2 and victim not in pids
    for _ in range(4):
        assert all(code == 250 for code, _ in await asyncio.to_thread(send, server.smtp_port, 1))


async def test_a_restarted_worker_that_dies_before_it_is_ready_is_started_again(
    start_server: StartServer,
) -> None:
    server = await start_server()
    started = set(pool(server).pids)
    first = pool(server).pids[0]
    os.kill(first, signal.SIGKILL)
    (second,) = set(await wait_until(two_workers_without(server, {first}))) - started
    worker = next(w for w in pool(server)._workers if w.process and w.process.pid == second)
    assert worker.ready is not None and not worker.ready.done(), "ready before it was killed"
    os.kill(second, signal.SIGKILL)
    await wait_until(two_workers_without(server, {first, second}))
    for _ in range(4):
        assert all(code == 250 for code, _ in await asyncio.to_thread(send, server.smtp_port, 1))


async def test_stop_ends_every_worker_and_closes_the_ports(start_server: StartServer) -> None:
    server = await start_server()
    port, pids = server.smtp_port, pool(server).pids
    assert (await asyncio.to_thread(send, port, 1))[0][0] == 250
    await server.stop()
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(OSError):
        await asyncio.to_thread(send, port, 1)
