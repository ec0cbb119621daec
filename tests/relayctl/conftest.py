"""Fixtures for relayctl: a clean environment and a CLI runner pointed at a running relayd."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from relayctl.main import app


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No RELAY_* variables from the developer's shell, and a cwd with no ./relay-data."""
    for name in (
        "RELAY_URL",
        "RELAY_TOKEN",
        "RELAY_DATA_DIR",
        "RELAY_ADMIN_TOKEN",
        "RELAY_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    # Profiles come from a file of the test's own, never the developer's.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Cli:
    """Runs relayctl in a worker thread, so the daemon's event loop keeps serving meanwhile."""

    url: str
    token: str | None

    async def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        prefix = ["--url", self.url]
        if self.token is not None:
            prefix += ["--token", self.token]
        return await asyncio.to_thread(run, [*prefix, *args], env)


def run(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    """relayctl with ``args``, synchronously; exceptions surface as test errors."""
    return CliRunner().invoke(
        app, args, input=stdin, env=env, prog_name="relayctl", catch_exceptions=False
    )


@pytest.fixture
def cli(relay: Any) -> Cli:
    """relayctl pointed at the running ``relay`` with its admin token."""
    return Cli(relay.base_url, relay.admin_token)
