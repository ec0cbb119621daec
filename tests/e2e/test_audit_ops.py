"""relayd's operational surface as an operator meets it: bad files and directories,
schema versions, signals during start-up and SIGHUP, each failure one line."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.tls import generate_self_signed
from tests.e2e.conftest import BIN, Daemon, relayd
from tests.test_tls import write_encrypted_pair

pytestmark = pytest.mark.e2e


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'[smtp]\nhostname = "caf\xe9"\n', "not UTF-8 text (line 2)"),
        (b"providers = 1\n", "providers: must be a table"),
    ],
)
def test_unusable_config_files_are_one_line_and_exit_2(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    (tmp_path / "bad.toml").write_bytes(content)
    for command in ("check-config", "migrate", "run"):
        result = relayd(command, "--config", "bad.toml", cwd=tmp_path)
        assert result.returncode == 2
        assert fragment in one_line(result)


def test_a_directory_as_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    result = relayd("check-config", "--config", "conf.d", cwd=tmp_path)
    assert result.returncode == 2
    assert "--config: 'conf.d' is a directory" in one_line(result)


def test_data_dir_that_is_a_file_names_data_dir(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    (tmp_path / "c.toml").write_text(f'data_dir = "{tmp_path / "afile"}"\n')
    # migrate never checked it (a traceback); run with a configured certificate said
    # "cannot start: [Errno 17] File exists", exit 1.
    for command in ("migrate", "check-config", "run"):
        result = relayd(command, "--config", "c.toml", cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "data_dir:" in one_line(result) and "not a directory" in result.stderr


def test_sqlite_file_in_a_directory_that_cannot_exist(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[database]\nurl = "sqlite:////proc/no-such/relay.db"\n')
    result = relayd("migrate", "--config", "c.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result).startswith("relayd: configuration error: database.url:")


def test_migrate_refuses_a_database_from_a_newer_relayd(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(f'data_dir = "{tmp_path / "d"}"\n')
    assert relayd("migrate", "--config", "c.toml", cwd=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "d" / "relay.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'f00dfeed' WHERE rowid = 1")
    for command in ("migrate", "run"):
        result = relayd(command, "--config", "c.toml", cwd=tmp_path)
        assert result.returncode == 1
        line = one_line(result)
        assert "f00dfeed" in line and "newer relayd" in line


def test_encrypted_tls_key_is_refused_without_a_prompt(tmp_path: Path) -> None:
    write_encrypted_pair(tmp_path, datetime.now(UTC))
    (tmp_path / "c.toml").write_text('[smtp]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n')
    result = relayd("check-config", "--config", "c.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "pass phrase" not in result.stderr + result.stdout
    assert "smtp.tls_key: the private key is encrypted" in one_line(result)


def test_expired_certificate_is_a_warning_not_a_refusal(tmp_path: Path) -> None:
    generate_self_signed(
        tmp_path / "c.pem",
        tmp_path / "k.pem",
        "relay.test",
        datetime.now(UTC) - timedelta(days=4000),
    )
    (tmp_path / "c.toml").write_text('[smtp]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n')
    result = relayd("check-config", "--config", "c.toml", cwd=tmp_path)
    assert result.returncode == 0
    assert "WARNING relayd: smtp.tls_cert: certificate 'c.pem' expired on" in one_line(result)


def test_unknown_host_names_the_key(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory(tmp_path)
    text = daemon.config_path.read_text().replace("[smtp]\n", '[smtp]\nhost = "no-such.invalid"\n')
    daemon.config_path.write_text(text)
    result = relayd("--config", str(daemon.config_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "smtp.host: cannot resolve 'no-such.invalid'" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_version_flag(tmp_path: Path) -> None:
    result = relayd("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("relayd ")


def _caught(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def test_sigterm_while_loading_exits_zero(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    """SIGTERM from the moment relayd takes signals, long before it serves: exit 0.

    Before, the default action killed it (143) until the event loop was up.
    """
    daemon = daemon_factory(tmp_path)
    with daemon.log.open("ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "relayd"), "--config", str(daemon.config_path)],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not _caught(proc.pid, signal.SIGTERM):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log_text = daemon.log.read_text()
    assert "Traceback" not in log_text
    # It stopped while loading: nothing was migrated or served.
    assert "database migrated" not in log_text


def test_sighup_refuses_a_broken_pair_and_names_restart_keys(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(tmp_path)
    daemon.start()
    assert daemon.proc is not None
    good = daemon.config_path.read_text()
    generate_self_signed(tmp_path / "a.crt", tmp_path / "a.key", "relay.test", datetime.now(UTC))
    generate_self_signed(tmp_path / "b.crt", tmp_path / "b.key", "relay.test", datetime.now(UTC))

    def hup(text: str) -> str:
        daemon.config_path.write_text(text)
        size = daemon.log.stat().st_size
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = daemon.log.read_bytes()[size:].decode()
            if "reload" in new:
                return new
            time.sleep(0.05)
        raise AssertionError("no reload line")

    def tls(cert: str, key: str) -> str:
        return good.replace("[smtp]\n", f'[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')

    # A mismatched pair would have been accepted and stopped the next start.
    refused = hup(tls("a.crt", "b.key"))
    assert "reload refused, keeping the running configuration: smtp.tls_cert" in refused
    # A provider without its key was taken, and the next start refused it.
    keyless = hup(good + '[providers.mg]\ntype = "mailgun"\ndomain = "mg.example.com"\n')
    assert "reload refused, keeping the running configuration: providers.mg.api_key" in keyless
    # Another pair is loaded by the reload itself (tests/e2e/test_tls_reload.py): no restart.
    changed = hup(tls(str(tmp_path / "a.crt"), str(tmp_path / "a.key")))
    assert "changed smtp.tls_cert, smtp.tls_key; serving the new TLS certificate" in changed
    assert "restart needed" not in changed
    renamed = hup(good.replace('hostname = "relay.test"', 'hostname = "other.test"'))
    assert (
        "changed smtp.hostname, smtp.tls_cert, smtp.tls_key; restart needed for smtp.hostname;"
        " serving the new TLS certificate" in renamed
    )
    assert len(renamed.strip().splitlines()) == 1
    assert daemon.terminate() == 0
