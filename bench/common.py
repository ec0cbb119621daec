#!/usr/bin/env python3
"""Shared helpers for the benchmarks: tool checks, ports, smtp-source runs, a counting smtp-sink.

Benchmarks are not tests: they print figures. Everything here talks to 127.0.0.1 only,
every wait is bounded, and every process started here is stopped by its own id.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCALHOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent

INSTALL_LINE = (
    "echo 'postfix postfix/main_mailer_type select No configuration' "
    "| sudo debconf-set-selections && "
    "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postfix swaks"
)
# Postfix's test programs and daemons live outside a normal user's PATH.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/lib/postfix/sbin")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and every process below it.

    A live process counts its own utime+stime; one that has exited and been
    reaped is in its parent's cutime+cstime; so each process counts once.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return total / tick


class BenchError(Exception):
    """A benchmark cannot run or its result cannot be trusted; the message says why."""


def find_tool(name: str) -> str | None:
    """The full path of an executable, looking in the sbin directories too."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(name, path=path)


def require_tools(names: Iterable[str]) -> dict[str, str]:
    """Paths of the named tools; print the install line and exit 3 when one is missing."""
    found = {name: find_tool(name) for name in names}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        print(f"missing: {', '.join(missing)}. Install them with:", file=sys.stderr)
        print(f"  {INSTALL_LINE}", file=sys.stderr)
        raise SystemExit(3)
    return {name: path for name, path in found.items() if path is not None}


def require_root(why: str) -> None:
    """Exit with a clear line unless running as root."""
    if os.geteuid() != 0:
        print(f"must run as root: {why}", file=sys.stderr)
        raise SystemExit(3)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOCALHOST, port)) == 0


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until 127.0.0.1:port answers with an SMTP greeting; raise BenchError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(
                f"process exited with code {proc.returncode} before port {port} opened"
            )
        try:
            with socket.create_connection((LOCALHOST, port), timeout=1.0) as sock:
                if sock.recv(64).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"nothing answered SMTP on {LOCALHOST}:{port} within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group this process leads, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def sink_user() -> list[str]:
    """smtp-sink refuses to run as root without ``-u``; name an unprivileged account."""
    if os.geteuid() != 0:
        return []
    for user in ("postfix", "nobody"):
        with contextlib.suppress(KeyError):
            import pwd

            pwd.getpwnam(user)
            return ["-u", user]
    raise BenchError("running as root but neither a 'postfix' nor a 'nobody' account exists")


