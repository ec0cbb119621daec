"""relayd as a user runs it: check-config, migrate, bad configs, start and SIGTERM."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.store.migrate import head_revision
from tests.e2e.conftest import Daemon, relayd

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[smtp]\nport = 99999\n", "smtp.port"),
        ("[smtp]\nbogus = true\n", "smtp.bogus: unknown setting"),
        ('[queue]\nbatch_size = "many"\n', "queue.batch_size: expected an integer"),
        ('[smtp]\ntls_cert = "/etc/shadow-nope"\ntls_key = "/etc/shadow-nope"\n', "smtp.tls_cert"),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, toml: str, fragment: str) -> None:
    (tmp_path / "bad.toml").write_text(toml)
    for command in (["check-config"], []):
        result = relayd(*command, "--config", "bad.toml", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert fragment in lines[0]
        assert "Traceback" not in result.stderr


def test_unreadable_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    (tmp_path / "c.toml").write_text('[smtp]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n')
    result = relayd("check-config", "--config", "c.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "smtp.tls_cert" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_check_config_and_migrate_succeed(tmp_path: Path) -> None:
    (tmp_path / "ok.toml").write_text(f'data_dir = "{tmp_path / "d"}"\n')
    result = relayd("check-config", "--config", "ok.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = relayd("migrate", "--config", "ok.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d" / "relay.db").exists()
    again = relayd("migrate", "--config", "ok.toml", cwd=tmp_path)
    assert again.returncode == 0 and f"was {head_revision()}" in again.stdout


def test_start_serves_and_sigterm_exits_zero(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory(tmp_path)
    daemon.start()
    token_file = tmp_path / "data" / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert daemon.terminate() == 0
    log = daemon.log.read_text()
    assert "Traceback" not in log
    assert daemon.token not in log
