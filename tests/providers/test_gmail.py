"""The gmail provider against the loopback Google OAuth + Gmail fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.config import ConfigError
from daemon.providers import GmailProvider, build_providers
from daemon.providers.google_token import ServiceAccount
from tests.providers.conftest import RAW, ServiceAccountKey, envelope
from tests.providers.fakes import Answer, GoogleFake


def provider(fake: GoogleFake, key: ServiceAccountKey, timeout: float = 5.0) -> GmailProvider:
    client = httpx.AsyncClient(base_url=fake.base_url, timeout=timeout)
    return GmailProvider("gm", ServiceAccount.parse(key.text), client, fake.token_url)


async def test_sends_raw_as_the_sender_with_one_token_per_sender(
    google: GoogleFake, service_account: ServiceAccountKey
) -> None:
    p = provider(google, service_account)
    try:
        first = await p.send(envelope())
        second = await p.send(envelope())
        other = await p.send(
            envelope(mail_from="bounces+x@example.com", raw=RAW.replace(b"Alice <alice", b"<bob"))
        )
    finally:
        await p.close()
    assert first.outcome == second.outcome == other.outcome == "sent"
    assert first.provider_message_id and first.provider_message_id != second.provider_message_id
    assert google.sent[0] == ("alice@example.com", RAW)
    assert google.sent[2][0] == "bob@example.com"
    tokens = google.calls("/token")
    assert [t["sub"] for t in tokens] == ["alice@example.com", "bob@example.com"]
    assert all(t["scopes"] == ["https://www.googleapis.com/auth/gmail.send"] for t in tokens)


async def test_envelope_only_recipients_go_in_bcc(
    google: GoogleFake, service_account: ServiceAccountKey
) -> None:
    p = provider(google, service_account)
    try:
        result = await p.send(envelope("bob@example.org", "hidden@example.net"))
        subset = await p.send(
            envelope(
                "bob@example.org", raw=RAW.replace(b"To: Bob", b"Cc: x@example.org\r\nTo: Bob")
            )
        )
    finally:
        await p.close()
    assert result.outcome == "sent"
    raw = google.sent[0][1]
    assert raw.startswith(b"Bcc: hidden@example.net\r\n")
    assert raw.endswith(RAW)
    # Gmail would also mail x@example.org, which the envelope leaves out: refused here.
    assert subset.outcome == "permanent"
    assert "x@example.org" in subset.reply
    assert len(google.sent) == 1


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (400, {"error": {"code": 400, "message": "Invalid To header"}}, "permanent"),
        (401, {"error": {"code": 401, "message": "Invalid Credentials"}}, "auth_error"),
        (403, {"error": {"code": 403, "errors": [{"reason": "forbidden"}]}}, "auth_error"),
        (
            403,
            {"error": {"code": 403, "errors": [{"reason": "userRateLimitExceeded"}]}},
            "temporary",
        ),
        (429, {"error": {"code": 429, "message": "Too many requests"}}, "temporary"),
        (500, {"error": {"code": 500, "message": "Backend Error"}}, "temporary"),
    ],
)
async def test_gmail_answers_are_classified(
    google: GoogleFake,
    service_account: ServiceAccountKey,
    status: int,
    body: dict[str, Any],
    outcome: str,
) -> None:
    # A 401 is retried once with a fresh token: only a second 401 is final.
    google.script(*[Answer(status, body=body)] * (2 if status == 401 else 1))
    p = provider(google, service_account)
    try:
        result = await p.send(envelope())
        again = await p.send(envelope())
    finally:
        await p.close()
    assert result.outcome == outcome
    assert again.outcome == "sent"
    # A refused token is dropped: the next message fetches a fresh one.
    assert len(google.calls("/token")) == (3 if status == 401 else 1)


@pytest.mark.parametrize(
    ("answer", "delegation", "outcome"),
    [
        (None, False, "auth_error"),  # unauthorized_client: delegation not granted
        (Answer(400, body={"error": "invalid_grant"}), True, "auth_error"),
        (Answer(503, body={"error": "backend"}), True, "temporary"),
        (Answer(delay=1.0), True, "temporary"),
    ],
)
async def test_token_endpoint_failures(
    google: GoogleFake,
    service_account: ServiceAccountKey,
    answer: Answer | None,
    delegation: bool,
    outcome: str,
) -> None:
    google.delegation = delegation
    if answer is not None:
        google.token_answers.append(answer)
    # A short timeout only where the answer is slow: elsewhere it would race the answer.
    slow = answer is not None and answer.delay > 0
    p = provider(google, service_account, timeout=0.3 if slow else 5.0)
    try:
        result = await p.send(envelope())
    finally:
        await p.close()
    assert result.outcome == outcome
    assert google.sent == []


async def test_unknown_key_is_refused_by_google(google: GoogleFake) -> None:
    from tests.providers.conftest import make_service_account

    stranger = make_service_account(google.client_email)  # same account, another key
    p = provider(google, stranger)
    try:
        result = await p.send(envelope())
        health = await p.check()
    finally:
        await p.close()
    assert result.outcome == "auth_error"
    assert "Invalid JWT Signature" in result.reply
    assert not health.healthy


async def test_health_check_fetches_a_token(
    google: GoogleFake, service_account: ServiceAccountKey
) -> None:
    p = provider(google, service_account)
    try:
        health = await p.check()
    finally:
        await p.close()
    assert health.healthy and health.detail == service_account.email
    assert google.calls("/token")[0]["sub"] is None


def test_config_from_file_and_bad_keys(
    make_config: Any, tmp_path: Path, service_account: ServiceAccountKey
) -> None:
    path = tmp_path / "sa.json"
    path.write_text(service_account.text)
    config = make_config(
        providers={"gm": {"type": "gmail", "service_account_file": str(path), "token_url": "x"}}
    )
    built = build_providers(config)
    gm = built["gm"]
    assert isinstance(gm, GmailProvider)
    assert gm.account.email == service_account.email
    assert gm.token_url == "x"
    assert str(gm.client.base_url).rstrip("/") == "https://gmail.googleapis.com"
    broken = make_config(providers={"gm": {"type": "gmail", "service_account_json": "{}"}})
    with pytest.raises(ConfigError, match="type"):
        build_providers(broken)
    with pytest.raises(ConfigError, match="service_account_file"):
        build_providers(make_config(providers={"gm": {"type": "gmail"}}))