class Sink:
    """``smtp-sink -c`` on 127.0.0.1: discards mail and counts each message as its "." arrives.

    The count comes from smtp-sink's own running counters (``mesg=N``), read from its stdout
    by a thread, so the time the N-th message arrived is known to within a pipe read.
    """

    _MESG = re.compile(rb"mesg=(\d+)")

    def __init__(self, port: int, backlog: int = 1024) -> None:
        self.port = port
        tool = require_tools(["smtp-sink"])["smtp-sink"]
        self._count = 0
        self._changed = threading.Condition()
        self._reached: dict[int, float] = {}
        self._proc = subprocess.Popen(
            [tool, *sink_user(), "-c", "-m", "512", f"{LOCALHOST}:{port}", str(backlog)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(port, 10.0, self._proc)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        tail = b""
        while True:
            chunk = os.read(self._proc.stdout.fileno(), 65536)
            if not chunk:
                break
            now = time.monotonic()
            tail = (tail + chunk)[-256:]
            counts = self._MESG.findall(tail)
            if counts:
                with self._changed:
                    self._count = max(self._count, int(counts[-1]))
                    self._reached.setdefault(self._count, now)
                    self._changed.notify_all()
            tail = tail[tail.rfind(b"\r") + 1 :]

    @property
    def count(self) -> int:
        """Messages received so far."""
        with self._changed:
            return self._count

    def wait_for(self, total: int, timeout: float) -> float | None:
        """Monotonic time at which ``total`` messages had arrived, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count < total:
                left = deadline - time.monotonic()
                if left <= 0 or self._proc.poll() is not None:
                    return None
                self._changed.wait(min(left, 0.5))
            return min(t for n, t in self._reached.items() if n >= total)

    def stop(self) -> None:
        """Stop smtp-sink and its reader."""
        stop_process(self._proc)
        self._reader.join(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


@dataclass(frozen=True)
class SourceRun:
    """One smtp-source run: how long it took and whether every message got a 2xx."""

    messages: int
    seconds: float
    ok: bool
    output: str

    @property
    def rate(self) -> float:
        """Accepted messages per second (every message, since smtp-source aborts on a reject)."""
        return self.messages / self.seconds


def run_source(
    port: int,
    messages: int,
    sessions: int,
    size: int,
    reuse: bool,
    timeout: float,
    extra: Sequence[str] = (),
) -> SourceRun:
    """Drive 127.0.0.1:port with smtp-source; without ``-A`` any non-2xx reply aborts the run."""
    tool = require_tools(["smtp-source"])["smtp-source"]
    cmd = [tool, "-s", str(sessions), "-l", str(size), "-m", str(messages)]
    if reuse:
        cmd.append("-d")
    cmd += ["-M", "bench.example", "-f", "source@bench.example", "-t", "sink@example.org"]
    cmd += [*extra, f"{LOCALHOST}:{port}"]
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"smtp-source did not finish within {timeout:.0f}s") from None
    seconds = time.monotonic() - started
    output = (done.stdout + done.stderr).decode(errors="replace").strip()
    return SourceRun(messages, seconds, done.returncode == 0, output)


def source_command(port: int, messages: int, sessions: int, size: int, reuse: bool) -> str:
    """The smtp-source command line, for printing next to the figures."""
    reuse_flag = " -d" if reuse else ""
    return (
        f"smtp-source -s {sessions} -l {size} -m {messages}{reuse_flag} -M bench.example "
        f"-f source@bench.example -t sink@example.org {LOCALHOST}:{port}"
    )


def swaks_probe(port: int) -> None:
    """Send one message with swaks so a misconfigured target fails loudly before timing starts."""
    tool = require_tools(["swaks"])["swaks"]
    cmd = [
        tool,
        "--server",
        f"{LOCALHOST}:{port}",
        "--from",
        "probe@bench.example",
        "--to",
        "probe@example.org",
        "--helo",
        "bench.example",
        "--body",
        "bench probe",
        "--timeout",
        "20",
        "--silent",
        "2",
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        text = (done.stdout + done.stderr).decode(errors="replace").strip()
        raise BenchError(f"probe message to port {port} was refused: {text[-400:]}")


def relayd_executable() -> str:
    """The ``relayd`` console script of this checkout's venv, else the one on PATH."""
    beside = Path(sys.executable).parent / "relayd"
    if beside.exists():
        return str(beside)
    found = shutil.which("relayd")
    if found is None:
        raise BenchError("relayd is not installed: run `pip install -e .` in the venv first")
    return found


RELAYD_CONFIG = """\
data_dir = "{data_dir}"
log_level = "warning"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls_port = 0
hostname = "relayd-bench.localdomain"

[http]
host = "127.0.0.1"
port = {http_port}

[database]
url = "{database_url}"

[rate_limits]
global_daily = 0
workspace_default = 0
"""

SINK_PROVIDER = """
[providers.sink]
type = "smtp"
host = "127.0.0.1"
port = {sink_port}
tls = "none"
"""

OUTBOX_PROVIDER = """
[providers.outbox]
type = "outbox"
"""


class Relayd:
    """``relayd --config FILE`` as a subprocess with a fresh data directory under ``base``.

    ``sink_port`` relays everything to smtp-sink through an ``smtp`` provider; None keeps
    the ``outbox`` provider. ``loop`` selects uvloop or asyncio through RELAY_LOOP.
    """

    def __init__(
        self,
        base: Path,
        sink_port: int | None,
        loop: str = "uvloop",
        database_url: str = "",
        settings: Sequence[str] = (),
        executable: str = "",
    ) -> None:
        self.base = base
        self.executable = executable or relayd_executable()
        self.data_dir = base / "data"
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.database_url = database_url
        self.loop = loop
        self.settings = list(settings)
        self.config_file = base / "relayd.toml"
        self.log_file = base / "relayd.log"
        text = RELAYD_CONFIG.format(
            data_dir=self.data_dir,
            smtp_port=self.smtp_port,
            http_port=self.http_port,
            database_url=database_url,
        )
        text += OUTBOX_PROVIDER if sink_port is None else SINK_PROVIDER.format(sink_port=sink_port)
        self.config_file.write_text(text)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        """The command line that starts this daemon."""
        cmd = [self.executable, "--config", str(self.config_file)]
        for setting in self.settings:
            cmd += ["--set", setting]
        return cmd

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 60.0) -> None:
        """Start the daemon and wait for its SMTP greeting."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env["RELAY_LOOP"] = self.loop
        with self.log_file.open("wb") as log:
            self._proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            wait_port(self.smtp_port, timeout, self._proc)
        except BenchError as exc:
            self.stop()
            raise BenchError(f"relayd did not start: {exc}\n{self.log_tail()}") from None

    def stored(self) -> int:
        """Messages in the daemon's database (SQLite file or PostgreSQL)."""
        return int(self.query("SELECT count(*) FROM messages")[0][0])

    def statuses(self) -> dict[str, int]:
        """Messages per status."""
        rows = self.query("SELECT status, count(*) FROM messages GROUP BY status")
        return {str(status): int(count) for status, count in rows}

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a read-only query against the daemon's database."""
        if self.database_url.startswith("postgresql"):
            import psycopg

            url = self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(url) as conn:
                return list(conn.execute(sql).fetchall())
        import sqlite3

        path = self.data_dir / "relay.db"
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        ) as db:
            return list(db.execute(sql).fetchall())

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the daemon (it drains and exits 0); return its exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(self._proc, 5)
        return self._proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the daemon logged."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""
