"""`profile add|ls|use|rm`: the TOML file (tomli-w, mode 0600) and connecting through it."""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from pathlib import Path
from typing import Any

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
