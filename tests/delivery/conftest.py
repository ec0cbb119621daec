"""Fixtures for delivery tests: a started RelayService per test, dispatchers stopped at
the end, message builders, waiting."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.core.ids import message_id
from daemon.core.message import NewMessage, Recipient
from daemon.delivery.dispatcher import Dispatcher
from daemon.providers import build_providers
from daemon.providers.base import Provider
from daemon.service import RelayService
from daemon.store import queue
from daemon.store.models import messages

RAW = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"

ServiceFactory = Callable[..., Awaitable[RelayService]]


def new_message(
    rcpts: tuple[str, ...] = ("b@example.org",),
    *,
    mail_from: str = "a@example.com",
    raw: bytes = RAW,
    delay: float = 0.0,
    notify: str | None = None,
    **kw: Any,
) -> NewMessage:
    now = datetime.now(UTC)
    return NewMessage(
        id=message_id(int(now.timestamp() * 1000)),
        uuid=str(uuid.uuid4()),
        mail_from=mail_from,
        recipients=[Recipient(r, notify, None) for r in rcpts],
        raw=raw,
        queued_at=now,
        next_attempt_at=now + timedelta(seconds=delay),
        subject="hi",
        **kw,
    )


@pytest.fixture
async def make_service(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> AsyncIterator[ServiceFactory]:
    """``await make_service(queue={...}, providers={...})``: a started service on the test DB."""
    started: list[RelayService] = []

    async def factory(eng: Engine | None = None, **sections: Any) -> RelayService:
        service = RelayService(make_config(db_url, **sections), eng or engine)
        await service.start()
        started.append(service)
        return service

    yield factory
    for service in reversed(started):
        await service.close()


async def wait_status(
    engine: Engine, message_id: str, *statuses: str, timeout: float = 10.0
) -> Any:
    """Poll until the message reaches one of ``statuses``; return its row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    row = None
    while loop.time() < deadline:
        with engine.connect() as conn:
            row = queue.get_message(conn, message_id)
        if row is not None and row.status in statuses:
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"{message_id} is {row.status if row else 'missing'}, wanted one of {statuses}"
    )


def attempts(engine: Engine, mid: str) -> list[Any]:
    with engine.connect() as conn:
        return queue.get_attempts(conn, mid)


def recipients(engine: Engine, mid: str) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        return {r.address: (r.status, r.error) for r in queue.get_recipients(conn, mid)}


def dsn_rows(engine: Engine) -> list[Any]:
    """The DSNs relayd queued (messages from its own null sender), oldest first."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(messages).where(messages.c.source == "dsn").order_by(messages.c.id)
            ).all()
        )


class Running:
    """Dispatchers started by a test, stopped at its end (each closes its providers)."""

    def __init__(self) -> None:
        self.dispatchers: list[Dispatcher] = []

    async def start(
        self, service: RelayService, seed: int = 1, write_within: float = 0.0
    ) -> Dispatcher:
        providers: dict[str, Provider] = build_providers(service.config)
        dispatcher = Dispatcher(service, providers, random.Random(seed), write_within)
        await dispatcher.start()
        self.dispatchers.append(dispatcher)
        return dispatcher

    async def close(self) -> None:
        dispatchers, self.dispatchers = self.dispatchers, []
        for dispatcher in dispatchers:
            await dispatcher.stop(1.0)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    yield r
    await r.close()
