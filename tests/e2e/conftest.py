"""Helpers for tests that run ``relayd``/``relayctl`` as subprocesses, as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` loopback ports free a moment ago, all different: each is held until all
    are picked (one by one, the kernel may hand out a just-released port again)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(
    port: int, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Until ``port`` takes connections (relayd starting on a loaded machine takes a while)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"relayd exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


class Daemon:
    """A relayd subprocess with its own data dir, ports and config file."""

    def __init__(self, workdir: Path, extra_toml: str = "") -> None:
        self.workdir = workdir
        self.extra_toml = extra_toml
        self.config_path = workdir / "relayd.toml"
        self._pick_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "relayd.log"

    def _pick_ports(self) -> None:
        self.smtp_port, self.tls_port, self.http_port = free_ports(3)
        self.config_path.write_text(
            f'data_dir = "{self.workdir / "data"}"\n'
            f"[smtp]\nport = {self.smtp_port}\ntls_port = {self.tls_port}\n"
            f'hostname = "relay.test"\n'
            f"[http]\nport = {self.http_port}\n"
            '[queue]\nprocess_interval = "1s"\nretry_base = "1s"\nretry_max = "2s"\n'
            'lease = "5s"\nshutdown_grace = "5s"\n' + self.extra_toml
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def token(self) -> str:
        return (self.workdir / "data" / "admin.token").read_text().strip()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env["RELAY_URL"] = self.url
        env["RELAY_DATA_DIR"] = str(self.workdir / "data")
        return env

    def start(self) -> None:
        """Start relayd; on its first start, new ports if one was taken since it was picked."""
        first = self.proc is None
        for attempt in range(3):
            logged = self.log.stat().st_size if self.log.exists() else 0
            try:
                self._start()
                return
            except RuntimeError:
                with self.log.open("rb") as log:
                    log.seek(logged)
                    taken = b"Address already in use" in log.read()
                if not (first and taken and attempt < 2):
                    raise
            self._pick_ports()  # another process bound a port between pick and start

    def _start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "relayd"), "--config", str(self.config_path)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in self.env().items() if k != "RELAY_URL"},
            )
        wait_for_port(self.http_port, proc=self.proc)
        wait_for_port(self.smtp_port, proc=self.proc)
        try:
            httpx.get(f"{self.url}/health", timeout=30).raise_for_status()
        except httpx.HTTPError as exc:  # say what relayd logged, not only what the client saw
            tail = self.log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(f"/health failed: {exc}\nrelayd.log:\n" + "\n".join(tail)) from exc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def relayctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "relayctl"), *args],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[type[Daemon]]:
    started: list[Daemon] = []

    class Tracked(Daemon):
        def start(self) -> None:
            started.append(self)
            super().start()

    yield Tracked
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


def relayd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``relayd`` run once to completion (check-config, migrate, a refusal)."""
    return subprocess.run(
        [str(BIN / "relayd"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
    )
