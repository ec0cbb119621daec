"""kill -9 under SMTP load: every message that got a 250 is delivered after restart."""

from __future__ import annotations

import re
import smtplib
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.e2e.conftest import Daemon, free_port

pytestmark = pytest.mark.e2e

QUEUED = re.compile(r"2\.0\.0 Ok: queued as (msg-[0-9A-Z]{26})")


class CountingSink:
    """An aiosmtpd sink in a thread, recording the X-Seq header of every message."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        match = re.search(rb"^X-Seq: (\d+)\r$", content, re.MULTILINE)
        if match:
            with self.lock:
                self.seqs.append(int(match.group(1)))
        return "250 2.0.0 Ok"


def send_load(
    port: int, start: int, count: int, acked: dict[int, str], stop: threading.Event
) -> None:
    """One client connection sending messages until told to stop or the server dies."""
    seq = start
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("load.test")
            while seq < start + count and not stop.is_set():
                body = (
                    f"From: a@example.com\r\nTo: b@example.org\r\nSubject: load {seq}\r\n"
                    f"X-Seq: {seq}\r\n\r\nmessage {seq}\r\n"
                )
                client.mail("a@example.com")
                client.rcpt("b@example.org")
                code, reply = client.data(body.encode())
                match = QUEUED.search(reply.decode())
                if code == 250 and match:
                    acked[seq] = match.group(1)
                seq += 1
    except (OSError, smtplib.SMTPException):
        pass  # the daemon was killed under us: unacknowledged messages may be lost


def test_kill9_under_load_loses_nothing_acknowledged(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    handler = CountingSink()
    sink_port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=sink_port)
    controller.start()
    try:
        daemon = daemon_factory(
            tmp_path,
            '[providers.sink]\ntype = "smtp"\nhost = "127.0.0.1"\n'
            f'port = {sink_port}\ntls = "none"\ntimeout = "5s"\n',
        )
        daemon.start()
        acked: dict[int, str] = {}
        stop = threading.Event()
        clients = [
            threading.Thread(
                target=send_load, args=(daemon.smtp_port, i * 100000, 5000, acked, stop)
            )
            for i in range(4)
        ]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        daemon.kill9()
        stop.set()
        for client in clients:
            client.join(15)
        assert len(acked) >= 300, "load did not get going"
        acked_at_kill = dict(acked)

        daemon.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with handler.lock:
                if set(acked_at_kill) <= set(handler.seqs):
                    break
            time.sleep(0.2)
        with handler.lock:
            received = list(handler.seqs)
        missing = set(acked_at_kill) - set(received)
        assert not missing, f"{len(missing)} acknowledged messages never delivered"
        duplicates = len(received) - len(set(received))
        # Only deliveries in flight at the kill may arrive twice.
        assert duplicates <= 64 + 50, f"{duplicates} duplicates"
        assert daemon.terminate() == 0
    finally:
        controller.stop()
