#!/usr/bin/env python3
"""A throwaway Postfix instance under a temp directory, for side-by-side benchmarks.

It listens on 127.0.0.1:<port>, accepts mail from 127.0.0.0/8 only, delivers nothing
locally and relays everything to ``[127.0.0.1]:<relay-port>`` (where smtp-sink runs).
Its own config_directory, queue_directory and data_directory live under one temp
directory; /etc/postfix is only read (for the stock daemons and postfix-files).

    python3 bench/postfix_local.py up --port 2725 --sink-port 2726   # foreground, Ctrl-C ends
    python3 bench/postfix_local.py start --dir /tmp/pf --port 2725 --relay-port 2726
    python3 bench/postfix_local.py stop --dir /tmp/pf
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LOCALHOST,
    BenchError,
    Sink,
    port_open,
    require_root,
    require_tools,
    wait_port,
)

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {dir}/etc
queue_directory = {dir}/spool
data_directory = {dir}/data
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.localdomain
mydomain = localdomain
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
in_flow_delay = 0
default_destination_concurrency_limit = {concurrency}
initial_destination_concurrency = 5
biff = no
append_dot_mydomain = no
"""

# The stock services minus anything chrooted (the chroot would need a copy of /etc files)
# and minus local delivery; postlog writes maillog_file.
MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class LocalPostfix:
    """One Postfix instance living entirely under ``base`` (created if missing)."""

    def __init__(self, base: Path, port: int, relay_port: int, concurrency: int = 20) -> None:
        self.base = base
        self.port = port
        self.relay_port = relay_port
        self.concurrency = concurrency
        self.config_dir = base / "etc"
        self.queue_dir = base / "spool"
        self.tools = require_tools(["postfix", "postconf", "smtp-source", "smtp-sink"])

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MAIL_CONFIG": str(self.config_dir)}
        done = subprocess.run(
            [self.tools["postfix"], "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise BenchError(
                f"postfix {' '.join(args)} failed: {(done.stderr or done.stdout)[-500:]}"
            )
        return done

    def write_config(self) -> None:
        """Write main.cf and master.cf and create the directories Postfix expects."""
        for path in (self.config_dir, self.queue_dir, self.base / "data"):
            path.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "main.cf").write_text(
            MAIN_CF.format(dir=self.base, relay_port=self.relay_port, concurrency=self.concurrency)
        )
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(host=LOCALHOST, port=self.port))
        # Postfix's daemons drop to mail_owner and must reach their queue through these.
        os.chmod(self.base, 0o755)
        shutil.chown(self.base / "data", "postfix", "postfix")

    def start(self, timeout: float = 30.0) -> None:
        """Create the instance and start it; raise BenchError if it does not come up."""
        require_root("Postfix's master daemon starts as root and drops to the postfix user")
        if port_open(self.port):
            raise BenchError(f"port {self.port} is already in use")
        self.write_config()
        self._postfix("check")
        self._postfix("start")
        wait_port(self.port, timeout)

    def running(self) -> bool:
        """Whether this instance's master daemon runs."""
        return self._postfix("status", check=False).returncode == 0

    def queued(self) -> int:
        """Messages in this instance's queue (not yet delivered or deferred)."""
        total = 0
        for name in QUEUES:
            for _root, _dirs, files in os.walk(self.queue_dir / name):
                total += len(files)
        return total

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the queue is empty; False if it was not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queued() == 0:
                return True
            time.sleep(0.1)
        return self.queued() == 0

    def stop(self, remove: bool = True) -> None:
        """Stop the instance (waiting for its master to exit) and delete its directory."""
        if (self.config_dir / "main.cf").exists() and self.running():
            self._postfix("stop", check=False)
            deadline = time.monotonic() + 20
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.running():
                self._postfix("abort", check=False)
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)

    def maillog_tail(self, lines: int = 20) -> str:
        """The last lines of this instance's log, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join((self.base / "maillog").read_text().splitlines()[-lines:])
        return ""


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Postfix and smtp-sink in the foreground; Ctrl-C ends")
    up.add_argument("--port", type=int, default=2725)
    up.add_argument("--sink-port", type=int, default=2726)
    start = sub.add_parser("start", help="start Postfix in the background under --dir")
    start.add_argument("--dir", type=Path, required=True)
    start.add_argument("--port", type=int, default=2725)
    start.add_argument("--relay-port", type=int, default=2726)
    stop = sub.add_parser("stop", help="stop the instance under --dir and delete the directory")
    stop.add_argument("--dir", type=Path, required=True)
    return parser.parse_args()


def main() -> int:
    """Command-line entry point."""
    args = _args()
    try:
        if args.command == "start":
            LocalPostfix(args.dir.resolve(), args.port, args.relay_port).start()
            print(
                f"postfix listening on {LOCALHOST}:{args.port}, relaying to port {args.relay_port}"
            )
        elif args.command == "stop":
            LocalPostfix(args.dir.resolve(), 0, 0).stop()
        else:
            base = Path(tempfile.mkdtemp(prefix="relay-bench-postfix-"))
            postfix = LocalPostfix(base, args.port, args.sink_port)
            sink = Sink(args.sink_port)
            try:
                postfix.start()
                print(f"postfix on {LOCALHOST}:{args.port} -> smtp-sink on {args.sink_port}")
                print(f"instance in {base}; Ctrl-C stops both")
                while True:
                    time.sleep(5)
                    print(f"queued {postfix.queued()}  received by sink {sink.count}", flush=True)
            except KeyboardInterrupt:
                pass
            finally:
                postfix.stop()
                sink.stop()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
