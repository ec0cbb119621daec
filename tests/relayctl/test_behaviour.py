"""What a careful operator expects of send, cleanup, queue retry, config show, webhooks and
the list commands: bad input is one line and exit 2, answers say what really happened."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import Result

from daemon.core import compose
from relayctl.commands import send as send_command
from tests.conftest import ConfigFactory
from tests.relayctl.conftest import Cli, run
from tests.relayctl.test_cli import send, show, wait_for_status

SEND = ["send", "--from", "a@example.com", "--to", "b@example.org", "--text", "x"]


def usage_line(result: Result) -> str:
    """The one stderr line of a usage error (exit 2); nothing on stdout, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("relayctl: "), result.stderr
    return lines[0]


def offline(closed_port: int, *args: str) -> Result:
    """relayctl against a closed port: input it judges itself never gets that far (exit 5)."""
    return run(["--url", f"http://127.0.0.1:{closed_port}", "--token", "t", *args])


async def admin_post(relay: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {relay.admin_token}"}
    async with httpx.AsyncClient(base_url=relay.base_url, headers=headers) as http:
        answer = await http.post(path, json=body)
    assert answer.status_code in (200, 201), answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


# -- 1. send --at -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-05:00",  # a valid local time whose UTC is in year 10000
        "0001-01-01T00:00:00+01:00",  # ... or in year 0
        "9999-12-31T23:59:59Z",  # further ahead than relayd schedules
        "",  # used to mean "now", silently
        "2026-01-01T10:00:00+24:00",
        " 2026-01-01T10:00:00Z",
        "2026-01-01T10:00:00",
    ],
)
def test_send_at_that_is_not_a_schedulable_time_is_one_usage_line(
    closed_port: int, value: str
) -> None:
    line = usage_line(offline(closed_port, *SEND, "--at", value))
    assert line.startswith("relayctl: invalid value for --at: ")


# -- 2. send --eml that is not a message relayctl can carry over --------------------------

MALFORMED_EML = {
    "nul-in-charset": b"From: a@example.com\nTo: b@example.org\n"
    b'Content-Type: text/plain; charset="utf\x00-8"\n\nhi\n',
    "unknown-charset": b"From: a@example.com\nTo: b@example.org\n"
    b"Content-Type: text/plain; charset=bogus-x\n\nhi\n",
    "binary-junk": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "no-headers": b"just some text\nwith no header block\n",
    "bad-header-line": b"From: a@example.com\nTo: b@example.org\nF\xf6o bar\n\nhi\n",
    "broken-base64": b"From: a@example.com\nTo: b@example.org\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nhi\n'
    b'--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename="x.pdf"\n'
    b"Content-Transfer-Encoding: base64\n\nQUJD=Q\n--b--\n",
    "body-not-its-charset": b"From: a@example.com\nTo: b@example.org\n"
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\xff\xfe\n",
    "undecodable-subject": b"From: a@example.com\nTo: b@example.org\nSubject: caf\xe9\n\nhi\n",
    "not-text": b"From: a@example.com\nTo: b@example.org\nContent-Type: image/png\n\nxx\n",
    "attached-message": b"From: a@example.com\nTo: b@example.org\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nhi\n'
    b"--b\nContent-Type: message/rfc822\nContent-Disposition: attachment\n\n"
    b"Subject: inner\n\nbody\n--b--\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_EML))
def test_malformed_eml_is_one_usage_line_naming_the_file(
    closed_port: int, tmp_path: Path, name: str
) -> None:
    path = tmp_path / f"{name}.eml"
    path.write_bytes(MALFORMED_EML[name])
    line = usage_line(offline(closed_port, "send", "--eml", str(path)))
    assert str(path) in line


# -- 3. which .eml headers travel ----------------------------------------------------------


def test_reserved_headers_are_relayds() -> None:
    assert send_command.RESERVED_HEADERS == compose.RESERVED_HEADERS


EML_WITH_TRACES = b"""Return-Path: <bounce@example.com>
Received: from mx.example.com by relay.example.net; Mon, 1 Jan 2024 10:00:00 +0000
Received: from client by mx.example.com; Mon, 1 Jan 2024 09:59:59 +0000
DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; h=from:to; bh=abc=; b=def=
ARC-Seal: i=1; a=rsa-sha256; d=example.net; s=a; cv=none; b=ghi=
ARC-Message-Signature: i=1; a=rsa-sha256; d=example.net; s=a; b=jkl=
ARC-Authentication-Results: i=1; mx.example.net; dkim=pass
Authentication-Results: mx.example.net; dkim=pass header.d=example.com
Received-SPF: pass
From: Alice <alice@example.com>
To: bob@example.org
Subject: Report
Message-ID: <report-2024.q3@example.com>
Content-Description: the quarterly report
Content-ID: <top@example.com>
Content-Disposition: inline
X-Report-Id: q3
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Figures attached.
"""


async def test_eml_keeps_its_message_id_and_drops_what_relayd_builds_or_that_went_stale(
    cli: Cli, relay: Any, tmp_path: Path
) -> None:
    path = tmp_path / "traced.eml"
    path.write_bytes(EML_WITH_TRACES)
    result = await cli("send", "--eml", str(path), "--header", "x-report-id: q4")
    assert result.exit_code == 0, result.output
    message_id = result.stdout.strip()
    detail = await wait_for_status(cli, message_id, "sent")
    headers = {name.lower(): value for name, value in detail["headers"].items()}
    assert headers["message-id"] == "<report-2024.q3@example.com>"
    assert headers["x-report-id"] == "q4"  # the flag replaced the .eml's, whatever its case
    for gone in ("dkim-signature", "arc-seal", "authentication-results", "received-spf"):
        assert gone not in headers
    sent = next(Path(relay.data_dir, "outbox").glob("*.eml")).read_bytes()
    head = sent.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"\r\nmessage-id: <report-2024.q3@example.com>") == 1
    assert b"dkim-signature" not in head and b"arc-" not in head
    assert b"content-description" not in head and b"x-report-id: q4" in head


