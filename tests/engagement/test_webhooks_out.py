"""Signed webhooks out: CRUD scoped to the workspace, the signature a receiver checks,
retries against a failing receiver, the dead-letter list and replay, SSRF refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.config import WebhooksConfig
from daemon.core import webhooks as policy
from daemon.core.durations import Duration
from daemon.delivery.webhooks import WebhookSender
from daemon.service import RelayService
from tests.api.conftest import assert_envelope
from tests.api.tenants import key_headers, make_key, make_workspace
from tests.engagement.conftest import AUTH, ENGAGED, html_part, local, pixel, prepared, send
from tests.engagement.receiver import Receiver


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def service(
    engine: Engine, db_url: str, make_config: Callable[..., Any], clock: Clock
) -> AsyncIterator[RelayService]:
    config = make_config(
        db_url, **ENGAGED, webhooks={"allowlist": ["127.0.0.1"], "retry_delays": ["1m", "2m"]}
    )
    svc = RelayService(config, engine, clock=clock)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
async def client(service: RelayService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://r", headers=AUTH) as c:
        yield c


@pytest.fixture
async def sender(service: RelayService) -> AsyncIterator[WebhookSender]:
    s = WebhookSender(service)
    yield s
    await s.stop()


async def register(client: httpx.AsyncClient, url: str, types: list[str]) -> dict[str, Any]:
    response = await client.post("/api/webhooks", json={"url": url, "event_types": types})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def an_open(client: httpx.AsyncClient, service: RelayService) -> str:
    mid = await send(client)
    anon = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)), base_url="http://r"
    )
    async with anon:
        assert (
            await anon.get(local(pixel(html_part((await prepared(service, mid)).raw))))
        ).status_code == 200
    return mid


async def test_crud_is_scoped_and_secret_shown_once(client: httpx.AsyncClient) -> None:
    created = await register(client, "https://hooks.example.com/relay", ["opened", "clicked"])
    assert created["secret"].startswith("whsec_") and created["workspace_id"] == "default"
    shown = (await client.get(f"/api/webhooks/{created['id']}")).json()["data"]
    assert "secret" not in shown and shown["event_types"] == ["clicked", "opened"]
    listed = (await client.get("/api/webhooks")).json()["data"]
    assert [w["id"] for w in listed["webhooks"]] == [created["id"]]
    assert created["secret"] not in json.dumps(listed)
    updated = await client.put(f"/api/webhooks/{created['id']}", json={"enabled": False})
    assert updated.json()["data"]["enabled"] is False
    for body, field in (
        ({"url": "ftp://x", "event_types": ["opened"]}, "url"),
        ({"url": "https://u:p@x.example/", "event_types": ["opened"]}, "url"),
        ({"url": "https://x.example/", "event_types": ["nope"]}, "event_types"),
        ({"url": "https://x.example/", "event_types": []}, "event_types"),
    ):
        error = assert_envelope(
            await client.post("/api/webhooks", json=body), 400, "INVALID_REQUEST"
        )
        assert error["details"]["field"] == field
    assert_envelope(
        await client.post("/api/webhooks", json={"url": "https://x/"}),
        400,
        "MISSING_REQUIRED_FIELD",
    )
    # Another workspace's key sees none of it.
    await make_workspace(client, "ws-b")
    key = (await make_key(client, "ws-b"))["key"]
    other = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/api/webhooks", headers=other)).json()["data"]["webhooks"] == []
    assert_envelope(
        await client.get(f"/api/webhooks/{created['id']}", headers=key_headers(key)),
        404,
        "WEBHOOK_NOT_FOUND",
    )
    assert_envelope(
        await client.delete(f"/api/webhooks/{created['id']}", headers=other),
        404,
        "WEBHOOK_NOT_FOUND",
    )
    assert (await client.delete(f"/api/webhooks/{created['id']}")).status_code == 200
    assert_envelope(await client.get(f"/api/webhooks/{created['id']}"), 404, "WEBHOOK_NOT_FOUND")


async def test_delivery_is_signed(
    client: httpx.AsyncClient, service: RelayService, sender: WebhookSender
) -> None:
    async with Receiver() as receiver:
        hook = await register(client, receiver.url, ["opened"])
        await register(client, receiver.url + "/clicks", ["clicked"])  # not for opens
        mid = await an_open(client, service)
        assert await sender.run_once() == 1
        (request,) = await receiver.wait_for(1)
    assert request.method == "POST" and request.path == "/hook"
    event = json.loads(request.body)
    assert event["type"] == "opened" and event["data"]["message_id"] == mid
    assert event["data"]["email"] == "reader@example.org"
    header = request.headers["x-relay-signature"]
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    expected = hmac.new(hook["secret"].encode(), f"{t}.".encode() + request.body, hashlib.sha256)
    assert v1 == expected.hexdigest()
    assert policy.verify(hook["secret"], header, request.body, int(t))
    assert not policy.verify("whsec_other", header, request.body, int(t))
    assert request.headers["x-relay-event"] == "opened"


async def test_retries_dead_letter_and_replay(
    client: httpx.AsyncClient, service: RelayService, sender: WebhookSender, clock: Clock
) -> None:
    async with Receiver(statuses=[500, 503, 500]) as receiver:
        await register(client, receiver.url, ["*"])
        await an_open(client, service)
        assert await sender.run_once() == 1
        assert await sender.run_once() == 0  # not due before the first backoff step
        clock.now += timedelta(minutes=1)
        assert await sender.run_once() == 1
        clock.now += timedelta(minutes=2)
        assert await sender.run_once() == 1
        assert len(receiver.requests) == 3
        dead = (await client.get("/api/webhooks/deliveries", params={"status": "dead"})).json()
        (entry,) = dead["data"]["deliveries"]
        assert (entry["attempts"], entry["last_status_code"]) == (3, 500)
        assert entry["event"]["type"] == "opened"
        clock.now += timedelta(hours=10)
        assert await sender.run_once() == 0  # dead letters are not retried by themselves
        replayed = await client.post(f"/api/webhooks/deliveries/{entry['id']}/replay")
        assert replayed.json()["data"] == {"replayed": 1}
        assert await sender.run_once() == 1
        assert len(receiver.requests) == 4
        delivered = await client.get("/api/webhooks/deliveries", params={"status": "delivered"})
        assert [d["id"] for d in delivered.json()["data"]["deliveries"]] == [entry["id"]]
    assert_envelope(
        await client.post(f"/api/webhooks/deliveries/{entry['id']}/replay"),
        404,
        "WEBHOOK_NOT_FOUND",
    )


def test_default_schedule_retries_for_eight_hours() -> None:
    delays = [Duration.parse(d).seconds for d in WebhooksConfig().retry_delays]
    assert sum(delays) >= 8 * 3600
    now = datetime.now(UTC)
    assert policy.next_attempt(len(delays), delays, now) is not None
    assert policy.next_attempt(len(delays) + 1, delays, now) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://[::1]:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://0.0.0.0:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://100.64.0.1/hook",
    ],
)
async def test_ssrf_refused_without_allowlist(
    client: httpx.AsyncClient, service: RelayService, sender: WebhookSender, url: str
) -> None:
    import dataclasses
    from urllib.parse import urlsplit

    def allow(entries: list[str]) -> None:  # as a SIGHUP with another allowlist does
        section = dataclasses.replace(service.config.webhooks, allowlist=entries)
        service.reconfigure(dataclasses.replace(service.config, webhooks=section))

    async with Receiver() as receiver:
        target = url.format(port=receiver.port)
        # An address (or localhost) delivery would refuse is refused when it is registered.
        allow([])
        refused = await client.post(
            "/api/webhooks", json={"url": target, "event_types": ["opened"]}
        )
        error = assert_envelope(refused, 400, "INVALID_REQUEST")
        assert "webhooks.allowlist" in error["message"]
        assert (await client.get("/api/webhooks")).json()["data"]["webhooks"] == []
        # Registered while the allowlist named it, then the allowlist changed: every
        # delivery and test is refused, and nothing reaches the receiver.
        allow([urlsplit(target).hostname or ""])
        hook = await register(client, target, ["opened"])
        allow([])
        await an_open(client, service)
        assert await sender.run_once() == 1
        tested = (await client.post(f"/api/webhooks/{hook['id']}/test")).json()["data"]
        assert receiver.requests == []
    assert tested["delivered"] is False and tested["error"].startswith("refused")
    pending = (await client.get("/api/webhooks/deliveries")).json()["data"]["deliveries"]
    assert pending[0]["last_error"].startswith("refused")


async def test_address_spellings_resolvers_accept_are_refused_when_registered(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    import dataclasses

    section = dataclasses.replace(service.config.webhooks, allowlist=["10.0.0.0/8"])
    service.reconfigure(dataclasses.replace(service.config, webhooks=section))
    for url in ("http://127.1/hook", "http://0x7f.0.0.1/hook", "http://2130706433/hook"):
        refused = await client.post("/api/webhooks", json={"url": url, "event_types": ["*"]})
        assert refused.status_code == 400, (url, refused.text)
        assert "loopback" in refused.json()["error"]["message"]
    # A name is decided when it is resolved, at delivery; an allowlisted address is fine.
    await register(client, "https://hooks.example.com/relay", ["*"])
    await register(client, "http://10.0.0.5:9/hook", ["*"])


async def test_redirects_are_checked_too(
    client: httpx.AsyncClient, service: RelayService, sender: WebhookSender
) -> None:
    async with Receiver(statuses=[302, 302], location="http://169.254.169.254/latest/") as r:
        hook = await register(client, r.url, ["opened"])
        tested = (await client.post(f"/api/webhooks/{hook['id']}/test")).json()["data"]
        assert tested["delivered"] is False and "169.254.169.254" in tested["error"]
        r.location = "http://127.0.0.2:9/elsewhere"
        tested = (await client.post(f"/api/webhooks/{hook['id']}/test")).json()["data"]
        assert tested["delivered"] is False and "127.0.0.2" in tested["error"]
        ok = (await client.post(f"/api/webhooks/{hook['id']}/test")).json()["data"]
        assert ok == {
            "webhook_id": hook["id"],
            "delivered": True,
            "status_code": 200,
            "error": None,
        }
        assert json.loads(r.requests[-1].body)["type"] == "test"
