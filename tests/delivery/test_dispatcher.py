"""The dispatcher on SQLite and PostgreSQL, delivering to the outbox and to a real SMTP sink."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.core.message import PRIORITIES
from daemon.providers import SmtpProvider
from daemon.store import queue
from daemon.store.engine import make_engine
from daemon.store.models import messages
from tests.delivery.conftest import (
    RAW,
    Running,
    ServiceFactory,
    attempts,
    dsn_rows,
    new_message,
    recipients,
    wait_status,
)
from tests.sink import Sink

FAST_RETRY = {"retry_base": "50ms", "retry_max": "100ms"}


def sink_provider(sink: Sink, **extra: Any) -> dict[str, Any]:
    return {
        "sink": {"type": "smtp", "host": "127.0.0.1", "port": sink.port, "timeout": "5s", **extra}
    }


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with Sink() as s:
        yield s


async def test_delivers_to_the_outbox(
    engine: Engine, make_service: ServiceFactory, running: Running, tmp_path: Path
) -> None:
    service = await make_service(providers={"outbox": {"type": "outbox"}})
    await running.start(service)
    ids = [await service.enqueue(new_message()) for _ in range(3)]
    for mid in ids:
        row = await wait_status(engine, mid, "sent")
        assert row.provider == "outbox"
        assert row.provider_message_id == f"{mid}.eml"
        assert row.error is None
        assert (service.config.data_path / "outbox" / f"{mid}.eml").read_bytes() == RAW
        (attempt,) = attempts(engine, mid)
        assert (attempt.provider, attempt.outcome) == ("outbox", "sent")
        assert recipients(engine, mid) == {"b@example.org": ("sent", None)}


async def test_new_mail_wakes_the_workers_at_once(
    engine: Engine, make_service: ServiceFactory, running: Running, sink: Sink
) -> None:
    service = await make_service(queue={"process_interval": "60s"}, providers=sink_provider(sink))
    await running.start(service)
    await asyncio.sleep(0.1)  # the loop is now asleep on the 60s poll
    mid = await service.enqueue(new_message(("x@example.org", "y@example.org")))
    await wait_status(engine, mid, "sent", timeout=15.0)  # far sooner than the 60s poll
    (msg,) = sink.messages
    assert msg.rcpt_tos == ["x@example.org", "y@example.org"]
    assert msg.data == RAW


async def test_with_shared_writes_a_delivery_frees_its_slot_before_its_result_is_written(
    engine: Engine, make_service: ServiceFactory, running: Running, sink: Sink
) -> None:
    """``write_within`` (SMTP in worker processes): claims and results wait for a commit
    to join; a delivery's slot goes to the next one meanwhile, and stopping writes it."""
    # Room for two, one due: no backlog, so the claims wait for company as well.
    service = await make_service(queue={"concurrency": 2}, providers=sink_provider(sink))
    mid = await service.enqueue(new_message())
    dispatcher = await running.start(service, write_within=60.0)
    await asyncio.sleep(0.3)
    assert not sink.messages  # the claim waits for a commit to join...
    await service.committer.run(lambda c: None)  # ...such as this one
    deadline = asyncio.get_running_loop().time() + 15.0
    while not sink.messages and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert len(sink.messages) == 1
    # The sink has the message before the provider has its reply: wait for the slot.
    while dispatcher.active and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert dispatcher.active == 0  # the slot is free...
    with engine.connect() as conn:  # ...while the result still waits
        assert queue.get_message(conn, mid).status == "processing"
    await running.close()
    with engine.connect() as conn:
        assert queue.get_message(conn, mid).status == "sent"


async def test_with_shared_writes_a_backlog_is_claimed_at_once(
    engine: Engine, make_service: ServiceFactory, running: Running, sink: Sink
) -> None:
    service = await make_service(
        queue={"concurrency": 4, "batch_size": 1}, providers=sink_provider(sink)
    )
    ids = [await service.enqueue(new_message()) for _ in range(3)]
    await running.start(service, write_within=60.0)
    await asyncio.sleep(0.2)
    assert not sink.messages  # the first claim waits for a commit to join
    await service.committer.run(lambda c: None)
    # It came back full (batch_size 1): the next ones go at once, without company.
    for mid in ids:
        await wait_status(engine, mid, "processing", "sent", timeout=15.0)
    deadline = asyncio.get_running_loop().time() + 15.0
    while len(sink.messages) < 3 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert len(sink.messages) == 3