async def test_eml_message_id_relayd_would_refuse_is_dropped_with_a_note(
    cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "odd-id.eml"
    path.write_bytes(b"From: a@example.com\nTo: b@example.org\nMessage-ID: not an id\n\nhi\n")
    result = await cli("send", "--eml", str(path))
    assert result.exit_code == 0, result.output
    assert "Message-ID 'not an id' is not <id@domain>" in result.stderr
    detail = await show(cli, result.stdout.strip())
    assert detail["headers"]["Message-ID"].endswith("@relay.test>")


# -- 4. cleanup --older-than ---------------------------------------------------------------


@pytest.mark.parametrize("age", ["1h", "25h", "30m", "1.5d", "-1d", "90x"])
def test_cleanup_age_that_is_not_whole_days_is_refused_not_rounded(
    closed_port: int, age: str
) -> None:
    line = usage_line(offline(closed_port, "cleanup", "--older-than", age))
    assert "--older-than" in line and "90d, 12w" in line and "48h" in line


async def test_cleanup_takes_hours_that_make_whole_days(cli: Cli) -> None:
    result = await cli("--json", "cleanup", "--older-than", "48h", "--dry-run")
    assert result.exit_code == 0, result.output
    cutoff = datetime.fromisoformat(json.loads(result.stdout)["older_than"])
    assert abs(datetime.now(UTC) - timedelta(days=2) - cutoff) < timedelta(minutes=1)


# -- 5. queue retry with nothing to retry --------------------------------------------------


async def test_bulk_retry_that_matches_nothing_is_not_reported_as_a_dry_run(cli: Cli) -> None:
    result = await cli("--json", "queue", "retry", "--status", "failed")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is False
    assert (data["matched"], data["count"], data["ids"], data["skipped"]) == (0, 0, [], [])
    preview = await cli("--json", "queue", "retry", "--status", "failed", "--dry-run")
    assert json.loads(preview.stdout)["dry_run"] is True


# -- 6. config show KEY --------------------------------------------------------------------


async def test_config_show_key_selects_in_json_and_text_and_refuses_unknown_keys(
    cli: Cli,
) -> None:
    data = json.loads((await cli("--json", "config", "show", "smtp.port")).stdout)
    assert set(data) == {"config", "sources"}
    assert data["config"] == {"smtp": {"port": 0}}
    assert data["sources"] == {"smtp.port": "file"}

    text = await cli("config", "show", "smtp.port")
    assert [line.split() for line in text.stdout.splitlines()[1:]] == [["smtp.port", "0", "file"]]

    section = json.loads((await cli("--json", "config", "show", "queue")).stdout)
    assert set(section["config"]) == {"queue"} and "batch_size" in section["config"]["queue"]
    assert section["sources"] and all(k.startswith("queue.") for k in section["sources"])

    for unknown in ("smtp.nope", "queue.batch", "smtp.port.x"):
        line = usage_line(await cli("config", "show", unknown))
        assert f"'{unknown}'" in line
    assert "queue.batch_size" in usage_line(await cli("--json", "config", "show", "queue.batch"))


# -- 7. send --csv with recipients given once ----------------------------------------------


@pytest.mark.parametrize("flag", ["--to", "--cc", "--bcc"])
def test_csv_with_recipient_flags_is_refused(closed_port: int, tmp_path: Path, flag: str) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("email\nann@example.org\n")
    result = offline(
        closed_port, "send", "--from", "a@example.com", "--csv", str(rows), flag, "x@example.org"
    )
    line = usage_line(result)
    assert flag in line and "--csv" in line


# -- 8. webhooks add to where relayd will not deliver --------------------------------------


@pytest.fixture
async def http_receiver() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback HTTP endpoint that answers 200 to every request and keeps what it got."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        received.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://127.1/hook", "http://[::1]/"],
)
async def test_webhook_to_a_loopback_address_is_refused_when_added(cli: Cli, url: str) -> None:
    line = usage_line(await cli("webhooks", "add", url))
    assert "a loopback address" in line and "webhooks.allowlist" in line
    listed = json.loads((await cli("--json", "webhooks", "ls")).stdout)
    assert listed["webhooks"] == []


