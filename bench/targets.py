#!/usr/bin/env python3
"""The servers a benchmark can drive: relayd (started here), a local Postfix, or a given port.

Each target is started fresh for one measured run and relays to the smtp-sink the
benchmark started; ``close()`` stops it and removes its temp directory.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LOCALHOST,
    BenchError,
    Relayd,
    free_port,
    port_open,
    stop_process,
    tree_cpu_seconds,
    wait_port,
)
from postfix_local import LocalPostfix
from profiler import Profile, PySpy


class Target(Protocol):
    """What the benchmarks need from a server under test."""

    label: str
    port: int
    cpu: float | None  # CPU seconds of the server's processes during the last measurement

    def stored(self) -> int | None:
        """Messages the server holds durably (None when it cannot be asked)."""

    def begin_measurement(self, name: str) -> None:
        """Called right before timing starts (starts a profiler when asked for)."""

    def end_measurement(self) -> None:
        """Called right after timing ends."""

    def notes(self) -> list[str]:
        """Extra lines for the report (statuses, profile summary)."""

    def close(self) -> None:
        """Stop the server and remove what it wrote."""


class RelaydTarget:
    """A fresh relayd with its own data directory, relaying to smtp-sink (or to its outbox)."""

    cpu: float | None  # set by begin_measurement()

    def __init__(self, args: argparse.Namespace, sink_port: int | None) -> None:
        self.label = f"relayd ({args.loop})"
        self._base = Path(tempfile.mkdtemp(prefix="relay-bench-relayd-"))
        self._profile_dir: Path | None = args.profile
        self._profile_gil: bool = args.profile_gil
        self._spy: PySpy | None = None
        self._notes: list[str] = []
        self.relayd = Relayd(
            self._base, sink_port, args.loop, args.database_url, args.relayd_set, args.relayd
        )
        self.port = self.relayd.smtp_port
        try:
            self.relayd.start()
        except BenchError:
            shutil.rmtree(self._base, ignore_errors=True)
            raise
        self._notes.append("command: " + " ".join(self.relayd.command))

    def stored(self) -> int | None:
        return self.relayd.stored()

    def begin_measurement(self, name: str) -> None:
        self.cpu = None
        self._cpu_start = tree_cpu_seconds(self.relayd.pid)
        if self._profile_dir is not None:
            self._profile_dir.mkdir(parents=True, exist_ok=True)
            output = self._profile_dir / f"{name}-{self.relayd.loop}.folded"
            self._spy = PySpy(self.relayd.pid, output, gil=self._profile_gil)

    def end_measurement(self) -> None:
        self.cpu = tree_cpu_seconds(self.relayd.pid) - self._cpu_start
        if self._spy is not None:
            output = self._spy.stop()
            self._spy = None
            self._notes.append(f"profile: {output}")
            self._notes.append(Profile.read(output).report(20))

    def statuses(self) -> dict[str, int]:
        """Messages per status in the daemon's database."""
        return self.relayd.statuses()

    def notes(self) -> list[str]:
        return self._notes

    def close(self) -> None:
        if self._spy is not None:
            self._spy.stop()
        code = self.relayd.stop()
        if code not in (0, None):
            self._notes.append(f"relayd exited with {code} on SIGTERM:\n{self.relayd.log_tail()}")
        shutil.rmtree(self._base, ignore_errors=True)


class PostfixTarget:
    """A throwaway Postfix relaying to smtp-sink (see postfix_local.py)."""

    cpu: float | None  # set by begin_measurement()

    def __init__(self, args: argparse.Namespace, sink_port: int | None) -> None:
        if sink_port is None:
            raise BenchError("the Postfix target needs an smtp-sink to relay to")
        self.label = "postfix"
        self.port = args.postfix_port or free_port()
        self.postfix = LocalPostfix(
            Path(tempfile.mkdtemp(prefix="relay-bench-postfix-")), self.port, sink_port
        )
        try:
            self.postfix.start()
        except BenchError as exc:
            log = self.postfix.maillog_tail()
            self.postfix.stop()
            raise BenchError(f"{exc}\n{log}") from None

    def stored(self) -> int | None:
        return None

    def _master(self) -> int:
        return int((self.postfix.queue_dir / "pid" / "master.pid").read_text().split()[0])

    def begin_measurement(self, name: str) -> None:
        self.cpu = None
        self._cpu_start = tree_cpu_seconds(self._master())

    def end_measurement(self) -> None:
        self.cpu = tree_cpu_seconds(self._master()) - self._cpu_start

    def notes(self) -> list[str]:
        return []

    def close(self) -> None:
        self.postfix.stop()


