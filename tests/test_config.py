"""Config: precedence, types, and one clear line per bad setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.config import ConfigError, as_dict, build_config, load_config, parse_assignment
from daemon.core.durations import Duration
from daemon.overrides import apply_runtime


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relayd.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_design() -> None:
    config = load_config(env={})
    assert (config.smtp.host, config.smtp.port, config.smtp.tls_port) == ("127.0.0.1", 2525, 2526)
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert config.database_url == "sqlite:///relay-data/relay.db"
    assert list(config.providers) == ["outbox"]
    assert config.smtp.max_size == 26214400
    assert config.smtp.bare_newline == "reject"
    assert config.smtp.workers == 1  # SMTP in one worker process; 0 keeps it in the daemon
    assert load_config(env={"RELAY_SMTP_WORKERS": "0"}).smtp.workers == 0


def test_precedence_file_env_flag_runtime(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9000\n[queue]\nbatch_size = 10\nmax_retries = 7\n")
    env = {"RELAY_HTTP_PORT": "9001", "RELAY_QUEUE_BATCH_SIZE": "20"}
    config = load_config(
        path, env, flags={"http": {"port": "9002"}}, runtime={"queue": {"batch_size": 30}}
    )
    assert config.http.port == 9002
    assert config.queue.batch_size == 30
    assert config.queue.max_retries == 7
    assert config.source("http.port") == "flag"
    assert config.source("queue.batch_size") == "runtime"
    assert config.source("queue.max_retries") == "file"
    assert config.source("smtp.port") == "default"


def test_admin_token_shorthand_and_lists_from_env() -> None:
    config = load_config(
        env={"RELAY_ADMIN_TOKEN": "s3cret", "RELAY_SMTP_TRUSTED_NETWORKS": "10.0.0.0/8, ::1/128"}
    )
    assert config.auth.admin_token == "s3cret"
    assert config.smtp.trusted_networks == ["10.0.0.0/8", "::1/128"]
    assert as_dict(config)["auth"]["admin_token"] == "********"


def test_provider_tables_and_env_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.up]\ntype = "smtp"\nhost = "mx.example"\nport = 25\ntls = "starttls"\n'
        'username = "relay"\npassword = "pw"\ntimeout = "10s"\n',
    )
    config = load_config(path, {"RELAY_PROVIDERS_UP_PORT": "2525"})
    up = config.providers["up"]
    assert (up.type, up.option("host"), up.option("port"), up.option("tls")) == (
        "smtp",
        "mx.example",
        2525,
        "starttls",
    )
    assert up.option("timeout") == Duration(10.0, "10s")
    assert as_dict(config)["providers"]["up"]["password"] == "********"


@pytest.mark.parametrize(
    ("toml", "env", "key", "fragment"),
    [
        ("[smtp]\nport = 70000\n", {}, "smtp.port", "port number"),
        ('[smtp]\nport = "x"\n', {}, "smtp.port", "integer"),
        ("[smtp]\nbogus = 1\n", {}, "smtp.bogus", "unknown setting"),
        ("[nope]\nx = 1\n", {}, "nope", "unknown setting"),
        ('[queue]\nprocess_interval = "soon"\n', {}, "queue.process_interval", "not a duration"),
        ('[queue]\nlease = "36501d"\n', {}, "queue.lease", "at most 36500d"),
        ("[queue]\nlease = inf\n", {}, "queue.lease", "at most 36500d"),
        ("[queue]\nlease = 10000000000000000000000\n", {}, "queue.lease", "at most 36500d"),
        (
            '[webhooks]\nretry_delays = ["1m", "99999999999d"]\n',
            {},
            "webhooks.retry_delays",
            "36500d",
        ),
        ("[queue]\nbatch_size = 9223372036854775808\n", {}, "queue.batch_size", "must be between"),
        ("", {"RELAY_WEBHOOKS_BATCH_SIZE": "9" * 30}, "webhooks.batch_size", "must be between"),
        ('[smtp]\ntrusted_networks = ["300.1.1.1"]\n', {}, "smtp.trusted_networks", "not an IP"),
        ('[smtp]\nbare_newline = "allow"\n', {}, "smtp.bare_newline", "must be one of"),
        ("[smtp]\nworkers = -1\n", {}, "smtp.workers", "cannot be negative"),
        ('[smtp]\ntls_cert = "/nonexistent.pem"\n', {}, "smtp.tls_cert", "cannot read"),
        ("", {"RELAY_HTTP_PORT": "eighty"}, "http.port", "integer"),
        ('[providers.x]\ntype = "carrier-pigeon"\n', {}, "providers.x.type", "must be one of"),
        ('[providers.x]\ntype = "smtp"\n', {}, "providers.x.host", "needs a host"),
        ('[providers.x]\ntype = "smtp"\nhost = "h"\nfoo = 1\n', {}, "providers.x.foo", "unknown"),
        ('[database]\nurl = "mysql://h/db"\n', {}, "database.url", "SQLite or PostgreSQL"),
        ('[database]\nurl = "relay.db"\n', {}, "database.url", "not a database URL"),
        ('[database]\nurl = "sqlite://"\n', {}, "database.url", "in-memory"),
        ('[database]\nurl = "sqlite:///:memory:"\n', {}, "database.url", "in-memory"),
        ("", {"RELAY_DATABASE_URL": "sqlite+aiosqlite:///r.db"}, "database.url", "sqlite3"),
        # psycopg2 is not installed: without "+psycopg" the daemon could not start.
        ('[database]\nurl = "postgresql://u:pw@h/db"\n', {}, "database.url", "psycopg 3"),
        ("[queue]\nmax_retry = 1\n", {}, "queue.max_retry", "did you mean 'max_retries'"),
        ("[smpt]\nport = 2525\n", {}, "smpt", "did you mean 'smtp'"),
        (
            '[providers.x]\ntype = "smtp"\nhost = "h"\npasword = "p"\n',
            {},
            "providers.x.pasword",
            "did you mean 'password'",
        ),
        # A misspelt variable was ignored: require_auth silently stayed off.
        (
            "",
            {"RELAY_SMTP_REQUIRE_AUHT": "true"},
            "RELAY_SMTP_REQUIRE_AUHT",
            "did you mean 'RELAY_SMTP_REQUIRE_AUTH'",
        ),
        ("", {"RELAY_QUEUE_BOGUS": "1"}, "RELAY_QUEUE_BOGUS", "unknown setting in [queue]"),
        # An empty host bound every interface (SMTP on IPv4 and IPv6, HTTP on IPv4 only).
        ('[smtp]\nhost = ""\n', {}, "smtp.host", "0.0.0.0"),
        ("", {"RELAY_HTTP_HOST": ""}, "http.host", "0.0.0.0"),
        ('data_dir = ""\n', {}, "data_dir", "must not be empty"),
        # int("²") raised with Python's own wording; int("٣") was taken as 3.
        ("", {"RELAY_QUEUE_BATCH_SIZE": "²"}, "queue.batch_size", "expected an integer"),
        ("", {"RELAY_QUEUE_BATCH_SIZE": "٣"}, "queue.batch_size", "expected an integer"),
        ("providers = 1\n", {}, "providers", "table of provider tables"),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml), env)
    assert info.value.key == key
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", {})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[smtp\n"), {})


def test_set_assignment() -> None:
    assert parse_assignment("queue.batch_size=5") == {"queue": {"batch_size": "5"}}
    with pytest.raises(ConfigError):
        parse_assignment("queue.batch_size")
    config = build_config([("flag", parse_assignment("queue.batch_size=5"))])
    assert config.queue.batch_size == 5


def test_as_dict_masks_every_secret(tmp_path: Path) -> None:
    secrets = {
        "jwt": "jwt-secret-0123456789abcdef0123456789abcdef",
        "tracking": "tracking-secret-value",
        "mandrill": "mandrill-key-value",
        "smtp": "smtp-password-value",
        "mailgun": "mailgun-api-key-value",
        "sendgrid": "sendgrid-api-key-value",
        "gmail": '{"private_key": "gmail-private-key-value"}',
    }
    path = write(
        tmp_path,
        f'[auth]\nadmin_token = "admin-token-value"\njwt_secret = "{secrets["jwt"]}"\n'
        f'[tracking]\nsecret = "{secrets["tracking"]}"\n'
        f'[webhooks]\nmandrill_key = "{secrets["mandrill"]}"\n'
        f'[providers.up]\ntype = "smtp"\nhost = "mx.example"\nusername = "relay"\n'
        f'password = "{secrets["smtp"]}"\n'
        f'[providers.mg]\ntype = "mailgun"\ndomain = "mg.example"\n'
        f'api_key = "{secrets["mailgun"]}"\n'
        f'[providers.sg]\ntype = "sendgrid"\napi_key = "{secrets["sendgrid"]}"\n'
        f"[providers.gm]\ntype = \"gmail\"\nservice_account_json = '{secrets['gmail']}'\n",
    )
    shown = json.dumps(as_dict(load_config(path, {})))
    assert "admin-token-value" not in shown
    assert [name for name, value in secrets.items() if value in shown] == []
    assert "gmail-private-key-value" not in shown


@pytest.mark.parametrize(
    ("section", "key"),
    [("auth", "admin_token_file"), ("tracking", "secret_file"), ("webhooks", "mandrill_key_file")],
)
def test_empty_secret_files_are_refused(tmp_path: Path, section: str, key: str) -> None:
    empty = tmp_path / "secret"
    empty.write_text("\n")
    with pytest.raises(ConfigError) as info:
        build_config([("file", {section: {key: str(empty)}})])
    assert info.value.key == f"{section}.{key}"
    assert "is empty" in str(info.value)
    empty.write_text("s3cret-value\n")
    build_config([("file", {section: {key: str(empty)}})])


@pytest.mark.parametrize(
    "url", ["", "sqlite:////var/lib/relay/relay.db", "postgresql+psycopg://u:pw@db.example/relay"]
)
def test_database_urls_relayd_can_use(tmp_path: Path, url: str) -> None:
    config = load_config(write(tmp_path, f'[database]\nurl = "{url}"\n'), {})
    assert config.database.url == url


def test_a_bad_database_url_does_not_echo_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[database]\nurl = "postgresql://u:s3cret@h/db"\n'), {})
    assert "s3cret" not in str(info.value)


def test_other_relay_variables_are_left_alone(tmp_path: Path) -> None:
    env = {"RELAY_URL": "http://x", "RELAY_TOKEN": "t", "RELAY_LOOP": "asyncio", "RELAY_FOO": "1"}
    assert load_config(write(tmp_path, ""), env).queue.batch_size == 50


def test_config_files_that_are_not_toml_text(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[smtp]\nhostname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(line 2\)"):
        load_config(path, {})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, {})


def test_set_needs_a_key_on_both_sides_of_the_dot() -> None:
    for text in ("=1", ".=1", "queue.=1", ".batch_size=1"):
        with pytest.raises(ConfigError, match=r"expected section\.key=value"):
            parse_assignment(text)


def test_systemd_state_directory_is_the_default_data_dir_below_the_file(tmp_path: Path) -> None:
    """relayd.service sets no RELAY_DATA_DIR (it would beat the file); StateDirectory= does."""
    state = {"STATE_DIRECTORY": "/var/lib/relay:/var/lib/other"}
    config = load_config(env=state)
    assert config.data_dir == "/var/lib/relay"
    assert config.database_url == "sqlite:////var/lib/relay/relay.db"
    assert config.source("data_dir") == "env"
    path = write(tmp_path, 'data_dir = "/srv/relay"\n')
    config = load_config(path, state)
    assert (config.data_dir, config.source("data_dir")) == ("/srv/relay", "file")
    assert load_config(path, {**state, "RELAY_DATA_DIR": "/x"}).data_dir == "/x"
    assert load_config(path, {"STATE_DIRECTORY": ""}).data_dir == "/srv/relay"
    assert load_config(env={"STATE_DIRECTORY": ""}).data_dir == "./relay-data"
    # PUT /api/admin/config rebuilds the Config from its sources: the default stays.
    assert apply_runtime(load_config(env=state), {}).data_dir == "/var/lib/relay"
