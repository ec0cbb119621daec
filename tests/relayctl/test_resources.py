"""`recipients`, `campaigns stats`, `stats`, `top` (piped), `rate-limit`, `keys` against relayd."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.relayctl.conftest import Cli
from tests.relayctl.test_cli import one_line, send, wait_for_status


async def test_recipient_lifecycle(cli: Cli) -> None:
    added = await cli(
        "recipients", "add", "ann@example.org", "--first-name", "Ann", "--meta", "k=v"
    )
    assert added.exit_code == 0, added.output
    assert added.stdout == "ann@example.org ACTIVE\n"
    again = await cli("recipients", "add", "ann@example.org")
    assert again.exit_code == 1 and "(RECIPIENT_EXISTS)" in one_line(again)

    listed = await cli("recipients", "ls")
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["EMAIL", "STATUS", "FIRST"]
    assert row.split()[:3] == ["ann@example.org", "ACTIVE", "Ann"]

    updated = await cli("recipients", "update", "ann@example.org", "--status", "unsubscribed")
    assert updated.stdout == "ann@example.org UNSUBSCRIBED\n"
    shown = json.loads((await cli("--json", "recipients", "show", "ann@example.org")).stdout)
    assert shown["status"] == "UNSUBSCRIBED" and shown["metadata"]["k"] == "v"
    text = (await cli("recipients", "show", "ann@example.org")).stdout
    fields = dict(line.split(None, 1) for line in text.split("\n\n")[0].splitlines())
    assert fields["first_name:"] == "Ann" and "Metadata" in text

    assert (await cli("recipients", "rm", "ann@example.org")).stdout == "ann@example.org removed\n"
    gone = await cli("recipients", "show", "ann@example.org")
    assert gone.exit_code == 3 and "relayctl recipients ls" in one_line(gone)
    nothing = await cli("recipients", "update", "x@example.org")
    assert nothing.exit_code == 2


async def test_ids_with_a_slash_or_dots_reach_their_resource(cli: Cli) -> None:
    odd = "team/ops@example.org"  # a legal address
    added = await cli("recipients", "add", odd)
    assert added.exit_code == 0, added.output
    shown = json.loads((await cli("--json", "recipients", "show", odd)).stdout)
    assert shown["email"] == odd
    assert (await cli("recipients", "rm", odd)).stdout == f"{odd} removed\n"
    for message_id in ("a/b", "..", "../admin"):
        missing = await cli("queue", "show", message_id)
        assert missing.exit_code == 3, missing.output
        assert "(MESSAGE_NOT_FOUND)" in one_line(missing)


async def test_recipient_import_reports_bad_rows_and_applies_the_rest(
    cli: Cli, tmp_path: Path
) -> None:
    await cli("recipients", "add", "old@example.org", "--first-name", "Old")
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "email,first_name,status,plan\n"
        "a@example.org,A,,gold\n"
        "broken,B,,\n"
        "c@example.org,C,NOT_A_STATUS,\n"
        "old@example.org,Renamed,,\n"
    )
    result = await cli("--json", "recipients", "import", str(csv_file))
    assert result.exit_code == 6, result.output
    data = json.loads(result.stdout)
    assert (data["imported"], data["refused"]) == (1, 3)
    refused = {r["row"]: r["code"] for r in data["results"] if "error" in r}
    assert refused == {3: "INVALID_EMAIL_FORMAT", 4: "INVALID_REQUEST", 5: "RECIPIENT_EXISTS"}
    a = json.loads((await cli("--json", "recipients", "show", "a@example.org")).stdout)
    assert a["metadata"]["plan"] == "gold"
    missing = await cli("recipients", "show", "c@example.org")
    assert missing.exit_code == 3  # the refused row left nothing behind

    updating = await cli("recipients", "import", "--update", str(csv_file))
    assert updating.exit_code == 6
    assert updating.stdout.splitlines()[-2:] == ["imported  2", "refused   2"]
    old = json.loads((await cli("--json", "recipients", "show", "old@example.org")).stdout)
    assert old["first_name"] == "Renamed"


async def test_stats_campaign_and_rate_limit(cli: Cli) -> None:
    message_id = await send(cli, "--campaign", "launch")
    await wait_for_status(cli, message_id, "sent")

    stats = await cli("stats")
    assert stats.exit_code == 0, stats.output
    assert "Queue" in stats.stdout and "Providers" in stats.stdout
    data = json.loads((await cli("--json", "stats")).stdout)
    assert {"system", "queue", "processing", "providers", "rate_limits"} <= set(data)
    assert data["queue"]["sent"] >= 1

    campaign = json.loads((await cli("--json", "campaigns", "stats", "launch")).stdout)
    assert campaign["campaign_id"] == "launch" and campaign["stats"]["sent"] >= 1
    text = (await cli("campaigns", "stats", "launch")).stdout
    assert "campaign: launch" in text and "delivery_rate" in text

    limits = json.loads((await cli("--json", "rate-limit")).stdout)
    assert "global" in limits
    table = (await cli("rate-limit")).stdout
    assert table.splitlines()[0].split() == ["SCOPE", "ID", "LIMIT", "USED", "REMAINING", "RESET"]


async def test_top_prints_one_line_per_event_when_piped(cli: Cli) -> None:
    result = await cli("top", "--iterations", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("depth=" in line for line in lines)
    as_json = await cli("--json", "top", "--iterations", "1")
    event = json.loads(as_json.stdout)
    assert set(event) >= {"timestamp", "emails_per_second", "queue_depth", "active_processors"}


async def test_keys_create_list_revoke(cli: Cli, relay: Any) -> None:
    async with httpx.AsyncClient(
        base_url=relay.base_url, headers={"Authorization": f"Bearer {relay.admin_token}"}
    ) as http:
        created = await http.post("/api/admin/workspaces", json={"id": "ws-keys"})
        assert created.status_code == 201, created.text
    made = await cli("--json", "keys", "create", "ws-keys", "--name", "ci")
    assert made.exit_code == 0, made.output
    key = json.loads(made.stdout)
    assert key["key"].startswith("sk_live_")
    plain = await cli("keys", "create", "ws-keys")
    assert plain.stdout.startswith("sk_live_")

    listed = await cli("keys", "ls", "--workspace-id", "ws-keys")
    assert key["id"] in listed.stdout and key["key"] not in listed.stdout
    # The new key works as a relayctl token, scoped to its workspace.
    as_key = await Cli(relay.base_url, key["key"])("queue", "ls")
    assert as_key.exit_code == 0, as_key.output

    revoked = await cli("keys", "revoke", key["id"])
    assert revoked.stdout == f"{key['id']} revoked\n"
    refused = await Cli(relay.base_url, key["key"])("queue", "ls")
    assert refused.exit_code == 4
    unknown = await cli("keys", "revoke", "key_nope")
    assert unknown.exit_code == 3
