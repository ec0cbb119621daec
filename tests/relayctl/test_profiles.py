"""`profile add|ls|use|rm`: the TOML file (tomli-w, mode 0600) and connecting through it."""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.relayctl.conftest import run


def config_file() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "relayctl" / "config.toml"


def test_round_trip_with_mode_0600() -> None:
    added = run(
        [
            "profile",
            "add",
            "prod",
            "--url",
            "https://relay.example.com:8443",
            "--token",
            "tok-prod",
            "--workspace",
            "ws-1",
        ]
    )
    assert added.exit_code == 0, added.output
    path = config_file()
    assert path.stat().st_mode & 0o777 == 0o600
    document = tomllib.loads(path.read_text())
    assert document == {
        "current": "prod",
        "profiles": {
            "prod": {
                "url": "https://relay.example.com:8443",
                "token": "tok-prod",
                "workspace": "ws-1",
            }
        },
    }
    run(["profile", "add", "staging", "--url", "http://127.0.0.1:9000"])
    assert tomllib.loads(path.read_text())["current"] == "prod"

    listed = run(["profile", "ls"])
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["CURRENT", "NAME", "URL", "WORKSPACE", "TOKEN"]
    assert lines[1].split() == ["*", "prod", "https://relay.example.com:8443", "ws-1", "set"]
    assert "tok-prod" not in listed.stdout
    data = json.loads(run(["--json", "profile", "ls"]).stdout)
    assert data["current"] == "prod"
    assert data["profiles"]["staging"] == {
        "url": "http://127.0.0.1:9000",
        "workspace": None,
        "has_token": False,
    }

    assert run(["profile", "use", "staging"]).exit_code == 0
    assert tomllib.loads(path.read_text())["current"] == "staging"
    assert run(["profile", "rm", "staging"]).exit_code == 0
    document = tomllib.loads(path.read_text())
    assert "current" not in document and list(document["profiles"]) == ["prod"]
    assert path.stat().st_mode & 0o777 == 0o600

    missing = run(["profile", "use", "nope"])
    assert missing.exit_code == 3 and "relayctl profile ls" in missing.stderr


async def test_commands_connect_through_the_profile(relay: Any) -> None:
    run(["profile", "add", "local", "--url", relay.base_url, "--token", relay.admin_token])
    current = await asyncio.to_thread(run, ["queue", "ls"])
    assert current.exit_code == 0, current.output

    run(["profile", "add", "wrong", "--url", relay.base_url, "--token", "bad-token"])
    by_name = await asyncio.to_thread(run, ["--profile", "wrong", "queue", "ls"])
    assert by_name.exit_code == 4
    # A flag still wins over the profile.
    flag = await asyncio.to_thread(
        run, ["--profile", "wrong", "--token", relay.admin_token, "queue", "ls"]
    )
    assert flag.exit_code == 0
    unknown = await asyncio.to_thread(run, ["--profile", "ghost", "queue", "ls"])
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("relayctl: no profile 'ghost'")


def test_unreadable_profile_file_is_a_usage_error() -> None:
    path = config_file()
    path.parent.mkdir(parents=True)
    path.write_text("current = [")
    result = run(["queue", "ls"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"relayctl: cannot read {path}")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'current = "\xff"\n', "not UTF-8 text (byte 11)"),
        (b"a = " + b"[" * 100_000, "invalid TOML: "),
        (b"a = 1" + b"0" * 5000, "invalid TOML: "),
        (b"current = [", "invalid TOML: "),
    ],
    ids=["not-utf8", "too-deep", "huge-integer", "truncated"],
)
@pytest.mark.parametrize(
    "args",
    [
        ["queue", "ls"],
        ["profile", "ls"],
        ["profile", "use", "prod"],
        ["profile", "rm", "prod"],
        ["profile", "add", "prod", "--url", "http://relay.example:8080"],
    ],
    ids=lambda args: "-".join(args[:2]),
)
def test_unusable_profile_file_is_one_line_and_exit_2(
    content: bytes, reason: str, args: list[str]
) -> None:
    path = config_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    result = run(args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"relayctl: cannot read {path}: {reason}")
    assert len(result.stderr.splitlines()) == 1
    assert path.read_bytes() == content  # left as it was