class NullTarget:
    """A do-nothing aiosmtpd (bench/null_smtpd.py): what aiosmtpd alone costs here."""

    def __init__(self) -> None:
        self.label = "aiosmtpd-null"
        self.port = free_port()
        script = Path(__file__).resolve().parent / "null_smtpd.py"
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(self.port)], start_new_session=True
        )
        self.cpu: float | None = None
        try:
            wait_port(self.port, 30, self.process)
        except BenchError:
            stop_process(self.process)
            raise

    def stored(self) -> int | None:
        return None

    def begin_measurement(self, name: str) -> None:
        self.cpu = None
        self._cpu_start = tree_cpu_seconds(self.process.pid)

    def end_measurement(self) -> None:
        self.cpu = tree_cpu_seconds(self.process.pid) - self._cpu_start

    def notes(self) -> list[str]:
        return []

    def close(self) -> None:
        stop_process(self.process)


class ExternalTarget:
    """Something already listening on 127.0.0.1:PORT; only its SMTP replies are measured."""

    cpu: float | None  # set by begin_measurement(); always None here

    def __init__(self, spec: str) -> None:
        host, _, port_text = spec.rpartition(":")
        if host not in ("", LOCALHOST, "localhost") or not port_text.isdigit():
            raise BenchError(f"target {spec!r}: only 127.0.0.1:PORT may be benchmarked")
        self.label = f"{LOCALHOST}:{port_text}"
        self.port = int(port_text)
        if not port_open(self.port):
            raise BenchError(f"nothing listens on {self.label}")

    def stored(self) -> int | None:
        return None

    def begin_measurement(self, name: str) -> None:
        self.cpu = None

    def end_measurement(self) -> None:
        pass

    def notes(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


def open_target(name: str, args: argparse.Namespace, sink_port: int | None) -> Target:
    """Start the named target: ``relayd``, ``postfix`` or ``127.0.0.1:PORT``."""
    if name == "relayd":
        return RelaydTarget(args, sink_port)
    if name == "postfix":
        return PostfixTarget(args, sink_port)
    if name == "aiosmtpd-null":
        return NullTarget()
    return ExternalTarget(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both benchmarks take."""
    parser.add_argument(
        "--target",
        action="append",
        help="relayd, postfix, aiosmtpd-null (a do-nothing aiosmtpd) or 127.0.0.1:PORT; "
        "repeat for a side-by-side run "
        "(default: postfix and relayd)",
    )
    parser.add_argument("--messages", "-m", type=int, default=10000, help="messages per run")
    parser.add_argument("--sessions", "-s", type=int, default=10, help="parallel SMTP sessions")
    parser.add_argument("--size", "-l", type=int, default=1024, help="message body bytes")
    parser.add_argument(
        "--mode",
        choices=("new", "reuse", "both"),
        default="both",
        help="new connection per message, connection reuse (smtp-source -d), or both",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per target and mode")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="relayd's event loop (sets RELAY_LOOP)",
    )
    parser.add_argument(
        "--database-url", default="", help="relayd database URL (default: SQLite in a temp dir)"
    )
    parser.add_argument(
        "--relayd", default="", metavar="PATH", help="relayd executable (default: the venv's)"
    )
    parser.add_argument(
        "--relayd-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra relayd setting, passed as --set (repeatable)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample relayd with py-spy during each run; folded stacks go to this directory",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (Python CPU time)",
    )
    parser.add_argument("--postfix-port", type=int, default=0, help="Postfix port (default: free)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="longest a single run may take, in seconds"
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse nonsense before anything starts."""
    for name in ("messages", "sessions", "size", "repeat"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name} must be at least 1")
    if args.sessions > 1000:
        raise BenchError("--sessions above 1000 would exhaust file descriptors")
    if args.target is None:
        args.target = ["postfix", "relayd"]


def modes(args: argparse.Namespace) -> list[bool]:
    """Connection reuse flags to run, from ``--mode``."""
    return {"new": [False], "reuse": [True], "both": [False, True]}[args.mode]
