#!/usr/bin/env python3
"""Listing a million-message queue: p95 of ``GET /api/messages?status=failed&limit=50``.

Fills a SQLite queue with N messages (default 1,000,000; generated in SQL by a
recursive CTE, so it takes seconds, not minutes), starts ``relayd`` on it as a
subprocess (its workers find nothing due: every pending message is scheduled
for later), then times sequential requests from one keep-alive client. Prints
the query plans of the list and count queries, and p50/p95/p99 per URL.
Target: p95 < 50 ms for the status=failed URL on SQLite.

    .venv/bin/python bench/queue_list.py [--messages N] [--requests N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LOCALHOST, free_port, stop_process
from daemon.store import queue
from daemon.store.engine import make_engine
from daemon.store.migrate import upgrade
from daemon.store.models import messages

TOKEN = "bench-admin-token"
URLS = (
    "/api/messages?status=failed&limit=50",
    "/api/messages?status=failed&limit=50&offset=5000",
    "/api/messages?status=sent&limit=50",
    "/api/messages?limit=50",
    "/api/messages?workspace_id=ws-3&status=failed&limit=50",
    "/api/messages?workspace_id=ws-3&limit=50",
)
# status by n % 100: 86% sent, 5% failed, 4% delivered, 2% scheduled, 2% cancelled, 1% auth_error
_STATUS_SQL = """CASE
    WHEN n % 100 < 86 THEN 'sent' WHEN n % 100 < 91 THEN 'failed'
    WHEN n % 100 < 95 THEN 'delivered' WHEN n % 100 < 97 THEN 'scheduled'
    WHEN n % 100 < 99 THEN 'cancelled' ELSE 'auth_error' END"""
_FILL_SQL = f"""
WITH RECURSIVE seq(n) AS (SELECT :start UNION ALL SELECT n + 1 FROM seq WHERE n < :stop)
INSERT INTO messages (id, uuid, workspace_id, campaign_id, user_id, source, mail_from,
    from_header, to_addrs, cc_addrs, bcc_addrs, subject, headers, attachments, metadata,
    priority, status, size, retry_count, queued_at, next_attempt_at, processed_at, updated_at,
    provider, error)
SELECT printf('msg-%016d', n), printf('00000000-0000-4000-8000-%012d', n),
    'ws-' || (n % 7), NULL, NULL, 'api', 'sender@example.com', 'sender@example.com',
    printf('["rcpt%d@example.org"]', n % 5000), '[]', '[]', 'Bench message ' || n, '{{}}',
    '[]', '{{}}', 1, {_STATUS_SQL}, 1200, 0,
    strftime('%Y-%m-%d %H:%M:%S.000000', :epoch + n * 2, 'unixepoch'),
    strftime('%Y-%m-%d %H:%M:%S.000000', :future + n, 'unixepoch'),
    strftime('%Y-%m-%d %H:%M:%S.000000', :epoch + n * 2 + 1, 'unixepoch'),
    strftime('%Y-%m-%d %H:%M:%S.000000', :epoch + n * 2 + 1, 'unixepoch'),
    'outbox', CASE WHEN n % 100 BETWEEN 86 AND 90 THEN '550 5.1.1 mailbox unavailable' END
FROM seq
"""


def fill(engine: sa.Engine, count: int, batch: int = 100_000) -> float:
    """Insert ``count`` messages in batches; returns the seconds it took."""
    started = time.monotonic()
    epoch = int(time.time()) - 2 * count - 3600  # the newest message is an hour old
    future = int(time.time()) + 30 * 86400
    for start in range(1, count + 1, batch):
        stop = min(start + batch - 1, count)
        with engine.begin() as conn:
            conn.execute(
                sa.text(_FILL_SQL),
                {"start": start, "stop": stop, "epoch": epoch, "future": future},
            )
        print(f"  {stop:>9,} messages", end="\r", flush=True)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    print()
    return time.monotonic() - started


def explain(engine: sa.Engine) -> None:
    """Print SQLite's plans for the page and count queries the endpoint runs."""
    for label, filters in (
        ("status=failed", queue.ListFilter(status="failed")),
        ("no filter", queue.ListFilter()),
        ("workspace_id=ws-3", queue.ListFilter(workspace_id="ws-3")),
    ):
        cond = queue._filter_conditions(filters)  # the exact WHERE the endpoint uses
        page = (
            sa.select(*queue.SUMMARY_COLUMNS)
            .where(*cond)
            .order_by(messages.c.queued_at.desc(), messages.c.id.desc())
            .limit(50)
        )
        count = sa.select(sa.func.count()).select_from(messages).where(*cond)
        with engine.connect() as conn:
            for name, stmt in (("page", page), ("count", count)):
                sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
                plan = conn.execute(sa.text("EXPLAIN QUERY PLAN " + sql)).all()
                print(f"  {label} {name}: " + " | ".join(row[-1] for row in plan))


def start_relayd(data_dir: Path, db: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RELAY_ADMIN_TOKEN": TOKEN,
        "RELAY_DATABASE_URL": f"sqlite:///{db}",
        "RELAY_LOG_LEVEL": "warning",
    }
    relayd = Path(sys.executable).with_name("relayd")
    args = [str(relayd), "--data-dir", str(data_dir), "--http-port", str(port)]
    args += ["--smtp-port", str(free_port()), "--set", f"smtp.tls_port={free_port()}"]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, start_new_session=True)


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"relayd exited with {proc.returncode}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("relayd did not become ready")


def measure(client: httpx.Client, url: str, requests: int) -> list[float]:
    for _ in range(5):  # warm the page cache and the connection
        client.get(url).raise_for_status()
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return sorted(times)


def pct(times: list[float], fraction: float) -> float:
    return times[min(len(times) - 1, int(fraction * len(times)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-list-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        db = workdir / "relay.db"
        engine = make_engine(f"sqlite:///{db}")
        upgrade(engine)
        print(f"filling {args.messages:,} messages into {db}")
        seconds = fill(engine, args.messages)
        print(f"  filled in {seconds:.1f} s ({db.stat().st_size / 1e6:.0f} MB)")
        print("query plans:")
        explain(engine)
        engine.dispose()
        port = free_port()
        proc = start_relayd(workdir / "data", db, port)
        base = f"http://{LOCALHOST}:{port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            wait_ready(client, proc, 60)
            print(f"{args.requests} sequential requests per URL, one keep-alive connection:")
            print(f"  {'URL':<58} {'p50':>8} {'p95':>8} {'p99':>8}  total")
            for url in URLS:
                times = measure(client, url, args.requests)
                if url == URLS[0]:
                    target = pct(times, 0.95)
                total = client.get(url).json()["data"]["pagination"]["total"]
                print(
                    f"  {url:<58} {statistics.median(times):7.1f}ms {pct(times, 0.95):7.1f}ms "
                    f"{pct(times, 0.99):7.1f}ms  {total:,}"
                )
        verdict = "meets" if target < 50 else "MISSES"
        print(f"p95 of {URLS[0]}: {target:.1f} ms ({verdict} the 50 ms target)")
    finally:
        if proc is not None:
            stop_process(proc, timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