def test_profile_file_in_the_way_or_unwritable_is_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "xdg"
    blocker.write_text("a file where the config directory should be")
    blocked = run(["profile", "add", "prod", "--url", "http://relay.example:8080"])
    assert blocked.exit_code == 2, blocked.output
    assert blocked.stderr == f"relayctl: cannot read {config_file()}: Not a directory\n"

    blocker.unlink()
    config_file().with_name("config.toml.tmp").mkdir(parents=True)  # where the write goes
    unwritable = run(["profile", "add", "prod", "--url", "http://relay.example:8080"])
    assert unwritable.exit_code == 2, unwritable.output
    assert unwritable.stderr == f"relayctl: cannot write {config_file()}: Is a directory\n"


async def test_profile_comes_with_its_url_and_token(relay: Any, closed_port: int) -> None:
    """--profile beats RELAY_URL/RELAY_TOKEN: the profile's token goes to the profile's URL."""
    run(["profile", "add", "local", "--url", relay.base_url, "--token", relay.admin_token])
    run(["profile", "add", "elsewhere", "--url", f"http://127.0.0.1:{closed_port}", "--use"])
    env = {"RELAY_URL": f"http://127.0.0.1:{closed_port}", "RELAY_TOKEN": "env-token"}
    chosen = await asyncio.to_thread(run, ["--profile", "local", "queue", "ls"], env)
    assert chosen.exit_code == 0, chosen.output
    # Without --profile the environment beats the current profile.
    by_env = await asyncio.to_thread(run, ["queue", "ls"], {"RELAY_URL": relay.base_url})
    assert by_env.exit_code == 4  # no token: "elsewhere" has none, and its URL is not this
    # A flag still beats the profile.
    flag = await asyncio.to_thread(
        run, ["--profile", "local", "--url", f"http://127.0.0.1:{closed_port}", "queue", "ls"]
    )
    assert flag.exit_code == 5


async def test_a_stored_token_is_only_sent_to_its_own_url(relay: Any) -> None:
    """--url names another daemon than the profile's (or RELAY_URL's): its token stays home."""
    other = relay.base_url.replace("127.0.0.1", "localhost")  # same relayd, another URL
    run(["profile", "add", "prod", "--url", other, "--token", relay.admin_token, "--use"])
    current = await asyncio.to_thread(run, ["--url", relay.base_url, "queue", "ls"])
    assert current.exit_code == 4, current.output
    assert "requires a token (AUTH_REQUIRED)" in current.stderr
    named = await asyncio.to_thread(
        run, ["--profile", "prod", "--url", relay.base_url, "queue", "ls"]
    )
    assert named.exit_code == 4
    env = {"RELAY_URL": other, "RELAY_TOKEN": relay.admin_token}
    from_env = await asyncio.to_thread(run, ["--url", relay.base_url, "queue", "ls"], env)
    assert from_env.exit_code == 4
    # The same URL, spelled with a trailing slash or another case, is the same daemon.
    same = await asyncio.to_thread(run, ["--url", other.upper() + "/", "queue", "ls"])
    assert same.exit_code == 0, same.output
    # A token given without a URL goes wherever the URL comes from.
    alone = await asyncio.to_thread(
        run, ["--url", relay.base_url, "queue", "ls"], {"RELAY_TOKEN": relay.admin_token}
    )
    assert alone.exit_code == 0, alone.output


def test_listing_masks_a_password_in_a_profile_url() -> None:
    run(["profile", "add", "prod", "--url", "https://ops:s3cret@relay.example:8443"])
    listed = run(["profile", "ls"]).stdout + run(["--json", "profile", "ls"]).stdout
    assert "s3cret" not in listed
    assert "https://ops:***@relay.example:8443" in listed
