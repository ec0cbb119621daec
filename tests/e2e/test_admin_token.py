"""relayd never runs with an empty admin token, and keeps the one it generates private."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon, relayd

pytestmark = pytest.mark.e2e


def _one_line_exit_2(tmp_path: Path, *args: str) -> str:
    """relayd check-config and relayd (run) both refuse with exit 2 and one line."""
    lines = []
    for command in (["check-config"], []):
        result = relayd(*command, "--data-dir", "data", *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        stderr = result.stderr.strip().splitlines()
        assert len(stderr) == 1, result.stderr
        assert stderr[0].startswith("relayd: configuration error: ")
        lines.append(stderr[0])
    assert lines[0] == lines[1]
    return lines[0]


def test_an_unusable_admin_token_file_is_refused(tmp_path: Path) -> None:
    """Empty, blank, not text, a directory, missing: never an empty admin token."""
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "blank").write_bytes(b" \n\t\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe-not-text")
    (tmp_path / "folder").mkdir()
    for name, problem in [
        ("empty", "file 'empty' is empty"),
        ("blank", "file 'blank' is empty"),
        ("binary", "file 'binary' is not UTF-8 text (byte 0)"),
        ("folder", "'folder' is a directory, not a file"),
        ("nowhere/token", "cannot read file 'nowhere/token'"),
    ]:
        line = _one_line_exit_2(tmp_path, "--set", f"auth.admin_token_file={name}")
        assert line.endswith(f"auth.admin_token_file: {problem}")
    assert not (tmp_path / "data" / "admin.token").exists()


@pytest.mark.parametrize("blank", [" ", "   \t  "])
def test_a_blank_admin_token_is_refused(tmp_path: Path, blank: str) -> None:
    (tmp_path / "relayd.toml").write_text(f'[auth]\nadmin_token = "{blank}"\n')
    for args in (["--config", "relayd.toml"], ["--set", f"auth.admin_token={blank}"]):
        line = _one_line_exit_2(tmp_path, *args)
        assert "auth.admin_token: is blank" in line
    assert not (tmp_path / "data" / "admin.token").exists()


def test_a_generated_token_that_is_not_text_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin.token").write_bytes(b"\x00\xff\x01")
    line = _one_line_exit_2(tmp_path)
    assert "data_dir: 'data/admin.token' is not an admin token (not UTF-8 text" in line
    assert (tmp_path / "data" / "admin.token").read_bytes() == b"\x00\xff\x01"  # left as it was


def test_a_short_admin_token_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("hunter2\n")
    for args in (["--set", "auth.admin_token=hunter2"], ["--set", "auth.admin_token_file=token"]):
        result = relayd("check-config", "--data-dir", "data", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "the admin token is only 7 characters long; use at least 16" in result.stderr
        assert "hunter2" not in result.stderr
    result = relayd(
        "check-config", "--data-dir", "data", "--set", "auth.admin_token=" + "x" * 16, cwd=tmp_path
    )
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr


def test_an_empty_or_loose_generated_token_is_made_anew_and_private(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    """A truncated data_dir/admin.token (0644, as a restored backup may have it) gets a new
    token, 0600; one that is only readable by others is kept and made 0600."""
    path = tmp_path / "data" / "admin.token"
    path.parent.mkdir(mode=0o700)
    path.write_text("")
    path.chmod(0o644)
    daemon = daemon_factory(tmp_path)
    daemon.start()
    token = daemon.token
    assert token.startswith("rly_admin_") and len(token) > 40
    assert path.stat().st_mode & 0o777 == 0o600
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{daemon.url}/api/messages", headers=headers, timeout=10).status_code == 200
    listed = daemon.relayctl("queue", "ls")  # relayctl reads the same file
    assert listed.returncode == 0, listed.stderr
    assert daemon.terminate() == 0
    log = daemon.log.read_text()
    assert "was empty" in log and "generated a new admin token" in log
    assert "made it 0600" in log
    assert token not in log

    path.chmod(0o644)
    daemon.start()
    assert daemon.token == token
    assert path.stat().st_mode & 0o777 == 0o600
    assert daemon.terminate() == 0
