"""`relayctl top` in a real terminal (tmux): it draws the live screen and quits on q."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, Daemon

pytestmark = pytest.mark.e2e

TMUX = shutil.which("tmux")


@pytest.fixture
def tmux() -> str:
    if TMUX is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is required in CI (apt-get install -y tmux)")
        pytest.skip("tmux is not installed (apt-get install tmux) and CI is unset")
    return TMUX


def test_top_renders_and_quits_on_q(
    tmux: str, daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(tmp_path)
    daemon.start()
    socket_name = f"relay-test-{uuid.uuid4().hex[:8]}"
    rc_file = tmp_path / "top.rc"
    env = {
        "RELAY_URL": daemon.url,
        "RELAY_TOKEN": daemon.token,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "TERM": "xterm-256color",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = (
        f"env -i {exports} {shlex.quote(str(BIN / 'relayctl'))} top --interval 1; "
        f"echo $? > {shlex.quote(str(rc_file))}"
    )

    def tmux_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tmux, "-L", socket_name, *args], capture_output=True, text=True, timeout=10
        )

    started = tmux_run("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", command)
    assert started.returncode == 0, started.stderr
    # The first screen (with the first event's time, ...Z) and all it must show; a capture
    # may catch a screen half drawn, so wait for the whole of it, not its first lines.
    wanted: tuple[str, ...] = ("press q to quit", "Providers", "Z", "relayctl top", daemon.url)
    wanted += ("Realtime", "QUEUE DEPTH", "outbox")  # outbox: a provider row from /api/stats
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            screen = tmux_run("capture-pane", "-p", "-t", "top").stdout
            if all(text in screen for text in wanted):
                break
            time.sleep(0.2)
        assert "relayctl top" in screen and daemon.url in screen, screen
        assert "Realtime" in screen and "QUEUE DEPTH" in screen, screen
        assert "outbox" in screen, screen

        tmux_run("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 20
        while not rc_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rc_file.exists(), tmux_run("capture-pane", "-p", "-t", "top").stdout
        assert rc_file.read_text().strip() == "0"
    finally:
        tmux_run("kill-server")
    assert daemon.terminate() == 0
