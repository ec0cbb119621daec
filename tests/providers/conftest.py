"""Fixtures for provider tests: running API fakes and a freshly generated service account."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from daemon.core.message import Recipient
from daemon.providers.base import Envelope
from tests.providers.fakes import GoogleFake, MailgunFake, SendgridFake

RAW = (
    b"From: Alice <alice@example.com>\r\nTo: Bob <bob@example.org>\r\n"
    b"Subject: Hello\r\nMessage-ID: <m1@example.com>\r\nX-Campaign: spring\r\n\r\n"
    b"Hi Bob.\r\n"
)


def envelope(*rcpts: str, raw: bytes = RAW, mail_from: str = "alice@example.com") -> Envelope:
    return Envelope(
        id="msg-test",
        mail_from=mail_from,
        recipients=[Recipient(r) for r in (rcpts or ("bob@example.org",))],
        raw=raw,
    )


@dataclass(frozen=True)
class ServiceAccountKey:
    """A generated service-account key file and the public half the fake verifies with."""

    info: dict[str, Any]
    public_pem: bytes

    @property
    def text(self) -> str:
        return json.dumps(self.info)

    @property
    def email(self) -> str:
        return str(self.info["client_email"])


def make_service_account(email: str = "relay@proj-1.iam.gserviceaccount.com") -> ServiceAccountKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": "proj-1",
        "private_key_id": "kid-1",
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return ServiceAccountKey(info, public)


@pytest.fixture(scope="session")
def service_account() -> ServiceAccountKey:
    return make_service_account()


@pytest.fixture
async def mailgun() -> AsyncIterator[MailgunFake]:
    fake = MailgunFake()
    async with fake:
        yield fake
    assert fake.problems == []


@pytest.fixture
async def google(service_account: ServiceAccountKey) -> AsyncIterator[GoogleFake]:
    fake = GoogleFake(service_account.email, service_account.public_pem, "kid-1")
    async with fake:
        yield fake
    assert fake.problems == []


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendgridFake]:
    fake = SendgridFake()
    async with fake:
        yield fake
    assert fake.problems == []
