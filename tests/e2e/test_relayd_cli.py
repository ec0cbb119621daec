"""relayd as a user runs it: check-config, migrate, bad configs, start and SIGTERM."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.store.migrate import head_revision
from tests.e2e.conftest import Daemon, relayd
from tests.providers.conftest import make_service_account

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
    # What relayd creates holds mail and secrets: its user's alone, whatever the umask.
    for created in (tmp_path / "d", *(tmp_path / "d").iterdir()):
        assert created.stat().st_mode & 0o077 == 0, f"{created} is readable by others"


def test_secrets_in_start_up_errors_are_not_echoed(tmp_path: Path) -> None:
    """A wrongly typed secret, or a password in the database URL's query, stays unsaid."""
    (tmp_path / "typed.toml").write_text("[auth]\nadmin_token = 912345678\n")
    result = relayd("check-config", "--config", "typed.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "auth.admin_token: expected a string" in result.stderr
    assert "912345678" not in result.stderr
    url = "postgresql+psycopg://relay@127.0.0.1:9/relay?password=s3cr3t-pw&connect_timeout=2"
    (tmp_path / "db.toml").write_text(f'data_dir = "d"\n[database]\nurl = "{url}"\n')
    result = relayd("migrate", "--config", "db.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert "migration failed: database postgresql+psycopg://relay@127.0.0.1:9/" in result.stderr
    assert "s3cr3t-pw" not in result.stderr and "Traceback" not in result.stderr


def test_debug_logging_keeps_request_urls_out(tmp_path: Path) -> None:
    """httpx logs every request's URL (a webhook's ?token=) at INFO: capped at WARNING."""
    code = (
        "import logging; from daemon.cli import setup_logging; setup_logging('debug');"
        "print([logging.getLogger(n).getEffectiveLevel() for n in ('httpx', 'httpcore')])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == f"[{logging.WARNING}, {logging.WARNING}]"


def test_start_serves_and_sigterm_exits_zero(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory(tmp_path)
    daemon.start()
    token_file = tmp_path / "data" / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert daemon.terminate() == 0
    log = daemon.log.read_text()
    assert "Traceback" not in log
    assert daemon.token not in log


PORTS = "[smtp]\nport = 0\ntls_port = 0\n[http]\nport = 0\n"


@pytest.mark.parametrize(
    ("provider", "line"),
    [
        (
            'type = "mailgun"\ndomain = "mg.example.com"\n',
            "providers.p.api_key: a mailgun provider needs api_key or api_key_file",
        ),
        (
            'type = "mailgun"\napi_key = "k"\n',
            "providers.p.domain: a mailgun provider needs domain",
        ),
        ('type = "sendgrid"\n', "providers.p.api_key: a sendgrid provider needs api_key or"),
        (
            'type = "sendgrid"\napi_key_file = "empty.key"\n',
            "providers.p.api_key_file: file 'empty.key' is empty",
        ),
        (
            'type = "gmail"\n',
            "providers.p.service_account_file: a gmail provider needs service_account_file or",
        ),
        ("type = \"gmail\"\nservice_account_json = '{}'\n", "providers.p.service_account: "),
        (
            'type = "smtp"\nhost = "mx.example"\nusername = "relay"\n',
            "providers.p.password: an smtp provider with a username needs password or",
        ),
        (
            'type = "smtp"\nhost = "mx.example"\npassword_file = "pw"\n',
            "providers.p.username: an smtp provider with a password needs a username",
        ),
        # Disabled, yet built at start and switchable on at runtime: checked all the same.
        ('type = "sendgrid"\nenabled = false\n', "providers.p.api_key: a sendgrid provider"),
    ],
    ids=[
        "mailgun-no-key",
        "mailgun-no-domain",
        "sendgrid-no-key",
        "sendgrid-empty-key-file",
        "gmail-no-account",
        "gmail-bad-account",
        "smtp-no-password",
        "smtp-no-username",
        "disabled-sendgrid-no-key",
    ],
)
def test_provider_without_its_credentials_is_refused(
    tmp_path: Path, provider: str, line: str
) -> None:
    (tmp_path / "empty.key").write_text("\n")
    (tmp_path / "pw").write_text("s3cret\n")
    toml = f'data_dir = "{tmp_path / "d"}"\n{PORTS}[providers.p]\n{provider}'
    (tmp_path / "c.toml").write_text(toml)
    for command in (["check-config"], []):
        result = relayd(*command, "--config", "c.toml", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"relayd: configuration error: {line}")
    # Refused before anything was done (it used to migrate the database first).
    assert not (tmp_path / "d" / "relay.db").exists()


def test_complete_providers_and_the_example_pass_check_config(tmp_path: Path) -> None:
    account = make_service_account()
    (tmp_path / "sa.json").write_text(account.text)
    (tmp_path / "mg.key").write_text("key-123\n")
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "c.toml").write_text(
        f'data_dir = "{tmp_path / "d"}"\n'
        '[providers.mg]\ntype = "mailgun"\napi_key_file = "mg.key"\ndomain = "mg.example.com"\n'
        '[providers.sg]\ntype = "sendgrid"\napi_key = "SG.x"\nenabled = false\n'
        '[providers.gm]\ntype = "gmail"\nservice_account_file = "sa.json"\n'
        '[providers.up]\ntype = "smtp"\nhost = "mx.example"\nusername = "u"\npassword_file = "pw"\n'
        '[providers.open]\ntype = "smtp"\nhost = "mx.example"\n'
    )
    result = relayd("check-config", "--config", "c.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    result = relayd(
        "check-config", "--config", str(example), "--data-dir", str(tmp_path / "e"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
