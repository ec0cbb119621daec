"""Queue and delivery semantics against a real SMTP sink: leases, odd replies, DSN targets."""

from __future__ import annotations

import asyncio
from email import message_from_bytes, policy
from email.message import Message
from typing import Any, cast

import pytest
from sqlalchemy.engine import Engine

from daemon.store.engine import make_engine
from tests.delivery.conftest import (
    Running,
    ServiceFactory,
    attempts,
    dsn_rows,
    new_message,
    recipients,
    wait_status,
)
from tests.delivery.test_dispatcher import FAST_RETRY, sink_provider
from tests.sink import Sink


async def test_a_delivery_slower_than_its_lease_is_not_taken_over(
    engine: Engine, db_url: str, make_service: ServiceFactory, running: Running
) -> None:
    """A live worker keeps its lease: another daemon's reaper must not requeue the message
    while the first still talks to the upstream, or the recipient gets it twice."""
    second_engine = make_engine(db_url)
    try:
        async with Sink(data_delay=2.5) as s:
            settings: dict[str, Any] = {
                "queue": {"lease": "1s", "process_interval": "100ms"},
                "providers": sink_provider(s),
            }
            first = await make_service(**settings)
            second = await make_service(second_engine, **settings)
            mid = await first.enqueue(new_message())
            await running.start(first, seed=1)
            await wait_status(engine, mid, "processing")
            await running.start(second, seed=2)
            await wait_status(engine, mid, "sent", timeout=15.0)
            await asyncio.sleep(3.0)  # a second delivery, if any, would arrive by now
            assert len(s.messages) == 1
            assert [a.outcome for a in attempts(engine, mid)] == ["sent"]
            await running.close()
            await second.close()
    finally:
        second_engine.dispose()


@pytest.mark.parametrize(
    "reply",
    [
        b"550 5.1.1 utilisateur inconnu: \xc3\xa9l\xc3\xa8ve",  # UTF-8
        b"550 5.1.1 Benutzer unbekannt: M\xfcller",  # Latin-1: not UTF-8 at all
    ],
)
async def test_a_non_ascii_refusal_is_recorded_and_bounced_once(
    engine: Engine, make_service: ServiceFactory, running: Running, reply: bytes
) -> None:
    """A refusal whose text is not ASCII must not lose the round's outcome: the accepted
    recipient is delivered once, the refused one fails and gets its DSN."""
    replies = {"gone@example.org": cast(str, reply)}  # bytes go out on the wire as they are
    async with Sink(rcpt_replies=replies) as s:
        service = await make_service(
            queue={"lease": "1s", "process_interval": "100ms"}, providers=sink_provider(s)
        )
        await running.start(service)
        mid = await service.enqueue(new_message(("ok@example.org", "gone@example.org")))
        row = await wait_status(engine, mid, "sent")
        statuses = recipients(engine, mid)
        assert statuses["ok@example.org"] == ("sent", None)
        assert statuses["gone@example.org"][0] == "failed"
        assert "Benutzer" in row.error or "utilisateur" in row.error
        (attempt,) = attempts(engine, mid)
        assert attempt.outcome == "sent"
        (dsn,) = dsn_rows(engine)
        await wait_status(engine, dsn.id, "sent")
        await asyncio.sleep(1.5)  # past the lease: a lost outcome would be delivered again
    assert [m.rcpt_tos for m in s.messages] == [["ok@example.org"], ["a@example.com"]]
    report = message_from_bytes(s.messages[1].data, policy=policy.default)
    blocks = cast(list[Message], list(report.iter_parts())[1].get_payload())
    assert blocks[1]["Final-Recipient"] == "rfc822; gone@example.org"
    assert blocks[1]["Status"] == "5.1.1"
    assert s.messages[1].data.isascii()


