"""Input relayctl can judge itself: one line on stderr and exit 2, never a traceback, and
no request sent (the URL is a closed port, so a request would exit 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayctl.commands.config import parse_value
from tests.relayctl.conftest import run


def usage_error(closed_port: int, *args: str) -> str:
    """Run relayctl against a closed port; assert a one-line usage error and return it."""
    result = run(["--url", f"http://127.0.0.1:{closed_port}", "--token", "t", *args])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("flags", "hint"),
    [
        (["--token", "tök"], "(check --token or RELAY_TOKEN)"),
        (["--token", "a\nb"], "(check --token or RELAY_TOKEN)"),
        (["--workspace", "wö"], "(check --workspace)"),
    ],
)
def test_token_or_workspace_a_header_cannot_carry(
    closed_port: int, flags: list[str], hint: str
) -> None:
    result = run(["--url", f"http://127.0.0.1:{closed_port}", *flags, "queue", "ls"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("relayctl: invalid ")
    assert result.stderr.endswith(f"printable ASCII characters may be used {hint}\n")
    assert "tök" not in result.stderr  # a token is not echoed, even a malformed one


def test_recipient_csv_row_longer_than_the_header(closed_port: int, tmp_path: Path) -> None:
    rows = tmp_path / "ragged.csv"
    rows.write_text("email,first_name\nann@example.org,Ann,extra\n")
    stderr = usage_error(closed_port, "recipients", "import", str(rows))
    assert stderr == f"relayctl: {rows} line 2 has more fields than the header\n"


def test_service_account_file_that_is_not_text(closed_port: int, tmp_path: Path) -> None:
    key = tmp_path / "sa.json"
    key.write_bytes(b"\xff\xfe\x00binary")
    stderr = usage_error(
        closed_port, "providers", "validate", "gmail", "--service-account", str(key)
    )
    assert stderr.startswith(f"relayctl: cannot read {key}: ")
    assert len(stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["cleanup", "--older-than", "9" * 400 + "d"], "is more than 36500 days"),
        (["cleanup", "--older-than", "36501d"], "is more than 36500 days"),
        (["maintenance", "on", "--minutes", "1e400"], "less than or equal to 525600"),
        (["queue", "ls", "--watch", "--interval", "1e308"], "less than or equal to 86400"),
        (["queue", "ls", "--limit", "100000"], "less than or equal to 1000"),
        (["recipients", "ls", "--limit", "1001"], "less than or equal to 1000"),
        (["webhooks", "ls", "--limit", "100000"], "less than or equal to 1000"),
        (["queue", "ls", "--since", "yesterday"], "'yesterday' is not an ISO 8601 date or time"),
        (["queue", "ls", "--until", "2026-13-01"], "'2026-13-01' is not an ISO 8601 date"),
    ],
)
def test_numbers_past_what_the_daemon_takes(
    closed_port: int, args: list[str], expected: str
) -> None:
    assert expected in usage_error(closed_port, *args)


def test_profile_field_that_is_not_a_string(closed_port: int, tmp_path: Path) -> None:
    path = tmp_path / "xdg" / "relayctl" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('current = "prod"\n[profiles.prod]\nurl = 8080\n')
    result = run(["queue", "ls"])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"relayctl: {path}: profiles.prod.url must be a string\n"


@pytest.mark.parametrize("text", ["inf", "nan", "1e400", "[1.0, inf]", "1979-05-27T07:32:00Z"])
def test_config_values_json_cannot_carry_go_as_text(text: str) -> None:
    assert parse_value(text) == text


def test_config_values_json_can_carry_keep_their_type() -> None:
    assert [parse_value(t) for t in ("100", "true", '"15s"', '["a"]', "null")] == [
        100,
        True,
        "15s",
        ["a"],
        None,
    ]


@pytest.mark.parametrize("url", ["notaurl", "ftp://relay.example", "http://", "http://h:99999"])
def test_profile_with_a_url_that_is_not_one_is_not_saved(tmp_path: Path, url: str) -> None:
    result = run(["profile", "add", "prod", "--url", url])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"relayctl: --url: invalid relayd URL {url!r}: expected http(s)://host:port\n"
    )
    assert not (tmp_path / "xdg" / "relayctl" / "config.toml").exists()
