"""Delivery when things go wrong in our own code, at the upstream, or with the lease:
crashes use retries, late results keep their attempts, partial deliveries can be retried."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import Message
from typing import Any, cast

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.core.message import Attempt, Outcome
from daemon.core.retry import SENT
from daemon.delivery import Dispatcher
from daemon.providers.base import DeliveryResult, Envelope, HealthResult
from daemon.store import queue
from tests.conftest import StartServer
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
from tests.delivery.upstream import Upstream
from tests.sink import Sink

BROKEN = "broken@example.org"  # the test provider returns what is no DeliveryResult
HUGE = "huge@example.org"  # ...a result with a code no database column holds


class Faulty:
    """A provider with bugs, for what no real upstream can provoke: registered like any
    provider (a ``[providers.w]`` section, the instance handed to the Dispatcher)."""

    type = "faulty"

    def __init__(self, provider_id: str) -> None:
        self.id = provider_id
        self.sent: list[Envelope] = []

    async def send(self, envelope: Envelope) -> DeliveryResult:
        addresses = {r.address for r in envelope.recipients}
        if BROKEN in addresses:
            return cast(DeliveryResult, {"status": "ok"})
        self.sent.append(envelope)
        code = 2**70 if HUGE in addresses else 250
        return DeliveryResult.uniform(SENT, envelope.recipients, code, "250 2.0.0 ok")

    async def check(self) -> HealthResult:
        return HealthResult(True, 0)

    async def close(self) -> None:
        return None


async def faulty_dispatcher(
    make_service: ServiceFactory, **queue_settings: Any
) -> tuple[Dispatcher, Faulty]:
    service = await make_service(
        queue={"max_retries": 2, **FAST_RETRY, **queue_settings},
        providers={"w": {"type": "outbox"}},  # routed as "w"; the instance is the Faulty
    )
    provider = Faulty("w")
    dispatcher = Dispatcher(service, {"w": provider}, random.Random(1))
    await dispatcher.start()
    return dispatcher, provider


async def first_attempt(engine: Engine, mid: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while not attempts(engine, mid):
        assert loop.time() < deadline, f"{mid} was never tried"
        await asyncio.sleep(0.01)


# -- crashes in our own code use retries ------------------------------------------------------


async def test_a_result_our_code_cannot_read_uses_a_retry_and_fails_in_the_end(
    engine: Engine, make_service: ServiceFactory
) -> None:
    """A provider returning garbage used to crash the round outside any retry accounting:
    the message stayed ``processing``, came back every lease and never recorded a try."""
    dispatcher, _ = await faulty_dispatcher(make_service)
    try:
        mid = await dispatcher.service.enqueue(new_message((BROKEN,)))
        row = await wait_status(engine, mid, "failed")
    finally:
        await dispatcher.stop(1.0)
    reply = "provider error: TypeError: send() returned dict, not a DeliveryResult"
    assert [(a.provider, a.outcome, a.reply) for a in attempts(engine, mid)] == [
        ("w", "temporary", reply)
    ] * 3
    assert row.retry_count == 2
    assert row.error == f"{BROKEN}: {reply}"
    assert recipients(engine, mid) == {BROKEN: ("failed", reply)}
    (dsn,) = dsn_rows(engine)  # giving up is a failure like any other: the sender is told
    with engine.connect() as conn:
        raw = queue.get_raw(conn, dsn.id)
    assert raw is not None
    report = message_from_bytes(raw, policy=policy.default)
    blocks = cast(list[Message], list(report.iter_parts())[1].get_payload())
    assert blocks[1]["Final-Recipient"] == f"rfc822; {BROKEN}"
    assert (blocks[1]["Action"], blocks[1]["Status"][0]) == ("failed", "4")


async def test_a_result_the_store_cannot_take_fails_alone(
    engine: Engine, make_service: ServiceFactory
) -> None:
    """Written with others, one result the database refuses took the whole batch down:
    every message in it stayed ``processing`` and was delivered again every lease. Now
    the others are recorded, and that one is a temporary failure using a retry."""
    dispatcher, provider = await faulty_dispatcher(make_service)
    try:
        huge = await dispatcher.service.enqueue(new_message((HUGE,), mail_from=""))
        fine = await dispatcher.service.enqueue(new_message(("ok@example.org",), mail_from=""))
        await wait_status(engine, fine, "sent")
        row = await wait_status(engine, huge, "failed")
    finally:
        await dispatcher.stop(1.0)
    assert [(a.provider, a.outcome) for a in attempts(engine, fine)] == [("w", "sent")]
    tries = attempts(engine, huge)
    assert [(a.provider, a.outcome) for a in tries] == [("none", "temporary")] * 3
    for attempt in tries:
        assert attempt.reply.startswith(
            "4.3.0 relay error: the result of the round via w (sent) could not be recorded: "
        )
        assert "Traceback" not in attempt.reply
    assert row.retry_count == 2
    assert [e.id for e in provider.sent].count(huge) == 3


@pytest.mark.parametrize(
    ("options", "status", "stored"),
    [
        # PostgreSQL refuses NUL in text: the outcome could never be written.
        ({"rcpt_replies": {"b@example.org": "451 4.3.0 try\x00later"}}, "failed", "try\ufffdlater"),
        # A "queued as" id longer than the column (512): the same on PostgreSQL.
        ({"data_reply": "250 2.0.0 Ok: queued as " + "Q" * 600}, "sent", "Q" * 512),
    ],
    ids=["nul", "long-id"],
)
async def test_an_upstream_reply_the_database_would_refuse_is_stored(
    engine: Engine,
    make_service: ServiceFactory,
    running: Running,
    options: dict[str, Any],
    status: str,
    stored: str,
) -> None:
    async with Sink(**options) as s:
        service = await make_service(
            queue={"max_retries": 1, "lease": "1s", **FAST_RETRY}, providers=sink_provider(s)
        )
        await running.start(service)
        mid = await service.enqueue(new_message(mail_from=""))
        row = await wait_status(engine, mid, status)
    if status == "sent":
        assert row.provider_message_id == stored
    else:
        assert [a.reply for a in attempts(engine, mid)] == [f"451 4.3.0 {stored}"] * 2


# -- a 421 in the middle of a transaction ----------------------------------------------------


async def test_a_421_at_rcpt_is_retried_for_the_deferred_recipients_only(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    """The upstream refuses one recipient for good, then says 421 and hangs up: the
    refusal sticks (bounced, never sent to again), the 421's text is what the attempt and
    the message say, and the retry goes to the others only."""
    replies = {"gone@example.org": "550 5.1.1 no such user", "c@example.org": "421 4.3.2 bye"}
    async with Upstream(rcpt_replies=replies) as s:
        service = await make_service(
            queue={"max_retries": 3, "retry_base": "1s"}, providers=sink_provider(s)
        )
        await running.start(service)
        rcpts = ("b@example.org", "gone@example.org", "c@example.org", "d@example.org")
        mid = await service.enqueue(new_message(rcpts))
        await first_attempt(engine, mid)
        s.rcpt_replies.pop("c@example.org")  # the upstream is back
        (first,) = attempts(engine, mid)
        assert (first.outcome, first.code, first.reply) == ("temporary", 421, "421 4.3.2 bye")
        with engine.connect() as conn:
            error = queue.get_message(conn, mid).error
        assert "b@example.org: 421 4.3.2 bye" in error
        assert "gone@example.org: 550 5.1.1 no such user" in error
        row = await wait_status(engine, mid, "sent", timeout=15.0)
        await asyncio.sleep(0.2)
    assert row.retry_count == 1
    assert [a.outcome for a in attempts(engine, mid)] == ["temporary", "sent"]
    assert recipients(engine, mid) == {
        "b@example.org": ("sent", None),
        "gone@example.org": ("failed", "550 5.1.1 no such user"),
        "c@example.org": ("sent", None),
        "d@example.org": ("sent", None),
    }
    assert s.rcpts.count("gone@example.org") == 1
    assert [m.rcpt_tos for m in s.messages if m.mail_from != "<>"] == [
        ["b@example.org", "c@example.org", "d@example.org"]
    ]


# -- a result that comes after the lease was taken over -----------------------------------------


async def test_a_late_delivery_keeps_its_attempt_and_finishes_the_waiting_message(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    """A worker's delivery outlives its lease (say its database was out of reach), another
    worker takes the message and defers it. The first worker's upstream did accept the
    message: its attempt is kept, and the message is not sent a second time."""
    hold = asyncio.Event()
    async with Sink(hold=hold) as s:
        service = await make_service(providers=sink_provider(s))
        await running.start(service)
        mid = await service.enqueue(new_message(("b@example.org",)))
        await asyncio.wait_for(s.held.wait(), 10)  # the upstream has the message
        # Another daemon finds the lease expired, takes the message and defers it.
        later = datetime.now(UTC) + timedelta(hours=1)
        with engine.begin() as conn:
            assert queue.reap_expired(conn, later) == 1
            (taken,) = queue.claim(conn, later, 1, "other-worker", timedelta(minutes=5))
            deferral = Outcome(
                mid,
                "other-worker",
                "queued",
                datetime.now(UTC),
                1,
                later,
                provider="sink",
                error="b@example.org: 451 4.3.0 busy",
                attempts=(Attempt("sink", "temporary", datetime.now(UTC), 451, "451 4.3.0 busy"),),
            )
            assert queue.apply_outcomes(conn, [deferral]) == 1
        assert taken.id == mid
        hold.set()  # the first worker's upstream answers at last
        row = await wait_status(engine, mid, "sent")
        await asyncio.sleep(0.3)
    assert [(a.provider, a.outcome) for a in attempts(engine, mid)] == [
        ("sink", "temporary"),
        ("sink", "sent"),
    ]
    assert (row.provider_message_id, row.error, row.retry_count) == ("SINK1", None, 1)
    assert recipients(engine, mid) == {"b@example.org": ("sent", None)}
    assert len(s.messages) == 1


async def test_a_late_delivery_reports_the_success_only_it_delivered(
    engine: Engine, make_service: ServiceFactory, running: Running
) -> None:
    """NOTIFY=SUCCESS asks for a "relayed" DSN. A result that came after its lease was
    taken over queued none of its DSNs: the recipients only it delivered are never sent
    to again, so their sender never heard of it. Now that DSN goes out, for those only."""
    hold = asyncio.Event()
    async with Sink(hold=hold) as s:
        service = await make_service(providers=sink_provider(s))
        await running.start(service)
        rcpts = ("b@example.org", "c@example.org")
        mid = await service.enqueue(new_message(rcpts, notify="SUCCESS"))
        await asyncio.wait_for(s.held.wait(), 10)  # the upstream has the message
        # Another daemon takes the message over and delivers c@ (and reports it) itself.
        later = datetime.now(UTC) + timedelta(hours=1)
        with engine.begin() as conn:
            assert queue.reap_expired(conn, later) == 1
            (taken,) = queue.claim(conn, later, 1, "other-worker", timedelta(minutes=5))
            partly = Outcome(
                mid,
                "other-worker",
                "queued",
                datetime.now(UTC),
                1,
                later,
                provider="sink",
                error="b@example.org: 451 4.3.0 busy",
                attempts=(Attempt("sink", "temporary", datetime.now(UTC), 451, "451 4.3.0 busy"),),
                recipient_status=(
                    ("b@example.org", "pending", "451 4.3.0 busy"),
                    ("c@example.org", "sent", None),
                ),
            )
            assert queue.apply_outcomes(conn, [partly]) == 1
        assert taken.id == mid
        hold.set()  # the first worker's upstream answers at last: both accepted
        await wait_status(engine, mid, "sent")
        (report,) = dsn_rows(engine)
        dsn = await wait_status(engine, report.id, "sent")
        await asyncio.sleep(0.3)  # room for a second DSN to show up
    assert len(dsn_rows(engine)) == 1
    assert (dsn.mail_from, dsn.to_addrs) == ("", ["a@example.com"])
    assert dsn.subject == "Successful Mail Delivery Report"
    (delivered,) = [m for m in s.messages if m.mail_from == "<>"]
    assert b"Final-Recipient: rfc822; b@example.org" in delivered.data
    assert b"c@example.org" not in delivered.data.split(b"text/rfc822-headers")[0]
    assert recipients(engine, mid) == {
        "b@example.org": ("sent", None),
        "c@example.org": ("sent", None),
    }


# -- retrying a partial delivery --------------------------------------------------------------


async def test_a_partial_delivery_is_retried_for_the_recipient_that_did_not_get_it(
    start_server: StartServer,
) -> None:
    """One recipient accepted, one out of retries: the message is ``sent`` (a provider took
    it), and ``PUT /api/messages/{id}/retry`` sends it to the other one only."""
    async with Upstream(rcpt_replies={"later@example.org": "451 4.2.0 busy"}) as s:
        upstream = {"type": "smtp", "host": "127.0.0.1", "port": s.port, "timeout": "5s"}
        server = await start_server(providers={"up": upstream})
        engine = server.service.engine
        message = new_message(("ok@example.org", "later@example.org"), max_retries=0)
        mid = await server.service.enqueue(message)
        row = await wait_status(engine, mid, "sent")
        assert recipients(engine, mid)["later@example.org"] == ("failed", "451 4.2.0 busy")
        s.rcpt_replies.clear()
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            retried = await client.put(f"/api/messages/{mid}/retry")
            assert retried.status_code == 200, retried.text
            assert retried.json()["data"] == {
                "message_id": mid,
                "status": "queued",
                "retry_count": 1,
            }
            row = await wait_status(engine, mid, "sent", timeout=15.0)
            # Everyone has it now: nothing is left to retry.
            again = await client.put(f"/api/messages/{mid}/retry")
        await asyncio.sleep(0.2)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "INVALID_STATE"
    assert (row.provider, row.error) == ("up", None)
    assert recipients(engine, mid) == {
        "ok@example.org": ("sent", None),
        "later@example.org": ("sent", None),
    }
    delivered = [m.rcpt_tos for m in s.messages if m.mail_from != "<>"]
    assert delivered == [["ok@example.org"], ["later@example.org"]]
