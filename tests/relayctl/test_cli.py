"""relayctl against a real relayd on loopback: send, queue ls/show/retry/cancel, version."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from relayctl import __version__
from tests.conftest import ConfigFactory
from tests.relayctl.conftest import Cli, run

SEND = ["send", "--from", "a@example.com", "--to", "b@example.org", "--subject", "hi"]


def one_line(result: Result) -> str:
    """The single stderr line of a failed command; no traceback, nothing on stdout."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert lines[0].startswith("relayctl: ")
    return lines[0]


async def send(cli: Cli, *extra: str) -> str:
    result = await cli(*SEND, "--text", "hello", *extra)
    assert result.exit_code == 0, result.output
    message_id = result.stdout.strip()
    assert message_id.startswith("msg-")
    return message_id


async def show(cli: Cli, message_id: str) -> dict[str, Any]:
    result = await cli("--json", "queue", "show", message_id)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


async def wait_for_status(cli: Cli, message_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        message = await show(cli, message_id)
        if message["status"] == status:
            return message
        assert time.monotonic() < deadline, f"{message_id} still {message['status']}"
        await asyncio.sleep(0.05)


async def test_send_is_listed_then_sent_to_the_outbox(cli: Cli, relay: Any) -> None:
    message_id = await send(cli)

    listed = await cli("queue", "ls")
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "FROM"]
    assert any(row.split()[0] == message_id for row in rows)

    await wait_for_status(cli, message_id, "sent")
    sent = await cli("queue", "ls", "--status", "sent")
    row = next(r for r in sent.stdout.splitlines() if r.startswith(message_id))
    assert row.split()[1:4] == ["sent", "a@example.com", "b@example.org"]
    emls = list(Path(relay.data_dir, "outbox").glob("*.eml"))
    assert len(emls) == 1
    assert b"Subject: hi" in emls[0].read_bytes()


async def test_json_shapes(cli: Cli) -> None:
    result = await cli("--json", *SEND, "--text", "hello", "--html", "<p>hello</p>")
    assert result.exit_code == 0, result.output
    sent = json.loads(result.stdout)
    assert set(sent) >= {"message_id", "status", "queued_at", "estimated_send_time"}
    assert sent["status"] == "queued"

    # --json after the command name works as well as before it.
    listed = json.loads((await cli("queue", "ls", "--json", "--limit", "1")).stdout)
    assert set(listed) == {"messages", "pagination"}
    assert set(listed["pagination"]) >= {"total", "limit", "offset", "has_more"}
    assert listed["pagination"]["limit"] == 1
    (message,) = listed["messages"]
    assert message["id"] == sent["message_id"]
    assert set(message) >= {"id", "from", "to", "cc", "bcc", "subject", "status", "queued_at"}

    detail = await show(cli, sent["message_id"])
    assert detail["html_body"].strip() == "<p>hello</p>"
    assert detail["recipients"][0]["address"] == "b@example.org"
    assert isinstance(detail["attempts"], list)


async def test_show_lists_headers_recipients_and_attempts(cli: Cli, tmp_path: Path) -> None:
    attachment = tmp_path / "report.txt"
    attachment.write_text("figures\n")
    message_id = await send(
        cli,
        "--cc",
        "c@example.org",
        "--header",
        "X-Campaign-Tag: spring",
        "--attach",
        str(attachment),
    )
    await wait_for_status(cli, message_id, "sent")

    result = await cli("queue", "show", message_id)
    assert result.exit_code == 0, result.output
    text = result.stdout
    block = text[: text.index("\n\n")]
    fields = dict(line.split(None, 1) for line in block.splitlines())
    assert fields["id:"] == message_id
    assert fields["status:"] == "sent"
    assert fields["cc:"] == "c@example.org"
    assert "X-Campaign-Tag: spring" in text
    assert "Recipients" in text and "c@example.org" in text
    assert "report.txt" in text
    attempts = text[text.index("Attempts") :]
    assert "outbox" in attempts


