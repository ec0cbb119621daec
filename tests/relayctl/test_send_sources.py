"""`send` from an .eml file or stdin, with --var, and --csv with a bad row."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from tests.relayctl.conftest import Cli, run
from tests.relayctl.test_cli import show, wait_for_status

EML = b"""From: Alice <alice@example.com>
To: bob@example.org, carol@example.org
Cc: dave@example.org
Subject: Quarterly figures
X-Report-Id: q3
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

See attached.
--b1
Content-Type: text/csv; name="q3.csv"
Content-Disposition: attachment; filename="q3.csv"

a,b
1,2
--b1--
"""


async def test_send_an_eml_file_and_from_stdin(cli: Cli, relay: Any, tmp_path: Path) -> None:
    path = tmp_path / "q3.eml"
    path.write_bytes(EML)
    result = await cli("send", "--eml", str(path))
    assert result.exit_code == 0, result.output
    detail = await show(cli, result.stdout.strip())
    assert detail["from"] == "alice@example.com"
    assert detail["to"] == ["bob@example.org", "carol@example.org"]
    assert detail["cc"] == ["dave@example.org"]
    assert detail["subject"] == "Quarterly figures"
    assert detail["headers"]["X-Report-Id"] == "q3"
    assert detail["text_body"].strip() == "See attached."
    assert [a["filename"] for a in detail["attachments"]] == ["q3.csv"]

    piped = await asyncio.to_thread(
        run,
        [
            "--url",
            relay.base_url,
            "--token",
            relay.admin_token,
            "send",
            "--eml",
            "-",
            "--subject",
            "Overridden",
        ],
        None,
        EML.decode(),
    )
    assert piped.exit_code == 0, piped.output
    assert (await show(cli, piped.stdout.strip()))["subject"] == "Overridden"


async def test_send_with_variables_renders_them(cli: Cli, relay: Any) -> None:
    result = await cli(
        "send",
        "--from",
        "a@example.com",
        "--to",
        "b@example.org",
        "--subject",
        "Hi {{ name }}",
        "--text",
        "Code {{ code }}",
        "--var",
        "name=Bob",
        "--var",
        "code=42",
    )
    assert result.exit_code == 0, result.output
    message_id = result.stdout.strip()
    await wait_for_status(cli, message_id, "sent")
    eml = next(Path(relay.data_dir, "outbox").glob("*.eml")).read_bytes()
    assert b"Subject: Hi Bob" in eml and b"Code 42" in eml
    bad = await cli("send", "--from", "a@example.com", "--to", "b@example.org", "--var", "novalue")
    assert bad.exit_code == 2


async def test_csv_sends_one_message_per_row_and_reports_the_bad_one(
    cli: Cli, tmp_path: Path
) -> None:
    rows = tmp_path / "people.csv"
    rows.write_text("email,name\nann@example.org,Ann\nnot-an-address,Nobody\nbo@example.org,Bo\n")
    base = [
        "send",
        "--from",
        "news@example.com",
        "--subject",
        "Hello {{ name }}",
        "--text",
        "Dear {{ name }}",
        "--csv",
        str(rows),
    ]
    result = await cli(*base)
    assert result.exit_code == 6, result.output
    out = result.stdout
    assert "not-an-address" in out and "INVALID_EMAIL_FORMAT" in out
    counts = dict(line.split() for line in out.splitlines()[-2:])
    assert counts == {"accepted": "2", "refused": "1"}

    as_json = await cli("--json", *base)
    data = json.loads(as_json.stdout)
    assert (data["accepted"], data["refused"]) == (2, 1)
    bad = next(r for r in data["results"] if "error" in r)
    assert bad["row"] == 3 and bad["code"] == "INVALID_EMAIL_FORMAT"
    good = next(r for r in data["results"] if "message_id" in r)
    detail = await show(cli, good["message_id"])
    assert detail["subject"] == "Hello Ann"

    all_bad = tmp_path / "bad.csv"
    all_bad.write_text("email\nnope\n")
    assert (await cli(*base[:-1], str(all_bad))).exit_code == 1
    no_column = tmp_path / "nocol.csv"
    no_column.write_text("address\nann@example.org\n")
    missing = await cli(*base[:-1], str(no_column))
    assert missing.exit_code == 2 and "no 'email' column" in missing.stderr


async def test_csv_row_with_more_fields_than_the_header_is_a_usage_error(
    cli: Cli, relay: Any, tmp_path: Path
) -> None:
    rows = tmp_path / "ragged.csv"
    rows.write_text("email\nann@example.org\nbo@example.org,extra\n")
    result = await cli("send", "--from", "a@example.com", "--text", "hi", "--csv", str(rows))
    assert result.exit_code == 2, result.output
    assert "line 3 has more fields than the header" in result.stderr
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        listed = await http.get(
            "/api/messages", headers={"Authorization": f"Bearer {relay.admin_token}"}
        )
    assert listed.status_code == 200 and listed.json()["data"]["messages"] == []


async def test_eml_with_an_unknown_charset_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    eml = tmp_path / "odd.eml"
    eml.write_bytes(
        b"From: a@example.com\nTo: b@example.org\nContent-Type: text/plain; charset=bogus-x\n\nhi\n"
    )
    result = await cli("send", "--eml", str(eml))
    assert result.exit_code == 2, result.output
    assert "cannot decode the body" in result.stderr and "bogus-x" in result.stderr
