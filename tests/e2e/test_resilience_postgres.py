"""relayd under SMTP and API load while PostgreSQL goes away and comes back: its backends
terminated again and again, then every connection refused for a while. Nothing that got a
250 or a 202 is lost or delivered twice, the outage is answered 451 / DATABASE_ERROR,
ingest and delivery resume by themselves, and the log tells the story in a few lines."""

from __future__ import annotations

import collections
import json
import re
import secrets
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import PG_URL, require_postgresql
from tests.e2e.conftest import Daemon, free_port

pytestmark = pytest.mark.e2e

SUBJECT = re.compile(rb"^Subject: load (\S+)\r$", re.MULTILINE)


class SubjectSink:
    """An aiosmtpd sink in a thread recording the ``load <seq>`` subject of each message."""

    def __init__(self) -> None:
        self.seqs: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        match = SUBJECT.search(envelope.original_content or b"")
        if match:
            with self.lock:
                self.seqs.append(match.group(1).decode())
        return "250 2.0.0 Ok"

    def received(self) -> list[str]:
        with self.lock:
            return list(self.seqs)


@pytest.fixture
def sink() -> Iterator[tuple[SubjectSink, int]]:
    yield from running_sink()


def running_sink() -> Iterator[tuple[SubjectSink, int]]:
    """A started :class:`SubjectSink` and its port, stopped when the generator ends."""
    handler = SubjectSink()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def sink_provider(port: int) -> str:
    return (
        f'[providers.sink]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {port}\n'
        'tls = "none"\ntimeout = "5s"\n'
    )


class Load:
    """SMTP and API clients sending numbered messages until stopped. Every reply is counted
    under the phase it came in; ``acked`` maps each acknowledged seq to its message id."""

    def __init__(self, daemon: Daemon, smtp_clients: int = 2, api_clients: int = 1) -> None:
        self.daemon = daemon
        self.phase = "before"
        self.acked: dict[str, str] = {}
        self.replies: collections.Counter[tuple[str, str]] = collections.Counter()
        self.ok_at: list[float] = []  # monotonic times of acknowledgements
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            *(threading.Thread(target=self._smtp, args=(f"s{i}",)) for i in range(smtp_clients)),
            *(threading.Thread(target=self._api, args=(f"a{i}",)) for i in range(api_clients)),
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _note(self, reply: str, seq: str | None = None, message_id: str | None = None) -> None:
        with self._lock:
            self.replies[(self.phase, reply)] += 1
            if seq is not None and message_id is not None:
                self.acked[seq] = message_id
                self.ok_at.append(time.monotonic())

    def first_ack_after(self, moment: float) -> float:
        with self._lock:
            later = [t for t in self.ok_at if t >= moment]
        return min(later) - moment if later else float("inf")

    def phase_replies(self, phase: str) -> dict[str, int]:
        with self._lock:
            return {reply: n for (p, reply), n in self.replies.items() if p == phase}

    def _smtp(self, name: str) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.daemon.smtp_port, timeout=60) as client:
                    client.ehlo("load.test")
                    while not self._stop.is_set():
                        seq = f"{name}-{n}"
                        n += 1
                        client.mail("a@example.com")
                        code, text = client.rcpt("b@example.org")
                        if code != 250:
                            self._note(f"smtp rcpt {code} {text.decode()[:5]}")
                            client.rset()
                            time.sleep(0.02)
                            continue
                        body = f"Subject: load {seq}\r\nFrom: a@example.com\r\n\r\nx\r\n"
                        answer: bytes | str
                        try:
                            code, answer = client.data(body.encode())
                        except smtplib.SMTPDataError as exc:
                            code, answer = exc.smtp_code, exc.smtp_error
                        reply = answer.decode() if isinstance(answer, bytes) else answer
                        if code == 250:
                            message_id = reply.rsplit(" ", 1)[-1]
                            self._note("smtp data 250", seq, message_id)
                        else:
                            self._note(f"smtp data {code} {reply[:5]}")
                            client.rset()
                            time.sleep(0.02)
            except (OSError, smtplib.SMTPException) as exc:
                self._note(f"smtp {type(exc).__name__}")
                time.sleep(0.1)

    def _api(self, name: str) -> None:
        n = 0
        headers = {"Authorization": f"Bearer {self.daemon.token}"}
        with httpx.Client(base_url=self.daemon.url, headers=headers, timeout=60) as client:
            while not self._stop.is_set():
                seq = f"{name}-{n}"
                n += 1
                body = {
                    "from": "a@example.com",
                    "to": ["b@example.org"],
                    "subject": f"load {seq}",
                    "text_body": "x",
                }
                try:
                    response = client.post("/api/messages", json=body)
                except httpx.HTTPError as exc:
                    self._note(f"api {type(exc).__name__}")
                    time.sleep(0.1)
                    continue
                if response.status_code == 202:
                    self._note("api 202", seq, response.json()["data"]["message_id"])
                else:
                    code = response.json().get("error", {}).get("code", "?")
                    self._note(f"api {response.status_code} {code}")
                    time.sleep(0.02)


