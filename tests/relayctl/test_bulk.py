"""`queue retry|cancel` in bulk: filters, --dry-run, confirmation, --json, exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import typer

from relayctl.client import Client
from relayctl.output import Output
from relayctl.repair import QueueFilter, run_bulk
from tests.relayctl.conftest import Cli
from tests.relayctl.test_retry import failing_relay, refusing_upstream, status_of

__all__ = ["failing_relay", "refusing_upstream"]


async def send(cli: Cli, *extra: str) -> str:
    result = await cli(
        "send", "--from", "a@example.com", "--to", "gone@example.org", "--text", "x", *extra
    )
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


async def test_bulk_retry_with_filters_and_dry_run(failing_relay: Any) -> None:
    cli = Cli(failing_relay.base_url, failing_relay.admin_token)
    tagged = [await send(cli, "--campaign", "spring") for _ in range(2)]
    other = await send(cli, "--campaign", "autumn")
    for message_id in (*tagged, other):
        await status_of(cli, message_id, "failed")

    # Bounces (null sender) for these failures exist too: --sender leaves them out.
    preview = await cli(
        "queue", "retry", "--campaign", "spring", "--sender", "a@example.com", "--dry-run"
    )
    assert preview.exit_code == 0, preview.output
    assert preview.stdout.split() == sorted(tagged)
    for message_id in tagged:
        assert (await status_of(cli, message_id, "failed"))["status"] == "failed"

    as_json = await cli(
        "--json",
        "queue",
        "retry",
        "--status",
        "failed",
        "--error-contains",
        "user unknown",
        "--sender",
        "a@example.com",
        "--dry-run",
    )
    data = json.loads(as_json.stdout)
    assert data["matched"] == 3 and data["dry_run"] is True
    assert set(data) == {"action", "dry_run", "matched", "count", "ids", "skipped"}

    done = await cli("queue", "retry", "--campaign", "spring", "--sender", "a@example.com")
    assert done.exit_code == 0, done.output
    assert done.stdout.split() == sorted(tagged)
    detail = json.loads((await cli("--json", "queue", "show", tagged[0])).stdout)
    assert detail["retry_count"] >= 1
    assert (await status_of(cli, other, "failed"))["status"] == "failed"


async def test_bulk_cancel_asks_above_the_threshold(cli: Cli) -> None:
    later = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    ids = [await send(cli, "--at", later, "--campaign", "big") for _ in range(12)]

    refused = await cli("queue", "cancel", "--campaign", "big")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        "relayctl: cancel of 12 messages needs confirmation: add --yes (or preview with --dry-run)"
    )
    listed = json.loads((await cli("--json", "queue", "ls", "--status", "scheduled")).stdout)
    assert listed["pagination"]["total"] == 12

    done = await cli(
        "--json", "queue", "cancel", "--campaign", "big", "--status", "scheduled", "-y"
    )
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["count"] == 12 and data["ids"] == sorted(ids)
    empty = await cli("queue", "cancel", "--campaign", "big")
    assert empty.exit_code == 0 and empty.stdout == ""


async def test_usage_errors(cli: Cli) -> None:
    nothing = await cli("queue", "retry")
    assert nothing.exit_code == 2
    assert "needs a message id or at least one filter" in nothing.stderr
    both = await cli("queue", "cancel", "msg-x", "--status", "queued")
    assert both.exit_code == 2
    bad = await cli("queue", "retry", "--status", "processing")
    assert bad.exit_code == 2  # INVALID_REQUEST from relayd is a usage error
    assert "(INVALID_REQUEST)" in bad.stderr and "not processing" in bad.stderr
    age = await cli("queue", "retry", "--older-than", "soonish")
    assert age.exit_code == 2 and "older_than" in age.stderr


def test_partial_success_exits_6(capsys: pytest.CaptureFixture[str]) -> None:
    """A match that changed state between preview and action: only a race makes this."""

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        ids = ["msg-a", "msg-b"]
        data = {
            "action": "retry",
            "dry_run": body["dry_run"],
            "matched": 2,
            "count": 2 if body["dry_run"] else 1,
            "ids": ids if body["dry_run"] else ["msg-a"],
            "skipped": [] if body["dry_run"] else ["msg-b"],
        }
        return httpx.Response(200, json={"success": True, "data": data})

    transport = httpx.MockTransport(answer)
    with (
        Client("t", base_url="http://relay.test", transport=transport) as c,
        pytest.raises(typer.Exit) as caught,
    ):
        run_bulk(c, Output(), "retry", QueueFilter(status=["failed"]), False, True)
    assert caught.value.exit_code == 6
    captured = capsys.readouterr()
    assert captured.out.split() == ["msg-a"]
    assert "1 changed state first: msg-b" in captured.err
