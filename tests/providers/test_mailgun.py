"""The mailgun provider against the loopback Mailgun fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.config import ConfigError
from daemon.providers import MailgunProvider, build_providers
from daemon.providers.mailgun import REGIONS
from tests.providers.conftest import RAW, envelope
from tests.providers.fakes import Answer, MailgunFake


def provider(fake: MailgunFake, key: str = "key-test", timeout: float = 5.0) -> MailgunProvider:
    client = httpx.AsyncClient(base_url=fake.base_url, timeout=timeout)
    return MailgunProvider("mg", key, "mg.example.com", client)


async def test_sends_the_exact_bytes_with_every_recipient(mailgun: MailgunFake) -> None:
    p = provider(mailgun)
    try:
        result = await p.send(envelope("bob@example.org", "carol@example.net"))
    finally:
        await p.close()
    assert result.outcome == "sent"
    assert result.provider_message_id == "20240115.1@mg.example.com"
    assert [r.outcome for r in result.recipients] == ["sent", "sent"]
    assert mailgun.messages == [(["bob@example.org", "carol@example.net"], RAW)]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, "permanent"),
        (401, "auth_error"),
        (403, "auth_error"),
        (404, "auth_error"),
        (413, "permanent"),
        (429, "temporary"),
        (500, "temporary"),
        (503, "temporary"),
    ],
)
async def test_status_codes_are_classified(mailgun: MailgunFake, status: int, outcome: str) -> None:
    mailgun.script(Answer(status, body={"message": "refused by fake"}))
    p = provider(mailgun)
    try:
        result = await p.send(envelope())
    finally:
        await p.close()
    assert result.outcome == outcome
    assert result.code == status
    assert "refused by fake" in result.reply


async def test_wrong_key_is_auth_error(mailgun: MailgunFake) -> None:
    p = provider(mailgun, key="key-wrong")
    try:
        result = await p.send(envelope())
        health = await p.check()
    finally:
        await p.close()
    assert result.outcome == "auth_error"
    assert result.reply == "401 Forbidden"
    assert not health.healthy
    assert mailgun.messages == []


async def test_slow_and_silent_servers_time_out_as_temporary(mailgun: MailgunFake) -> None:
    mailgun.script(Answer(delay=1.0), Answer(hang=True))
    p = provider(mailgun, timeout=0.3)
    try:
        slow = await p.send(envelope())
        silent = await p.send(envelope())
    finally:
        await p.close()
    assert slow.outcome == silent.outcome == "temporary"
    assert slow.reply.startswith("timeout")


async def test_connection_refused_is_temporary(unused_tcp_port: int) -> None:
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{unused_tcp_port}")
    p = MailgunProvider("mg", "k", "mg.example.com", client)
    try:
        result = await p.send(envelope())
    finally:
        await p.close()
    assert result.outcome == "temporary"
    assert "ConnectError" in result.reply


async def test_health_check_looks_the_domain_up(mailgun: MailgunFake) -> None:
    p = provider(mailgun)
    try:
        healthy = await p.check()
        mailgun.domains["mg.example.com"] = "unverified"
        unverified = await p.check()
    finally:
        await p.close()
    assert healthy.healthy and healthy.detail == "domain mg.example.com is active"
    assert not unverified.healthy and "unverified" in unverified.detail
    assert [r["path"] for r in mailgun.requests] == ["/v3/domains/mg.example.com"] * 2


def test_config_regions_and_secret_file(make_config: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "mailgun.key"
    key_file.write_text("key-from-file\n")
    config = make_config(
        providers={
            "us": {"type": "mailgun", "api_key": "k", "domain": "mg.example.com"},
            "eu": {
                "type": "mailgun",
                "api_key_file": str(key_file),
                "domain": "mg.example.eu",
                "region": "EU",
                "timeout": "5s",
                "max_connections": 4,
            },
        }
    )
    built = build_providers(config)
    us, eu = built["us"], built["eu"]
    assert isinstance(us, MailgunProvider) and isinstance(eu, MailgunProvider)
    assert str(us.client.base_url).rstrip("/") == REGIONS["US"]
    assert str(eu.client.base_url).rstrip("/") == REGIONS["EU"]
    assert eu.client.timeout.read == 5.0


async def test_key_from_a_file_reaches_the_api(
    mailgun: MailgunFake, make_config: Any, tmp_path: Path
) -> None:
    key_file = tmp_path / "mailgun.key"
    key_file.write_text("key-test\n")
    config = make_config(
        providers={
            "mg": {
                "type": "mailgun",
                "api_key_file": str(key_file),
                "domain": "mg.example.com",
                "base_url": mailgun.base_url,
            }
        }
    )
    p = build_providers(config)["mg"]
    try:
        result = await p.send(envelope())
    finally:
        await p.close()
    assert result.outcome == "sent"


def test_missing_key_is_a_config_error(make_config: Any) -> None:
    config = make_config(providers={"mg": {"type": "mailgun", "domain": "mg.example.com"}})
    with pytest.raises(ConfigError, match=r"providers\.mg\.api_key"):
        build_providers(config)


async def test_quoted_local_parts_reach_mailgun_as_those_addresses(mailgun: MailgunFake) -> None:
    """RFC 5321 quoted local parts (accepted at ingest) used to be refused before any request.
    Mailgun reads each ``to`` field as an RFC 5322 address list (commas between recipients),
    so such an address goes in angle brackets: a space or a comma inside the quotes stays
    part of that one address."""
    rcpts = ('"john doe"@example.com', '"doe, john"@example.com', "bob@example.org")
    p = provider(mailgun)
    try:
        result = await p.send(envelope(*rcpts))
    finally:
        await p.close()
    assert result.outcome == "sent", result.reply
    assert [r.outcome for r in result.recipients] == ["sent"] * 3
    assert mailgun.messages == [(list(rcpts), RAW)]


async def test_an_address_that_cannot_be_a_form_field_fails_alone(mailgun: MailgunFake) -> None:
    p = provider(mailgun)
    try:
        result = await p.send(envelope("bob@example.org", "x\r\nto: y@example.com"))
    finally:
        await p.close()
    assert result.outcome == "sent"
    assert [(r.address, r.outcome) for r in result.recipients] == [
        ("bob@example.org", "sent"),
        ("x\r\nto: y@example.com", "permanent"),
    ]
    assert mailgun.messages == [(["bob@example.org"], RAW)]
