#!/usr/bin/env python3
"""Drain a queue of N messages through a provider and print messages per second.

Targets:
- ``mailgun``: the mailgun provider against the Mailgun fake (``tests/providers/fakes.py``),
  served by uvicorn (uvloop + httptools) in its own process. Before the drain, ``wrk``
  posts the same multipart request to the fake, so the fake's own ceiling is known
  and the figure says which side limits it.
- ``smtp``: the smtp provider (pooled aiosmtplib sessions) into Postfix's ``smtp-sink``.

The daemon side runs on relayd's own event loop (uvloop unless RELAY_LOOP=asyncio).
The queue is filled first (SQLite under a temp directory, one transaction per
1,000 messages), then a Dispatcher with the real RelayService drains it; the
clock runs from the dispatcher's start to the moment the last message is
recorded ``sent`` in the database.

    .venv/bin/python bench/delivery_drain.py                       # both, 20,000 messages
    .venv/bin/python bench/delivery_drain.py --target mailgun --messages 5000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import BenchError, Sink, free_port, port_open, require_tools, stop_process  # noqa: E402

from daemon.cli import loop_factory  # noqa: E402
from daemon.config import build_config  # noqa: E402
from daemon.core.ids import message_id  # noqa: E402
from daemon.core.message import NewMessage, Recipient  # noqa: E402
from daemon.delivery import Dispatcher  # noqa: E402
from daemon.providers import build_providers  # noqa: E402
from daemon.service import RelayService  # noqa: E402
from daemon.store import queue  # noqa: E402
from daemon.store.engine import make_engine  # noqa: E402
from daemon.store.migrate import upgrade  # noqa: E402

API_KEY = "key-test"
DOMAIN = "mg.example.com"
BODY = "x" * 900


def message_bytes(n: int) -> bytes:
    return (
        f"From: bench@example.com\r\nTo: rcpt{n}@example.org\r\nSubject: bench {n}\r\n"
        f"Message-ID: <bench-{n}@example.com>\r\n\r\n{BODY}\r\n"
    ).encode()


def fill(engine: Any, count: int) -> None:
    """Queue ``count`` due messages, 1,000 per transaction."""
    now = datetime.now(UTC)
    base = int(now.timestamp() * 1000)
    for start in range(0, count, 1000):
        batch = [
            NewMessage(
                id=message_id(base + n),
                uuid=str(uuid.uuid4()),
                mail_from="bench@example.com",
                recipients=[Recipient(f"rcpt{n}@example.org")],
                raw=message_bytes(n),
                queued_at=now,
                next_attempt_at=now,
                subject=f"bench {n}",
            )
            for n in range(start, min(count, start + 1000))
        ]
        with engine.begin() as conn:
            queue.insert_messages(conn, batch)


async def drain(data_dir: Path, provider: dict[str, Any], count: int, concurrency: int) -> float:
    """Seconds to deliver ``count`` queued messages through ``provider``."""
    config = build_config(
        [
            (
                "file",
                {
                    "data_dir": str(data_dir),
                    "log_level": "warning",
                    "queue": {"concurrency": concurrency, "batch_size": 500},
                    "auth": {"admin_token": "bench"},
                    "providers": {"p": provider},
                },
            )
        ]
    )
    engine = make_engine(config.database_url)
    upgrade(engine)
    fill(engine, count)
    service = RelayService(config, engine)
    await service.start()
    dispatcher = Dispatcher(service, build_providers(config), random.Random(1))
    started = time.monotonic()
    await dispatcher.start()
    try:
        while True:
            counts = await service.count_by_status()
            if counts.get("sent", 0) >= count:
                break
            if counts.get("failed", 0) or counts.get("auth_error", 0):
                raise BenchError(f"deliveries failed: {counts}")
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        await dispatcher.stop(5.0)
        await service.close()
        engine.dispose()
    return elapsed


def run_loop(coro: Coroutine[Any, Any, float]) -> float:
    """Run on the event loop relayd itself uses (uvloop unless RELAY_LOOP=asyncio)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Authorization"] = "Basic {auth}"
wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"
wrk.body = {body}
"""


def wrk_ceiling(port: int, seconds: int, connections: int) -> float:
    """Requests per second the fake answers to wrk with the provider's own request."""
    tool = require_tools(["wrk"])["wrk"]
    boundary = "benchboundary"
    raw = message_bytes(0).decode()
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="to"\r\n\r\nrcpt0@example.org\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="message"; '
        f'filename="message.mime"\r\nContent-Type: message/rfc822\r\n\r\n{raw}\r\n'
        f"--{boundary}--\r\n"
    )
    # A quoted Lua string: long brackets would turn each CRLF into LF.
    escaped = body.replace("\\", "\\\\").replace('"', '\\"')
    lua_body = '"' + escaped.replace("\r", "\\r").replace("\n", "\\n") + '"'
    auth = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT.format(auth=auth, boundary=boundary, body=lua_body))
        script = fh.name
    try:
        out = subprocess.run(
            [tool, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", script,
             f"http://127.0.0.1:{port}/v3/{DOMAIN}/messages.mime"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script)
    if "Non-2xx" in out:
        raise BenchError(f"wrk got errors from the fake:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise BenchError(f"cannot read wrk's output:\n{out}")
    return float(match.group(1))


def run_mailgun(count: int, concurrency: int, wrk_seconds: int) -> None:
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.providers.fakes", "mailgun", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15.0
        while not port_open(port):
            if fake.poll() is not None or time.monotonic() > deadline:
                raise BenchError("the Mailgun fake did not start")
            time.sleep(0.05)
        ceiling = wrk_ceiling(port, wrk_seconds, concurrency)
        print(f"mailgun fake alone (wrk, {concurrency} connections): {ceiling:,.0f} requests/s")
        with tempfile.TemporaryDirectory(prefix="relay-bench-drain-") as tmp:
            provider = {
                "type": "mailgun",
                "api_key": API_KEY,
                "domain": DOMAIN,
                "base_url": f"http://127.0.0.1:{port}",
                "max_connections": concurrency,
            }
            elapsed = run_loop(drain(Path(tmp), provider, count, concurrency))
        rate = count / elapsed
        print(
            f"relayd -> mailgun fake: {count:,} messages in {elapsed:.2f}s = {rate:,.0f} msgs/s "
            f"({rate / ceiling:.0%} of the fake's ceiling: "
            f"{'the fake' if rate > 0.8 * ceiling else 'relayd'} limits it)"
        )
    finally:
        stop_process(fake)


def run_smtp(count: int, concurrency: int) -> None:
    port = free_port()
    sink = Sink(port)
    try:
        with tempfile.TemporaryDirectory(prefix="relay-bench-drain-") as tmp:
            provider = {
                "type": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "max_connections": min(concurrency, 32),
            }
            elapsed = run_loop(drain(Path(tmp), provider, count, concurrency))
        print(
            f"relayd -> smtp-sink: {count:,} messages in {elapsed:.2f}s = "
            f"{count / elapsed:,.0f} msgs/s (smtp-sink counted {sink.count})"
        )
    finally:
        sink.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["mailgun", "smtp", "both"], default="both")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--wrk-seconds", type=int, default=5)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.messages:,} messages of ~1 KiB; "
          f"queue.concurrency={args.concurrency}")  # fmt: skip
    try:
        if args.target in ("mailgun", "both"):
            run_mailgun(args.messages, args.concurrency, args.wrk_seconds)
        if args.target in ("smtp", "both"):
            run_smtp(args.messages, args.concurrency)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
