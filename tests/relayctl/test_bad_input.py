"""Input relayctl can judge itself: one line on stderr and exit 2, never a traceback, and
no request sent (the URL is a closed port, so a request would exit 5)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from relayctl.commands.config import parse_value
from tests.relayctl.conftest import Cli, run


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


def test_admin_token_file_that_is_not_text(closed_port: int, clean_env: Path) -> None:
    token_file = clean_env / "relay-data" / "admin.token"
    token_file.parent.mkdir()
    token_file.write_bytes(b"\xff\xfe\x00rly")
    result = run(["--url", f"http://127.0.0.1:{closed_port}", "queue", "ls"])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"relayctl: cannot read {token_file}: not UTF-8 text (byte 0) "
        "(set --token or RELAY_TOKEN, or remove the file)\n"
    )


@pytest.mark.parametrize("where", ["flag", "env"])
def test_password_in_the_url_is_not_echoed(closed_port: int, where: str) -> None:
    url = f"http://ops:s3cret@127.0.0.1:{closed_port}"
    if where == "flag":
        result = run(["--url", url, "--token", "t", "queue", "ls"])
    else:
        result = run(["--token", "t", "queue", "ls"], env={"RELAY_URL": url})
    assert result.exit_code == 5
    assert result.stderr == (
        f"relayctl: cannot reach relayd at http://ops:***@127.0.0.1:{closed_port}: "
        "connection refused (is relayd running? set --url or RELAY_URL)\n"
    )
    malformed = run(["--url", "http://ops:s3cret@relay:99999", "queue", "ls"])
    assert malformed.exit_code == 2
    assert "s3cret" not in malformed.stderr
    assert "'http://ops:***@relay:99999'" in malformed.stderr
    refused = run(["profile", "add", "prod", "--url", "ftp://ops:s3cret@relay"])
    assert refused.exit_code == 2 and "s3cret" not in refused.stderr


async def test_input_relayd_refuses_as_invalid_is_exit_2(cli: Cli) -> None:
    """relayd's validation codes are the user's input, like what relayctl judges itself."""
    bad_from = await cli("send", "--from", "not-an-address", "--to", "b@example.org", "--text", "x")
    assert bad_from.exit_code == 2, bad_from.output
    assert bad_from.stderr.startswith("relayctl: send failed: from:")
    assert bad_from.stderr.endswith("(INVALID_EMAIL_FORMAT)\n")
    bad_filter = await cli("queue", "retry", "--status", "processing")
    assert bad_filter.exit_code == 2
    assert bad_filter.stderr.endswith("(INVALID_REQUEST)\n")
    bad_setting = await cli("config", "set", "queue.batch_size", "0")
    assert bad_setting.exit_code == 2
    assert bad_setting.stderr.endswith("(INVALID_REQUEST)\n")
    # The Maylng routes ({"error": ...}): a 400 is bad input too, a 404 a missing resource.
    created = await cli("--json", "accounts", "create")
    account = json.loads(created.stdout)["id"]
    bad_time = await cli(
        "addresses", "create", "--account", account, "--expires-at", "soon"
    )  # fmt: skip
    assert bad_time.exit_code == 2, bad_time.output
    assert bad_time.stderr == (
        "relayctl: create address failed: expires_at must be an ISO 8601 date-time, "
        "got 'soon' (HTTP_400)\n"
    )
    no_account = await cli("accounts", "show", "--account", "acc-nope")
    assert no_account.exit_code == 3, no_account.output


async def test_refusals_of_the_state_stay_exit_1(cli: Cli) -> None:
    sent = await cli("send", "--from", "a@example.com", "--to", "b@example.org", "--text", "x")
    message_id = sent.stdout.strip()
    for _ in range(300):
        shown = await cli("--json", "queue", "show", message_id)
        if json.loads(shown.stdout)["status"] == "sent":
            break
        await asyncio.sleep(0.05)
    refused = await cli("queue", "cancel", message_id)
    assert refused.exit_code == 1
    assert refused.stderr.endswith("(INVALID_STATE)\n")
