"""Live figures on a real relayd: processing stats, the SSE stream and /metrics."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from daemon.server import Server
from tests.api.conftest import AUTH, message
from tests.api.live import http, live_relay, wait_final

__all__ = ["live_relay"]


async def deliver(client: httpx.AsyncClient, n: int) -> None:
    ids = []
    for _ in range(n):
        response = await client.post("/api/messages", json=message())
        assert response.status_code == 202
        ids.append(response.json()["data"]["message_id"])
    for message_id in ids:
        assert (await wait_final(client, message_id))["status"] == "sent"


def _smtp_send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", ["b@example.org"], b"Subject: hi\r\n\r\nhello\r\n")


async def test_stats_report_recent_deliveries(live_relay: Server) -> None:
    async with http(live_relay) as client:
        await deliver(client, 3)
        data = (await client.get("/api/stats")).json()["data"]
    assert data["queue"]["sent"] == 3
    assert data["processing"]["rate_per_minute"] == 3
    assert (
        data["processing"]["p99_processing_time_ms"] >= data["processing"]["avg_processing_time_ms"]
    )
    outbox = data["providers"]["outbox"]
    assert outbox["status"] == "healthy"
    assert outbox["success_rate"] == 1.0
    assert isinstance(outbox["avg_latency_ms"], int)
    assert data["rate_limits"]["global"]["used_today"] == 3


async def _metric_value(client: httpx.AsyncClient, line_start: str) -> float:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


async def test_realtime_streams_metrics_and_ends_when_the_client_leaves(
    live_relay: Server,
) -> None:
    async with http(live_relay) as client:
        later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        scheduled = await client.post("/api/messages", json=message(scheduling={"send_at": later}))
        assert scheduled.status_code == 202, scheduled.text
        events: list[tuple[str, dict[str, Any]]] = []
        async with client.stream("GET", "/api/stats/realtime") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = ""
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))
                    if len(events) == 1:
                        # The stream is open: the server counts it.
                        assert await _metric_value(client, "relay_realtime_clients") == 1.0
                    if len(events) == 2:
                        break
        assert [e[0] for e in events] == ["metrics", "metrics"]
        first, second = events[0][1], events[1][1]
        assert set(first) == {"timestamp", "emails_per_second", "queue_depth", "active_processors"}
        assert first["queue_depth"] == 1  # the scheduled message is pending
        assert isinstance(first["active_processors"], int)
        gap = datetime.fromisoformat(second["timestamp"]) - datetime.fromisoformat(
            first["timestamp"]
        )
        # One a second, stamped to the second: 1 or 2 apart, 3 when the server was late
        # by up to a second more (a loaded machine).
        assert 0 < gap.total_seconds() <= 3
        # The server side of the stream ends once the client has gone.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if await _metric_value(client, "relay_realtime_clients") == 0.0:
                break
            await asyncio.sleep(0.05)
        assert await _metric_value(client, "relay_realtime_clients") == 0.0


async def test_metrics_exposition_from_loopback_without_a_token(live_relay: Server) -> None:
    async with http(live_relay) as client:
        await deliver(client, 2)
        await asyncio.to_thread(_smtp_send, live_relay.smtp_port)
    async with httpx.AsyncClient(base_url=live_relay.base_url) as anon:
        response = await anon.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.text
    for line in (
        'relay_messages_accepted_total{source="api",workspace="default"} 2.0',
        'relay_messages_accepted_total{source="smtp",workspace="default"} 1.0',
        "relay_smtp_transaction_seconds_count 1.0",
        'relay_delivery_attempts_total{outcome="sent",provider="outbox"}',
    ):
        assert line in text, line
    assert 'relay_messages_sent_total{provider="outbox",workspace="default"}' in text
    assert 'relay_delivery_seconds_count{provider="outbox"}' in text
    assert 'relay_queue_depth{status="sent"}' in text
    assert 'relay_queue_depth{status="auth_error"} 0.0' in text


async def test_metrics_outside_trusted_networks_need_the_admin_token(
    make_config: Callable[..., Any], sqlite_url: str
) -> None:
    server = Server(make_config(sqlite_url, http={"metrics_networks": ["10.0.0.0/8"]}))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as anon:
            refused = await anon.get("/metrics")
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "AUTH_REQUIRED"
            wrong = await anon.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            allowed = await anon.get("/metrics", headers=AUTH)
            assert allowed.status_code == 200
            assert "relay_queue_depth" in allowed.text
    finally:
        await server.stop()
