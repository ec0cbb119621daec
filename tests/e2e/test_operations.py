"""relayd and relayctl as an operator runs them: the nightly cron cleanup and systemd's
start/stop protocol (Type=notify: READY=1, then STOPPING=1 on SIGTERM, exit 0)."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def own_profiles(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """relayctl must not read the developer's ~/.config/relayctl."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def wait_sent(daemon: Daemon, message_id: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        shown = daemon.relayctl("--json", "queue", "show", message_id)
        if shown.returncode == 0 and json.loads(shown.stdout)["status"] == "sent":
            return
        time.sleep(0.1)
    raise AssertionError(f"{message_id} not sent")


def test_cron_cleanup_is_silent_on_success_and_one_line_on_failure(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(tmp_path)
    daemon.start()
    sent = daemon.relayctl(
        "send", "--from", "a@example.com", "--to", "b@example.org", "--text", "x"
    )
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()
    wait_sent(daemon, message_id)
    # Age the message as 100 days of operation would (the database is the daemon's own).
    then = (datetime.now(UTC) - timedelta(days=100)).replace(tzinfo=None).isoformat(" ")
    with sqlite3.connect(tmp_path / "data" / "relay.db", timeout=30) as db:
        db.execute("UPDATE messages SET queued_at = ?, processed_at = ?", (then, then))

    cron = daemon.relayctl("cleanup", "--older-than", "90d")
    assert (cron.returncode, cron.stdout, cron.stderr) == (0, "", "")
    assert daemon.relayctl("queue", "show", message_id).returncode == 3

    assert daemon.terminate() == 0
    down = daemon.relayctl("cleanup", "--older-than", "90d")
    assert down.returncode == 5
    assert down.stdout == ""
    assert len(down.stderr.splitlines()) == 1
    assert f"cannot reach relayd at {daemon.url}" in down.stderr


def test_systemd_notify_ready_and_stopping(
    daemon_factory: type[Daemon], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        daemon = daemon_factory(tmp_path)
        daemon.start()
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready.splitlines()
        assert daemon.relayctl("version").returncode == 0
        assert daemon.terminate() == 0
        stopping = notify.recv(4096).decode()
        assert stopping.splitlines() == ["STOPPING=1"]
    assert "Traceback" not in daemon.log.read_text()