async def test_cancel_scheduled_then_cancel_of_a_sent_message_fails(cli: Cli) -> None:
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    at = later.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert at.endswith("+02:00")
    scheduled = await send(cli, "--at", at)
    estimated = await show(cli, scheduled)
    assert estimated["status"] == "scheduled"
    cancelled = await cli("queue", "cancel", scheduled)
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.split() == [scheduled, "cancelled"]
    assert (await show(cli, scheduled))["status"] == "cancelled"

    sent = await send(cli)
    await wait_for_status(cli, sent, "sent")
    refused = await cli("queue", "cancel", sent)
    assert refused.exit_code == 1
    line = one_line(refused)
    assert line.startswith(f"relayctl: cancel {sent} failed: ")
    assert line.endswith("(INVALID_STATE)")


async def test_retry_refuses_a_message_that_has_not_failed(cli: Cli) -> None:
    message_id = await send(cli)
    await wait_for_status(cli, message_id, "sent")
    result = await cli("queue", "retry", message_id)
    assert result.exit_code == 1
    assert "(INVALID_STATE)" in one_line(result)


async def test_unknown_id_exits_3(cli: Cli) -> None:
    for command in ("show", "retry", "cancel"):
        result = await cli("queue", command, "msg-doesnotexist")
        assert result.exit_code == 3, result.output
        line = one_line(result)
        assert line.startswith(f"relayctl: {command} msg-doesnotexist: ")
        assert "MESSAGE_NOT_FOUND" in line and "relayctl queue ls" in line


async def test_bad_or_missing_token_exits_4(relay: Any) -> None:
    bad = await Cli(relay.base_url, "wrong-token")("queue", "ls")
    assert bad.exit_code == 4
    line = one_line(bad)
    assert f"token rejected by relayd at {relay.base_url}" in line
    assert "INVALID_TOKEN" in line

    missing = await Cli(relay.base_url, None)("queue", "ls")
    assert missing.exit_code == 4
    assert "requires a token (AUTH_REQUIRED)" in one_line(missing)


async def test_token_from_the_local_admin_token_file(relay: Any, clean_env: Path) -> None:
    (clean_env / "relay-data").mkdir()
    (clean_env / "relay-data" / "admin.token").write_text(relay.admin_token + "\n")
    result = await Cli(relay.base_url, None)("queue", "ls")
    assert result.exit_code == 0, result.output


async def test_url_from_environment(relay: Any) -> None:
    result = await asyncio.to_thread(
        run,
        ["version"],
        {"RELAY_URL": relay.base_url, "RELAY_TOKEN": relay.admin_token},
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"relayctl {__version__}"
    assert lines[1].startswith("relayd ") and relay.base_url in lines[1]


async def test_version_json(cli: Cli) -> None:
    result = await cli("version", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["relayctl"] == __version__
    assert isinstance(data["relayd"], dict)


async def test_usage_errors_exit_2(cli: Cli) -> None:
    bad_header = await cli(*SEND, "--text", "x", "--header", "no colon")
    assert bad_header.exit_code == 2
    naive_time = await cli(*SEND, "--text", "x", "--at", "2030-01-01T10:00:00")
    assert naive_time.exit_code == 2
    assert "UTC offset" in naive_time.stderr
    assert "Traceback" not in naive_time.output


async def test_refused_send_names_the_field(cli: Cli) -> None:
    result = await cli("send", "--from", "not-an-address", "--to", "b@example.org", "--text", "x")
    assert result.exit_code == 2  # relayd refused the input as invalid: a usage error
    line = one_line(result)
    assert line.startswith("relayctl: send failed: from:")
    assert line.endswith("(INVALID_EMAIL_FORMAT)")


@pytest.fixture
async def relay_with_generated_token(make_config: ConfigFactory, sqlite_url: str) -> Any:
    """A relayd with no configured token: it writes data_dir/admin.token on first start."""
    from daemon.server import Server

    server = Server(make_config(sqlite_url, auth={"admin_token": ""}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_finds_the_token_relayd_generated(relay_with_generated_token: Any) -> None:
    relay = relay_with_generated_token
    token_file = Path(relay.data_dir) / "admin.token"
    assert token_file.read_text().strip() == relay.admin_token
    result = await asyncio.to_thread(
        run, ["--url", relay.base_url, "queue", "ls"], {"RELAY_DATA_DIR": str(relay.data_dir)}
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ID")
