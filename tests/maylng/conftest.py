"""Fixtures for the Maylng /v1 API: a started service on SQLite and PostgreSQL, clients, helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.core import plans
from daemon.core.accounts import month_window
from daemon.service import RelayService
from daemon.store import tenancy as tenancy_store
from daemon.store.tenancy import usage_counters

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
async def service(
    engine: Engine, db_url: str, make_config: Callable[..., Any]
) -> AsyncIterator[RelayService]:
    """A started RelayService (no delivery workers: mail stays queued)."""
    config = make_config(
        db_url, accounts={"default_domain": "mail.example.com", "sending_domains": ["alt.test"]}
    )
    svc = RelayService(config, engine)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
async def client(service: RelayService) -> AsyncIterator[httpx.AsyncClient]:
    """A client without credentials, calling from 127.0.0.1 (a trusted network)."""
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as http:
        yield http


class Accounts:
    """Creates accounts and addresses through the API."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def create(self, plan: str = "free") -> tuple[dict[str, Any], dict[str, str]]:
        response = await self.client.post("/v1/accounts", json={"plan": plan})
        assert response.status_code == 201, response.text
        body = response.json()
        return body, {"Authorization": f"Bearer {body['api_key']}"}

    async def address(self, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
        body = {"type": "persistent", **fields}
        response = await self.client.post("/v1/email-addresses", headers=auth, json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def send(self, auth: dict[str, str], from_email_id: str, **fields: Any) -> httpx.Response:
        body = {
            "from_email_id": from_email_id,
            "to_recipients": ["rcpt@example.org"],
            "subject": "Hello",
            "text_content": "Hello there",
            **fields,
        }
        return await self.client.post("/v1/emails/send", headers=auth, json=body)


@pytest.fixture
def accounts(client: httpx.AsyncClient) -> Accounts:
    return Accounts(client)


def window_start(name: str, now: datetime) -> datetime:
    if name == "month":
        return month_window(now).start
    return plans.window_start(now, {"hour": plans.HOUR, "day": plans.DAY}[name])


async def set_counter(service: RelayService, key: str, start: datetime, count: int) -> None:
    """Put a usage counter at ``count`` (to test a limit without making that many calls)."""

    def op(conn: Any) -> None:
        conn.execute(
            usage_counters.delete().where(
                usage_counters.c.key == key, usage_counters.c.window_start == start
            )
        )
        conn.execute(
            usage_counters.insert().values(
                key=key, window_start=start, count=count, expires_at=start.replace(year=3000)
            )
        )

    await service.committer.run(op)


async def counter(service: RelayService, key: str, start: datetime) -> int:
    bucket = tenancy_store.Bucket(key, start, start, None)
    (value,) = await service.reader.run(lambda c: tenancy_store.peek(c, [bucket]))
    return value
