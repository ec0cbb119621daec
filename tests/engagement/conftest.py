"""Fixtures for the engagement loop: a service with tracking and VERP on, both databases,
a running relayd configured the same way, and helpers to take a message to its rewrite."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from html import unescape
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.core.message import ClaimedMessage
from daemon.service import RelayService
from daemon.store import queue

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "s3cret-tracking-key-for-tests"
BASE = "https://t.example"
BOUNCE_DOMAIN = "bounces.relay.test"
ENGAGED = {
    "tracking": {"enabled": True, "base_url": BASE, "secret": SECRET},
    "bounces": {"domain": BOUNCE_DOMAIN, "soft_bounce_threshold": 3},
}


@pytest.fixture
async def service(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> AsyncIterator[RelayService]:
    """A started RelayService with tracking and VERP on (no workers: tests drive delivery)."""
    svc = RelayService(make_config(db_url, **ENGAGED), engine)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
async def client(service: RelayService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://relay.test", headers=AUTH
    ) as c:
        yield c


@pytest.fixture
async def anon(service: RelayService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as c:
        yield c


async def send(client: httpx.AsyncClient, **fields: Any) -> str:
    body: dict[str, Any] = {
        "from": "news@sender.example",
        "to": ["reader@example.org"],
        "subject": "News",
        "text_body": "Read https://example.com/text-link",
        "html_body": '<html><body><p><a href="https://example.com/a?x=1&amp;y=2">A</a> '
        '<a href="mailto:help@sender.example">mail</a> <a href="#top">top</a></p></body></html>',
    }
    body.update(fields)
    response = await client.post("/api/messages", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["data"]["message_id"])


async def prepared(service: RelayService, message_id: str) -> ClaimedMessage:
    """Claim the message as a worker would and run the pre-delivery rewrite on it."""
    now = service.clock()
    claimed = await service.committer.run(
        lambda c: queue.claim(c, now, 100, "test-worker", timedelta(minutes=5))
    )
    target = next(m for m in claimed if m.id == message_id)
    await service.committer.run(lambda c: queue.release(c, "test-worker", now))
    return await service.engagement.prepare(target)


def html_part(raw: bytes) -> str:
    for part in message_from_bytes(raw).walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode(part.get_content_charset() or "utf-8")
    raise AssertionError("no HTML part")


def text_part(raw: bytes) -> bytes:
    for part in message_from_bytes(raw).walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload
    raise AssertionError("no text part")


def links(html: str) -> list[str]:
    return [unescape(h) for h in re.findall(r'href="([^"]*)"', html)]


def pixel(html: str) -> str:
    match = re.search(r'<img src="([^"]*webhook/pixel[^"]*)"', html)
    assert match, html
    return unescape(match.group(1))


def local(url: str) -> str:
    """A tracking URL made relative, to call it on the in-process app."""
    assert url.startswith(BASE), url
    return url[len(BASE) :]


def headers_of(raw: bytes) -> Message:
    return message_from_bytes(raw)