def wait_delivered(sink: SubjectSink, acked: dict[str, str], timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        received = sink.received()
        if set(acked) <= set(received):
            return received
        time.sleep(0.1)
    missing = set(acked) - set(sink.received())
    raise AssertionError(f"{len(missing)} acknowledged messages never delivered: {missing}")


def all_sent(url: str, timeout: float = 15.0) -> set[str]:
    """The statuses of every message once all are ``sent`` (or after ``timeout``): a lease
    lost with its result comes back as a second delivery first."""
    engine = sa.create_engine(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with engine.connect() as conn:
                statuses = set(
                    conn.execute(sa.text("SELECT DISTINCT status FROM messages")).scalars()
                )
            if statuses <= {"sent"} or time.monotonic() > deadline:
                return statuses
            time.sleep(0.1)
    finally:
        engine.dispose()


def watch_queue_depth(daemon: Daemon, depths: list[int | None], seconds: float = 12.0) -> None:
    """The queue_depth of each ``/api/stats/realtime`` event for ``seconds``."""
    headers = {"Authorization": f"Bearer {daemon.token}"}
    deadline = time.monotonic() + seconds
    url = f"{daemon.url}/api/stats/realtime"
    with httpx.stream("GET", url, headers=headers, timeout=10) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                depths.append(json.loads(line.removeprefix("data: "))["queue_depth"])
            if time.monotonic() > deadline:
                return


def own_log_lines(log: str) -> list[str]:
    """Warnings and errors of relayd's own parts: the store, delivery, jobs, webhooks,
    providers, SMTP and the API (each request it refused is a line at info only)."""
    return [
        line
        for line in log.splitlines()
        if re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) ", line)
        and not re.search(r" psycopg: ", line)
    ]


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of its own, owned by a role of its own (a superuser ignores connection
    limits), dropped afterwards; the URL relayd uses."""
    pg = require_postgresql()
    name = "relay_resil_" + secrets.token_hex(4)
    admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE ROLE "{name}" LOGIN'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}" OWNER "{name}"'))
        url = sa.engine.make_url(pg).set(username=name, password=None, database=name, query={})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


def terminate_backends(name: str) -> int:
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :d AND pid <> pg_backend_pid()"
                    ),
                    {"d": name},
                ).scalar_one()
            )
    finally:
        admin.dispose()


def connection_limit(name: str, limit: int) -> None:
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" CONNECTION LIMIT {limit}'))
    finally:
        admin.dispose()


def test_postgresql_going_away_and_coming_back_under_load(
    daemon_factory: type[Daemon],
    tmp_path: Path,
    own_database: str,
    sink: tuple[SubjectSink, int],
) -> None:
    handler, sink_port = sink
    name = sa.engine.make_url(own_database).database
    assert name is not None
    daemon = daemon_factory(
        tmp_path, f'[database]\nurl = "{own_database}"\n' + sink_provider(sink_port)
    )
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(text.replace('lease = "5s"', 'lease = "2s"'))
    daemon.start()
    # A live stream opened before the outage carries on through it: without the queue
    # depth it cannot read, then with it again.
    depths: list[int | None] = []
    streaming = threading.Thread(target=watch_queue_depth, args=(daemon, depths), daemon=True)
    streaming.start()
    with Load(daemon) as load:
        time.sleep(1.0)
        load.phase = "terminated"
        for _ in range(4):  # every backend of relayd ended, four times in 1.6 seconds
            assert terminate_backends(name) > 0
            time.sleep(0.4)
        load.phase = "refused"
        connection_limit(name, 0)
        terminate_backends(name)
        time.sleep(4.0)  # longer than the lease: leases lapse, renewals fail
        connection_limit(name, -1)
        back = time.monotonic()
        load.phase = "after"
        time.sleep(2.0)
    assert load.first_ack_after(back) < 3.0, "ingest did not resume within 3s"
    refused = load.phase_replies("refused")
    # Never a 250/202 for what was not stored: only these, and some of both kinds.
    assert set(refused) <= {
        "smtp data 250",  # the first moments: a connection still open
        "api 202",
        "smtp rcpt 451 4.3.0",
        "smtp data 451 4.3.0",
        "api 500 DATABASE_ERROR",
    }, refused
    assert refused.get("api 500 DATABASE_ERROR", 0) > 0
    assert refused.get("smtp rcpt 451 4.3.0", 0) + refused.get("smtp data 451 4.3.0", 0) > 0
    terminated = load.phase_replies("terminated")
    assert terminated.get("smtp data 250", 0) > 0 and terminated.get("api 202", 0) > 0

    wait_delivered(handler, load.acked)
    assert all_sent(own_database) == {"sent"}  # nothing stuck in processing
    streaming.join(timeout=15)
    assert None in depths and isinstance(depths[-1], int), depths
    time.sleep(1.0)  # a delivery of a message that was sent already would arrive by now
    duplicates = [seq for seq, n in collections.Counter(handler.received()).items() if n > 1]
    assert not duplicates, f"delivered twice: {duplicates}"

    # Everything is alive: health, the realtime stream, new mail delivered at once.
    headers = {"Authorization": f"Bearer {daemon.token}"}
    assert httpx.get(f"{daemon.url}/health", timeout=10).status_code == 200
    with httpx.stream(
        "GET", f"{daemon.url}/api/stats/realtime", headers=headers, timeout=10
    ) as stream:
        assert any(line.startswith("data: ") for line in stream.iter_lines())
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.org"], b"Subject: load last\r\n\r\nx\r\n")
    wait_delivered(handler, {"last": ""}, timeout=10)
    assert daemon.terminate() == 0

    log = daemon.log.read_text()
    assert "raised an exception" not in log  # APScheduler's traceback for a job
    assert "Traceback" not in log  # nor the SMTP handler's, for each refused RCPT
    lines = own_log_lines(log)
    assert not [line for line in lines if "could not record" in line], lines
    assert len(lines) <= 30, "\n".join(lines)
    # What happened, in a few lines: the outage, and writes working again after it.
    for said in (
        "relayd.store: database unavailable, writes fail until it is back: ",
        "relayd.store: database writes work again after ",
    ):
        assert said in log, said
