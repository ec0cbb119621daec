"""Fixtures for the in-process API tier: a started RelayService on SQLite and PostgreSQL,
and httpx clients talking to the Starlette app through ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.core.message import Attempt, Outcome
from daemon.service import RelayService
from daemon.store import queue

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def service(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> AsyncIterator[RelayService]:
    """A started RelayService (no delivery workers, so messages stay where the test puts them)."""
    # A 1 MiB limit keeps the size tests small.
    svc = RelayService(make_config(db_url, smtp={"max_size": 1024 * 1024}), engine)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
async def anon(service: RelayService) -> AsyncIterator[httpx.AsyncClient]:
    """A client without credentials."""
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
        yield client


@pytest.fixture
async def client(service: RelayService) -> AsyncIterator[httpx.AsyncClient]:
    """A client sending the admin token."""
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://relay.test", headers=AUTH
    ) as client:
        yield client


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The 6.1 error envelope with ``code``, and the request id echoed in the header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    error = body["error"]
    assert error["code"] == code
    assert set(error) == {"code", "message", "details", "request_id", "timestamp"}
    assert error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert error["timestamp"].endswith("Z")
    return dict(error)


def message(**fields: Any) -> dict[str, Any]:
    """A valid POST /api/messages body, with ``fields`` replacing or adding keys."""
    body: dict[str, Any] = {
        "from": "sender@example.com",
        "to": ["rcpt@example.org"],
        "subject": "Hello",
        "text_body": "Hello there",
    }
    body.update(fields)
    return body


async def send(client: httpx.AsyncClient, **fields: Any) -> str:
    """Send a message through the API and return its id."""
    response = await client.post("/api/messages", json=message(**fields))
    assert response.status_code == 202, response.text
    return str(response.json()["data"]["message_id"])


async def finish(
    service: RelayService,
    message_id: str,
    status: str = "failed",
    code: int = 550,
    refused: Collection[str] = (),
) -> None:
    """Take a queued message through a real claim and delivery outcome, ending in ``status``;
    a ``sent`` one with ``refused`` recipients failed for those (a partial delivery)."""
    now = service.clock()
    claimed = await service.committer.run(
        lambda c: queue.claim(c, now, 100, "test-worker", timedelta(minutes=5))
    )
    target = next(m for m in claimed if m.id == message_id)
    reply = "5.1.1 mailbox unavailable" if status != "sent" else "2.0.0 Ok"
    outcome = Outcome(
        message_id=message_id,
        lease_owner="test-worker",
        status=status,
        processed_at=now,
        retry_count=0,
        provider="outbox",
        provider_message_id="prov-1" if status == "sent" else None,
        error=None if status == "sent" else f"{code} {reply}",
        attempts=(
            Attempt("outbox", "sent" if status == "sent" else "permanent", now, code, reply, 12),
        ),
        recipient_status=tuple(
            (r.address, "sent", None)
            if status == "sent" and r.address not in refused
            else (r.address, "failed", "5.1.1 mailbox unavailable")
            for r in target.recipients
        ),
    )
    applied = await service.committer.run(lambda c: queue.apply_outcomes(c, [outcome]))
    assert applied == 1
    # Other messages claimed alongside go back to the queue untouched.
    await service.committer.run(lambda c: queue.release(c, "test-worker", now))