async def test_no_dsn_to_our_own_bounce_domain(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    """Mail at the VERP bounce domain is read as a bounce of the message it names: a DSN
    sent there would be taken for one, so a sender there never gets one."""
    async with Sink(rcpt_replies={"b@example.org": "550 5.1.1 no such user"}) as s:
        service = await make_service(
            bounces={"domain": "bounce.relay.test"}, providers=sink_provider(s)
        )
        await running.start(service)
        sender = "bounces+msg-01J00000000000000000000000@Bounce.Relay.Test"
        mid = await service.enqueue(new_message(mail_from=sender))
        await wait_status(engine, mid, "failed")
        await asyncio.sleep(0.2)
    assert dsn_rows(engine) == []


async def test_partial_failure_retries_only_the_deferred_recipient(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    """250, 550 and 451 in one transaction: the 550 fails and bounces at once, only the 451
    is retried, and when its retries run out the message keeps what the first round
    delivered (status and provider message id) and the second DSN names only that one."""
    replies = {"gone@example.org": "550 5.1.1 no such user", "later@example.org": "451 4.2.0 busy"}
    async with Sink(rcpt_replies=replies) as s:
        service = await make_service(
            queue={"max_retries": 1, **FAST_RETRY}, providers=sink_provider(s)
        )
        await running.start(service)
        rcpts = ("ok@example.org", "gone@example.org", "later@example.org")
        mid = await service.enqueue(new_message(rcpts))
        row = await wait_status(engine, mid, "sent", "failed")
        statuses = recipients(engine, mid)
        assert statuses["ok@example.org"] == ("sent", None)
        assert statuses["gone@example.org"] == ("failed", "550 5.1.1 no such user")
        assert statuses["later@example.org"] == ("failed", "451 4.2.0 busy")
        tries = attempts(engine, mid)
        assert [(a.provider, a.outcome) for a in tries] == [("sink", "sent"), ("sink", "temporary")]
        assert row.retry_count == 1
        assert (row.status, row.provider, row.provider_message_id) == ("sent", "sink", "SINK1")
        assert "later@example.org: 451 4.2.0 busy" in row.error
        first, second = dsn_rows(engine)
        for dsn in (first, second):
            await wait_status(engine, dsn.id, "sent")
    assert [m.rcpt_tos for m in s.messages] == [
        ["ok@example.org"],
        ["a@example.com"],
        ["a@example.com"],
    ]
    reported = []
    for m in s.messages[1:]:
        report = message_from_bytes(m.data, policy=policy.default)
        blocks = cast(list[Message], list(report.iter_parts())[1].get_payload())
        reported.append([(b["Final-Recipient"], b["Status"]) for b in blocks[1:]])
    assert reported == [
        [("rfc822; gone@example.org", "5.1.1")],
        [("rfc822; later@example.org", "4.2.0")],
    ]


async def test_retry_count_zero_gives_up_at_once_keeping_what_was_delivered(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    """X-Retry-Count: 0: no retry at all; a 451 recipient fails in the first round while
    the accepted one is sent, and the message says so."""
    async with Sink(rcpt_replies={"later@example.org": "451 4.2.0 busy"}) as s:
        service = await make_service(
            queue={"max_retries": 5, **FAST_RETRY}, providers=sink_provider(s)
        )
        await running.start(service)
        mid = await service.enqueue(
            new_message(("ok@example.org", "later@example.org"), max_retries=0)
        )
        row = await wait_status(engine, mid, "sent", "failed")
        await asyncio.sleep(0.3)
        assert (row.status, row.retry_count, row.provider_message_id) == ("sent", 0, "SINK1")
        assert recipients(engine, mid) == {
            "ok@example.org": ("sent", None),
            "later@example.org": ("failed", "451 4.2.0 busy"),
        }
        assert [a.outcome for a in attempts(engine, mid)] == ["sent"]
        (dsn,) = dsn_rows(engine)
        await wait_status(engine, dsn.id, "sent")
    assert [m.rcpt_tos for m in s.messages] == [["ok@example.org"], ["a@example.com"]]
