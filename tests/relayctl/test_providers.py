"""``relayctl providers`` against a running relayd whose providers are the loopback fakes."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.server import Server
from tests.providers.conftest import ServiceAccountKey, make_service_account
from tests.providers.fakes import Answer, GoogleFake, MailgunFake
from tests.providers.relay import google, mailgun, relay, service_account
from tests.relayctl.conftest import Cli

__all__ = ["google", "mailgun", "relay", "service_account"]  # fixtures


def cli_for(server: Server) -> Cli:
    return Cli(server.base_url, server.admin_token)


async def test_check_every_provider_and_one_that_is_down(
    relay: Server, mailgun: MailgunFake, google: GoogleFake
) -> None:
    cli = cli_for(relay)
    checked = await cli("providers", "check", "--json")
    assert checked.exit_code == 0, checked.stderr
    results = {r["provider_id"]: r for r in json.loads(checked.stdout)}
    assert set(results) == {"mg", "gm"}
    assert {r["status"] for r in results.values()} == {"healthy"}
    assert mailgun.calls("/v3/domains/mg.example.com") and google.calls("/token")

    table = await cli("providers", "ls")
    assert table.exit_code == 0
    assert "mg" in table.stdout and "mailgun" in table.stdout and "healthy" in table.stdout

    mailgun.default = Answer(503)
    down = await cli("providers", "check", "mg")
    assert down.exit_code == 1
    assert "ALL_PROVIDERS_DOWN" in down.stderr
    missing = await cli("providers", "check", "nope")
    assert missing.exit_code == 3


async def test_validate_gmail(
    relay: Server, google: GoogleFake, service_account: ServiceAccountKey, tmp_path: Path
) -> None:
    cli = cli_for(relay)
    good = tmp_path / "sa.json"
    good.write_text(service_account.text)
    valid = await cli(
        "providers", "validate", "gmail", "--service-account", str(good),
        "--test-email", "test@example.com", "--json",
    )  # fmt: skip
    assert valid.exit_code == 0, valid.stderr
    data = json.loads(valid.stdout)
    assert data["valid"] is True and data["domain_wide_delegation"] is True

    stranger = tmp_path / "other.json"
    stranger.write_text(make_service_account(service_account.email).text)
    refused = await cli("providers", "validate", "gmail", "--service-account", str(stranger))
    assert refused.exit_code == 1
    assert "token_exchange" in refused.stdout


async def test_validate_mailgun_and_list_domains(relay: Server, mailgun: MailgunFake) -> None:
    cli = cli_for(relay)
    args = ("providers", "validate", "mailgun", "--domain", "mg.example.com", "--json")
    valid = await cli(*args, env={"MAILGUN_API_KEY": mailgun.api_key})
    assert valid.exit_code == 0, valid.stderr
    assert json.loads(valid.stdout)["sending_enabled"] is True
    refused = await cli(*args, env={"MAILGUN_API_KEY": "key-wrong"})
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["failed_check"] == "api_key"
    assert "key-wrong" not in refused.stdout + refused.stderr

    domains = await cli("providers", "domains", "--json")
    assert domains.exit_code == 0
    assert [d["name"] for d in json.loads(domains.stdout)["domains"]] == ["mg.example.com"]
