"""``relayctl accounts`` and ``relayctl addresses`` against a running relayd."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.relayctl.conftest import Cli


@pytest.fixture
def cli(relay: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    for name in ("RELAY_URL", "RELAY_TOKEN", "RELAY_PROFILE", "RELAY_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return Cli(relay.base_url, relay.admin_token)


async def test_accounts_lifecycle_with_the_admin_token(cli: Cli, relay: Any) -> None:
    created = await cli("accounts", "create", "--plan", "pro", "--json")
    assert created.exit_code == 0, created.output
    account = json.loads(created.stdout)
    assert account["plan"] == "pro" and account["api_key"].startswith("maylng_")
    account_id = account["id"]

    shown = await cli("accounts", "show", "--account", account_id)
    assert shown.exit_code == 0
    assert "plan:" in shown.stdout and "pro" in shown.stdout and account_id in shown.stdout

    changed = await cli("accounts", "plan", "enterprise", "--account", account_id, "--json")
    assert json.loads(changed.stdout)["email_address_limit"] == 500
    bad_plan = await cli("accounts", "plan", "gold", "--account", account_id)
    assert bad_plan.exit_code == 2

    rotated = await cli("accounts", "rotate-key", "--account", account_id)
    assert rotated.exit_code == 0
    new_key = rotated.stdout.strip()
    assert new_key.startswith("maylng_") and new_key != account["api_key"]
    old = Cli(relay.base_url, account["api_key"])
    refused = await old("accounts", "show")
    assert refused.exit_code == 4
    assert "Invalid API key" in refused.stderr
    own = await Cli(relay.base_url, new_key)("accounts", "show", "--json")
    assert json.loads(own.stdout)["id"] == account_id

    deleted = await cli("accounts", "delete", "--account", account_id, "--yes")
    assert deleted.exit_code == 0
    gone = await cli("accounts", "show", "--account", account_id)
    assert gone.exit_code == 3
    assert "Account not found" in gone.stderr


@pytest.mark.parametrize("command", [("accounts", "show"), ("addresses", "create")])
async def test_the_admin_token_without_an_account_says_which_flag_names_it(
    cli: Cli, command: tuple[str, ...]
) -> None:
    result = await cli(*command)
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.rstrip().endswith("(in relayctl: --account, or the global --workspace)")


async def test_addresses_with_the_account_key(cli: Cli, relay: Any) -> None:
    created = await cli("accounts", "create", "--json")
    key = json.loads(created.stdout)["api_key"]
    own = Cli(relay.base_url, key)
    made = await own("addresses", "create", "support", "--type", "persistent")
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == "support@example.com"
    generated = await own("addresses", "create", "--json")
    address = json.loads(generated.stdout)
    assert address["type"] == "temporary" and address["expires_at"]

    listed = await own("addresses", "ls", "--json")
    emails = [a["email"] for a in json.loads(listed.stdout)["email_addresses"]]
    assert emails == ["support@example.com", address["email"]]
    table = await own("addresses", "ls")
    assert "support@example.com" in table.stdout

    disabled = await own("addresses", "disable", address["id"])
    assert disabled.exit_code == 0
    assert f"{address['email']} disabled" in disabled.stdout
    removed = await own("addresses", "rm", address["id"])
    assert removed.exit_code == 0
    again = await own("addresses", "rm", address["id"])
    assert again.exit_code == 3
    assert "Email address not found" in again.stderr
    bad_type = await own("addresses", "create", "--type", "forever")
    assert bad_type.exit_code == 2
