"""`config show|set`, `maintenance on|off|status`, `cleanup` against a running relayd."""

from __future__ import annotations

import asyncio
import json
import smtplib
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.store.models import messages
from tests.relayctl.conftest import Cli
from tests.relayctl.test_cli import send, wait_for_status


async def test_config_show_lists_keys_with_sources(cli: Cli) -> None:
    result = await cli("config", "show")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["queue.process_interval"] == ["1s", "file"]
    assert rows["queue.batch_size"] == ["50", "default"]
    assert rows["auth.admin_token"] == ["********", "file"]
    only = await cli("config", "show", "queue.")
    assert all(line.startswith("queue.") for line in only.stdout.splitlines()[1:])
    data = json.loads((await cli("--json", "config", "show")).stdout)
    assert set(data) == {"config", "sources"}
    assert data["config"]["queue"]["batch_size"] == 50


async def test_config_set_live_then_restart_bound(cli: Cli, relay: Any) -> None:
    result = await cli("config", "set", "queue.batch_size", "120")
    assert result.exit_code == 0, result.output
    assert result.stdout == "queue.batch_size set\n"
    assert relay.service.config.queue.batch_size == 120
    shown = await cli("config", "show", "queue.batch_size")
    assert shown.stdout.splitlines()[1].split() == ["queue.batch_size", "120", "runtime"]

    port = await cli("--json", "config", "set", "smtp.port", "2600")
    data = json.loads(port.stdout)
    assert data["restart_required"] is True and data["restart_required_for"] == ["smtp.port"]
    plain = await cli("config", "set", "smtp.timeout", "60s")
    assert plain.stdout.splitlines() == ["smtp.timeout set", "restart required for: smtp.timeout"]

    dropped = await cli("config", "set", "queue.batch_size", "null")
    assert dropped.exit_code == 0
    assert relay.service.config.queue.batch_size == 50

    bad = await cli("config", "set", "queue.batch_size", "0")
    assert bad.exit_code == 2  # relayd refused the input as invalid: a usage error
    assert bad.stderr.startswith("relayctl: config set queue.batch_size failed: queue.batch_size")
    assert bad.stderr.rstrip().endswith("(INVALID_REQUEST)")


def mail_reply(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        code = smtp.mail("a@example.com")[0]
        if code == 250:
            smtp.rset()
    return code


async def test_maintenance_on_status_off(cli: Cli, relay: Any) -> None:
    on = await cli("maintenance", "on", "-m", "Disk swap", "--minutes", "15")
    assert on.exit_code == 0, on.output
    fields = dict(line.split(":", 1) for line in on.stdout.splitlines())
    assert fields["maintenance_mode"].strip() == "on"
    assert fields["message"].strip() == "Disk swap"
    assert fields["delivery"].strip() == "running"
    assert await asyncio.to_thread(mail_reply, relay.smtp_port) == 421

    refused = await cli("send", "--from", "a@example.com", "--to", "b@example.org", "--text", "x")
    assert refused.exit_code == 1
    assert refused.stderr == "relayctl: send failed: Disk swap (MAINTENANCE_MODE)\n"
    assert (await cli("queue", "ls")).exit_code == 0

    status = json.loads((await cli("--json", "maintenance", "status")).stdout)
    assert status["maintenance_mode"] is True and status["message"] == "Disk swap"
    off = await cli("maintenance", "off")
    assert off.stdout == "maintenance_mode: off\n"
    assert await asyncio.to_thread(mail_reply, relay.smtp_port) == 250


async def age_all(relay: Any, days: int) -> None:
    then = datetime.now(UTC) - timedelta(days=days)
    await relay.service.committer.run(
        lambda c: c.execute(messages.update().values(queued_at=then, processed_at=then))
    )


async def test_cleanup_is_quiet_when_piped_and_reports_dry_runs(cli: Cli, relay: Any) -> None:
    ids = [await send(cli) for _ in range(3)]
    for message_id in ids:
        await wait_for_status(cli, message_id, "sent")
    await age_all(relay, 100)

    dry = await cli("cleanup", "--older-than", "90d", "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.startswith("would delete 3 messages, 0 webhook events, 0 recipient events;")
    kept = await cli("--json", "cleanup", "--older-than", "12w", "--no-include-sent")
    assert json.loads(kept.stdout)["deleted"]["messages"] == 0

    quiet = await cli("cleanup", "--older-than", "90d")
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")
    listed = json.loads((await cli("--json", "queue", "ls")).stdout)
    assert listed["pagination"]["total"] == 0

    bad = await cli("cleanup", "--older-than", "ninety")
    assert bad.exit_code == 2 and "90d" in bad.stderr