async def test_webhook_to_an_allowlisted_loopback_address_is_added_and_delivered(
    make_config: ConfigFactory, sqlite_url: str, http_receiver: tuple[int, list[bytes]]
) -> None:
    from daemon.server import Server

    port, received = http_receiver
    server = Server(make_config(sqlite_url, webhooks={"allowlist": ["127.0.0.0/8"]}))
    await server.start()
    try:
        cli = Cli(server.base_url, server.admin_token)
        added = await cli("--json", "webhooks", "add", f"http://127.0.0.1:{port}/hook")
        assert added.exit_code == 0, added.output
        webhook_id = json.loads(added.stdout)["id"]
        tested = await cli("webhooks", "test", webhook_id)
        assert tested.exit_code == 0, tested.output
        assert len(received) == 1
    finally:
        await server.stop()


async def test_workspace_key_gets_the_same_refusal(cli: Cli, relay: Any) -> None:
    await admin_post(relay, "/api/admin/workspaces", {"id": "ws-hooks"})
    key = (await admin_post(relay, "/api/admin/keys", {"workspace_id": "ws-hooks"}))["key"]
    as_key = Cli(relay.base_url, key)
    line = usage_line(await as_key("webhooks", "add", "http://127.0.0.1:9/hook"))
    assert "127.0.0.1 is a loopback address" in line
    listed = json.loads((await as_key("--json", "webhooks", "ls")).stdout)
    assert listed["webhooks"] == []


# -- 9. lists that show part of the total say so -------------------------------------------


async def test_truncated_lists_say_so_on_stderr_only(cli: Cli, relay: Any) -> None:
    for name in ("ann", "bo", "cy"):
        assert (await cli("recipients", "add", f"{name}@example.org")).exit_code == 0
    for _ in range(2):
        await send(cli)
    for host in ("a", "b"):
        assert (await cli("webhooks", "add", f"https://{host}.example.com/hook")).exit_code == 0
    await admin_post(relay, "/api/admin/workspaces", {"id": "ws-list"})
    for _ in range(2):
        assert (await cli("keys", "create", "ws-list")).exit_code == 0

    cases = [
        (["recipients", "ls", "--limit", "2"], 2, "showing 2 of 3; use --limit/--offset"),
        (["recipients", "ls", "--limit", "2", "--offset", "2"], 1, "showing 3 of 3;"),
        (["queue", "ls", "--limit", "1", "--offset", "1"], 1, "showing 2 of 2;"),
        (["webhooks", "ls", "--limit", "1"], 1, "showing 1 of 2;"),
        (["keys", "ls", "--workspace-id", "ws-list", "--limit", "1"], 1, "showing 1 of 2;"),
        (["keys", "ls", "--workspace-id", "ws-list", "--offset", "1"], 1, "showing 2 of 2;"),
    ]
    for args, rows, hint in cases:
        result = await cli(*args)
        assert result.exit_code == 0, result.output
        assert len(result.stdout.splitlines()) == 1 + rows, result.stdout
        assert result.stderr.startswith(hint), (args, result.stderr)
        as_json = await cli("--json", *args)
        assert as_json.stderr == "" and json.loads(as_json.stdout)["pagination"]["total"] > rows

    whole = await cli("recipients", "ls")
    assert whole.stderr == "" and len(whole.stdout.splitlines()) == 4