async def test_temporary_failures_back_off_then_fail(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    async with Sink(rcpt_replies={"b@example.org": "451 4.3.0 try later"}) as s:
        service = await make_service(
            queue={"max_retries": 2, **FAST_RETRY}, providers=sink_provider(s)
        )
        await running.start(service)
        mid = await service.enqueue(new_message())
        row = await wait_status(engine, mid, "failed")
        tries = attempts(engine, mid)
        assert [a.outcome for a in tries] == ["temporary"] * 3
        assert row.retry_count == 2
        assert "451 4.3.0 try later" in row.error
        gaps = [
            (b.attempted_at - a.attempted_at).total_seconds() for a, b in itertools.pairwise(tries)
        ]
        assert all(g >= 0.025 for g in gaps)  # backoff: base/2 at least
        assert recipients(engine, mid)["b@example.org"][0] == "failed"
        # Giving up is a final failure too: the sender gets a DSN with the 4.x.x status.
        (dsn,) = dsn_rows(engine)
        await wait_status(engine, dsn.id, "sent")
        report = message_from_bytes(s.messages[-1].data, policy=policy.default)
        assert s.messages[-1].mail_from == "<>"
        assert s.messages[-1].rcpt_tos == ["a@example.com"]
        blocks = cast(list[Message], list(report.iter_parts())[1].get_payload())
        assert blocks[1]["Status"] == "4.3.0"


async def test_message_retry_limit_overrides_config(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    service = await make_service(
        queue={"max_retries": 5, **FAST_RETRY},
        providers={"down": {"type": "smtp", "host": "127.0.0.1", "port": 1, "timeout": "1s"}},
    )
    await running.start(service)
    once = await service.enqueue(new_message(max_retries=0, mail_from=""))
    twice = await service.enqueue(new_message(max_retries=1, mail_from=""))
    await wait_status(engine, once, "failed")
    await wait_status(engine, twice, "failed")
    assert len(attempts(engine, once)) == 1
    assert len(attempts(engine, twice)) == 2


async def test_permanent_failure_fails_at_once_and_bounces(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    async with Sink(rcpt_replies={"gone@example.org": "550 5.1.1 no such user"}) as s:
        service = await make_service(queue={"max_retries": 3}, providers=sink_provider(s))
        await running.start(service)
        original = new_message(("gone@example.org",), dsn_envid="ENV+1", dsn_ret="FULL")
        mid = await service.enqueue(original)
        row = await wait_status(engine, mid, "failed")
        assert row.retry_count == 0
        assert [a.outcome for a in attempts(engine, mid)] == ["permanent"]
        assert recipients(engine, mid)["gone@example.org"] == ("failed", "550 5.1.1 no such user")
        (dsn,) = dsn_rows(engine)
        assert dsn.mail_from == ""
        await wait_status(engine, dsn.id, "sent")
    bounce = s.messages[-1]
    assert (bounce.mail_from, bounce.rcpt_tos) == ("<>", ["a@example.com"])
    report = message_from_bytes(bounce.data, policy=policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report["To"] == "a@example.com"
    _, status, returned = report.iter_parts()
    per_message, per_rcpt = cast(list[Message], status.get_payload())
    assert per_message["Original-Envelope-Id"] == "ENV+1"
    assert per_rcpt["Final-Recipient"] == "rfc822; gone@example.org"
    assert (per_rcpt["Action"], per_rcpt["Status"]) == ("failed", "5.1.1")
    assert returned.get_content_type() == "message/rfc822"
    assert RAW in bounce.data


async def test_partial_delivery_bounces_only_the_refused(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    async with Sink(rcpt_replies={"gone@example.org": "550 5.1.1 no such user"}) as s:
        service = await make_service(providers=sink_provider(s))
        await running.start(service)
        mid = await service.enqueue(new_message(("ok@example.org", "gone@example.org")))
        row = await wait_status(engine, mid, "sent")
        assert row.provider_message_id == "SINK1"
        statuses = recipients(engine, mid)
        assert statuses["ok@example.org"] == ("sent", None)
        assert statuses["gone@example.org"][0] == "failed"
        (dsn,) = dsn_rows(engine)
        await wait_status(engine, dsn.id, "sent")
    report = message_from_bytes(s.messages[-1].data, policy=policy.default)
    blocks = cast(list[Message], list(report.iter_parts())[1].get_payload())
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; gone@example.org"]
    # RET not given: only the headers come back.
    assert list(report.iter_parts())[2].get_content_type() == "text/rfc822-headers"


@pytest.mark.parametrize(
    ("mail_from", "notify"), [("", None), ("a@example.com", "NEVER"), ("a@example.com", "SUCCESS")]
)
async def test_no_bounce_when_not_wanted(
    engine: Engine,
    make_service: ServiceFactory,
    running: Running,
    mail_from: str,
    notify: str | None,
) -> None:
    async with Sink(rcpt_replies={"b@example.org": "550 5.1.1 no such user"}) as s:
        service = await make_service(providers=sink_provider(s))
        await running.start(service)
        mid = await service.enqueue(new_message(mail_from=mail_from, notify=notify))
        await wait_status(engine, mid, "failed")
        await asyncio.sleep(0.1)
    assert dsn_rows(engine) == []


async def test_auth_error_stops_without_retry(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    async with Sink(auth=("relay", "right")) as s:
        service = await make_service(
            queue={"max_retries": 3, **FAST_RETRY},
            providers=sink_provider(s, username="relay", password="wrong"),
        )
        await running.start(service)
        mid = await service.enqueue(new_message())
        row = await wait_status(engine, mid, "auth_error")
        await asyncio.sleep(0.2)
    assert [a.outcome for a in attempts(engine, mid)] == ["auth_error"]
    assert attempts(engine, mid)[0].code == 535
    assert "535" in row.error
    assert recipients(engine, mid)["b@example.org"][0] == "auth_error"
    assert dsn_rows(engine) == []


async def test_fails_over_to_the_next_provider(
    engine: Engine, make_service: ServiceFactory, running: Running, sink: Sink
) -> None:
    service = await make_service(
        providers={
            "down": {"type": "smtp", "host": "127.0.0.1", "port": 1, "priority": 1},
            "sink": {"type": "smtp", "host": "127.0.0.1", "port": sink.port, "priority": 2},
        }
    )
    await running.start(service)
    mid = await service.enqueue(new_message())
    row = await wait_status(engine, mid, "sent")
    assert row.provider == "sink"
    assert [(a.provider, a.outcome) for a in attempts(engine, mid)] == [
        ("down", "temporary"),
        ("sink", "sent"),
    ]
    assert len(sink.messages) == 1


async def test_high_priority_is_claimed_first(
    engine: Engine, make_service: ServiceFactory, running: Running, sink: Sink
) -> None:
    service = await make_service(
        queue={"batch_size": 1, "concurrency": 1}, providers=sink_provider(sink)
    )
    order = ["low", "normal", "high", "low", "high"]
    for name in order:
        raw = RAW.replace(b"Subject: hi", f"Subject: {name}".encode())
        await service.enqueue(new_message(raw=raw, priority=PRIORITIES[name]))
    await running.start(service)
    got = await sink.wait_for(len(order))
    subjects = [m.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in got]
    assert subjects == ["high", "high", "normal", "low", "low"]


async def test_scheduled_message_waits_until_due(
    engine: Engine, make_service: ServiceFactory, running: Running, sink: Sink
) -> None:
    service = await make_service(queue={"process_interval": "30s"}, providers=sink_provider(sink))
    await running.start(service)
    # Due in 3s: still scheduled well before then, even if the enqueue itself was slow.
    send_at = datetime.now(UTC) + timedelta(seconds=3.0)
    message = new_message(delay=3.0, status="scheduled", send_at=send_at)
    mid = await service.enqueue(message)
    await asyncio.sleep(0.6)
    with engine.connect() as conn:
        assert queue.get_message(conn, mid).status == "scheduled"
    assert sink.messages == []
    await wait_status(engine, mid, "sent", timeout=15.0)  # not the 30s poll
    with engine.connect() as conn:
        assert queue.get_message(conn, mid).processed_at >= send_at


async def test_expired_lease_is_delivered(
    engine: Engine, make_service: ServiceFactory, running: Running, sink: Sink
) -> None:
    service = await make_service(providers=sink_provider(sink))
    mid = await service.enqueue(new_message())
    now = datetime.now(UTC)
    with engine.begin() as conn:
        (claimed,) = queue.claim(conn, now, 10, "crashed-worker", timedelta(milliseconds=1))
    assert claimed.id == mid
    await asyncio.sleep(0.01)
    await running.start(service)
    await wait_status(engine, mid, "sent")
    assert len(sink.messages) == 1


async def test_two_daemons_deliver_each_message_once(
    engine: Engine, db_url: str, make_service: ServiceFactory, running: Running, sink: Sink
) -> None:
    second_engine = make_engine(db_url)
    second = None
    try:
        settings = {"queue": {"batch_size": 5, "concurrency": 4}, "providers": sink_provider(sink)}
        first = await make_service(**settings)
        second = await make_service(second_engine, **settings)
        ids = [await first.enqueue(new_message()) for _ in range(60)]
        one = await running.start(first, seed=1)
        two = await running.start(second, seed=2)
        await sink.wait_for(len(ids), timeout=30)
        for mid in ids:
            await wait_status(engine, mid, "sent")
        await asyncio.sleep(0.2)
        assert len(sink.messages) == len(ids)
        with engine.connect() as conn:
            assert all(len(queue.get_attempts(conn, mid)) == 1 for mid in ids)
        assert one.delivered + two.delivered == len(ids)
        assert one.owner != two.owner
    finally:
        await running.close()
        if second is not None:  # its writer's connection goes back before the pool is disposed
            await second.close()
        second_engine.dispose()


async def test_stop_lets_deliveries_finish_within_grace(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    async with Sink(data_delay=0.3) as s:
        service = await make_service(providers=sink_provider(s))
        dispatcher = await running.start(service)
        ids = [await service.enqueue(new_message()) for _ in range(3)]
        while dispatcher.active < 3:
            await asyncio.sleep(0.01)
        await dispatcher.stop(5.0)
        assert dispatcher.active == 0
        with engine.connect() as conn:
            assert [queue.get_message(conn, mid).status for mid in ids] == ["sent"] * 3
        # stop() also closed the provider: its pooled upstream sessions said QUIT.
        upstream = dispatcher.providers["sink"]
        assert isinstance(upstream, SmtpProvider)
        assert upstream.connections_opened == 3
        assert upstream.idle_connections == 0


async def test_stop_after_grace_releases_leases(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    async with Sink(data_delay=5.0) as s:
        service = await make_service(providers=sink_provider(s))
        dispatcher = await running.start(service)
        ids = [await service.enqueue(new_message()) for _ in range(3)]
        while dispatcher.active < 3:
            await asyncio.sleep(0.01)
        await dispatcher.stop(0.1)
        assert dispatcher.active == 0
        with engine.connect() as conn:
            rows = [queue.get_message(conn, mid) for mid in ids]
            owners = conn.execute(sa.select(messages.c.lease_owner).where(messages.c.id.in_(ids)))
            assert {o for (o,) in owners} == {None}
        assert [r.status for r in rows] == ["queued"] * 3
        assert s.messages == []


async def test_no_provider_defers(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    service = await make_service(
        queue={"max_retries": 0},
        providers={"off": {"type": "outbox", "enabled": False}},
    )
    await running.start(service)
    mid = await service.enqueue(new_message(mail_from=""))
    row = await wait_status(engine, mid, "failed")
    assert "no enabled provider" in row.error
    assert [(a.provider, a.outcome) for a in attempts(engine, mid)] == [("none", "temporary")]
