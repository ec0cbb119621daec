"""The outbox provider writes exact .eml files atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.core.message import Recipient
from daemon.core.retry import SENT, TEMPORARY
from daemon.providers import OutboxProvider, build_providers
from daemon.providers.base import Envelope

RAW = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n.\r\n\xc3\xa9\r\n"


def envelope(mid: str = "msg-01TEST") -> Envelope:
    return Envelope(
        id=mid,
        mail_from="a@example.com",
        recipients=[Recipient("b@example.org"), Recipient("hidden@example.org")],
        raw=RAW,
    )


async def test_writes_the_stored_bytes_and_the_envelope(tmp_path: Path) -> None:
    p = OutboxProvider("outbox", tmp_path / "out")
    result = await p.send(envelope())
    assert result.outcome == SENT
    assert result.provider_message_id == "msg-01TEST.eml"
    assert [r.outcome for r in result.recipients] == [SENT, SENT]
    assert (tmp_path / "out" / "msg-01TEST.eml").read_bytes() == RAW
    meta = json.loads((tmp_path / "out" / "msg-01TEST.envelope.json").read_text())
    assert meta == {
        "id": "msg-01TEST",
        "mail_from": "a@example.com",
        "recipients": ["b@example.org", "hidden@example.org"],
    }
    # Nothing half-written is left behind.
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == [
        "msg-01TEST.eml",
        "msg-01TEST.envelope.json",
    ]
    assert (await p.check()).healthy


async def test_unwritable_outbox_is_a_temporary_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    p = OutboxProvider("outbox", blocker / "out")
    result = await p.send(envelope())
    assert result.outcome == TEMPORARY
    assert "cannot write to outbox" in result.reply
    health = await p.check()
    assert not health.healthy
    assert health.status == "unhealthy"


def test_default_and_configured_paths(make_config: Any, tmp_path: Path) -> None:
    default = build_providers(make_config())["outbox"]
    assert isinstance(default, OutboxProvider)
    assert default.directory == Path(make_config().data_dir) / "outbox"
    custom = build_providers(
        make_config(providers={"dev": {"type": "outbox", "path": str(tmp_path / "mail")}})
    )["dev"]
    assert isinstance(custom, OutboxProvider)
    assert custom.directory == tmp_path / "mail"
