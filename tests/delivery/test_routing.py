"""Routing through real providers and their fakes: failover, circuit breaker, weights, limits.

The dispatcher runs against the test database with mailgun and sendgrid
providers pointed at the loopback fakes; every message is identified by the
Message-ID its bytes carry, so "nothing lost or sent twice" is checked on what
the fakes actually accepted.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from daemon.service import RelayService
from daemon.store import queue
from tests.delivery.conftest import Running, ServiceFactory, attempts, new_message, wait_status
from tests.providers.fakes import Answer, MailgunFake, SendgridFake

FAST = {"retry_base": "50ms", "retry_max": "100ms", "max_retries": 5}
_MID = re.compile(rb"Message-ID: <([^>]+)>")


def raw_for(n: int) -> bytes:
    return (
        f"From: a@example.com\r\nTo: b@example.org\r\nSubject: n{n}\r\n"
        f"Message-ID: <m{n}@example.com>\r\n\r\nbody {n}\r\n"
    ).encode()


def mailgun_cfg(fake: MailgunFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "mailgun",
        "api_key": fake.api_key,
        "domain": "mg.example.com",
        "base_url": fake.base_url,
        # A call slower than this fails over (and is sent twice if the fake took it): room
        # for a loaded machine. Not near the fakes' 5s keep-alive (uvicorn's): a timed-out
        # call's failover would reuse a connection idle that long just as it is closed.
        "timeout": "10s",
        **extra,
    }


def sendgrid_cfg(fake: SendgridFake, **extra: Any) -> dict[str, Any]:
    return {"type": "sendgrid", "api_key": fake.api_key, "base_url": fake.base_url, **extra}


@pytest.fixture
async def mailgun() -> AsyncIterator[MailgunFake]:
    async with MailgunFake() as fake:
        yield fake
    assert fake.problems == []


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendgridFake]:
    async with SendgridFake() as fake:
        yield fake
    assert fake.problems == []


async def enqueue(service: RelayService, count: int, start: int = 0) -> list[str]:
    ids = []
    for n in range(start, start + count):
        message = new_message(raw=raw_for(n))
        await service.committer.run(functools.partial(queue.insert_messages, batch=[message]))
        ids.append(message.id)
        await asyncio.sleep(0.002)  # distinct millisecond ids
    service.wake.set()
    return ids


async def until(engine: Engine, mid: str, test: Callable[[Any], bool], timeout: float = 10) -> Any:
    """Poll the message row until ``test(row)`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with engine.connect() as conn:
            row = queue.get_message(conn, mid)
        if row is not None and test(row):
            return row
        assert asyncio.get_running_loop().time() < deadline, f"{mid}: {row}"
        await asyncio.sleep(0.02)


def accepted_ids(mailgun: MailgunFake, sendgrid: SendgridFake) -> Counter[str]:
    found: Counter[str] = Counter()
    for _, raw in mailgun.messages:
        match = _MID.search(raw)
        assert match
        found[match.group(1).decode()] += 1
    for mail in sendgrid.mails:
        found[mail["headers"]["Message-ID"].strip("<>")] += 1
    return found


async def test_temporary_failures_fail_over_and_nothing_is_sent_twice(
    make_service: ServiceFactory,
    engine: Engine,
    running: Running,
    mailgun: MailgunFake,
    sendgrid: SendgridFake,
) -> None:
    # Every other Mailgun call fails (503, 429, no answer); SendGrid takes those messages.
    mailgun.script(Answer(), Answer(503), Answer(), Answer(429), Answer(), Answer(hang=True))
    service = await make_service(
        queue={**FAST, "concurrency": 4},
        health={"down_after": 100},
        providers={
            # The hung call times out after 3s (light traffic here: enough for the others).
            "mg": mailgun_cfg(mailgun, priority=1, timeout="3s"),
            "sg": sendgrid_cfg(sendgrid, priority=2),
        },
    )
    await running.start(service, seed=7)
    ids = await enqueue(service, 30)
    for mid in ids:
        await wait_status(engine, mid, "sent")
    found = accepted_ids(mailgun, sendgrid)
    assert sorted(found) == sorted(f"m{n}@example.com" for n in range(30))
    assert set(found.values()) == {1}
    assert len(sendgrid.mails) == 3  # 503, 429 and the timeout failed over
    failed_over = [mid for mid in ids if len(attempts(engine, mid)) == 2]
    assert len(failed_over) == 3
    for mid in failed_over:
        first, second = attempts(engine, mid)
        assert (first.provider, first.outcome) == ("mg", "temporary")
        assert (second.provider, second.outcome) == ("sg", "sent")


async def test_permanent_refusal_does_not_fail_over(
    make_service: ServiceFactory,
    engine: Engine,
    running: Running,
    mailgun: MailgunFake,
    sendgrid: SendgridFake,
) -> None:
    mailgun.script(Answer(400, body={"message": "'to' parameter is not a valid address"}))
    service = await make_service(
        queue=FAST,
        providers={"mg": mailgun_cfg(mailgun), "sg": sendgrid_cfg(sendgrid, priority=2)},
    )
    await running.start(service, seed=7)
    (mid,) = await enqueue(service, 1)
    row = await wait_status(engine, mid, "failed")
    assert "not a valid address" in row.error
    assert [a.provider for a in attempts(engine, mid)] == ["mg"]
    tried = [r["status"] for r in mailgun.calls("messages.mime") if r["to"] == ["b@example.org"]]
    assert tried == [400]
    # Only the bounce to the sender went anywhere afterwards.
    assert [to for to, _ in mailgun.messages] in ([], [["a@example.com"]])
    assert all(
        m["personalizations"][0]["to"][0]["email"] == "a@example.com" for m in sendgrid.mails
    )


async def test_breaker_opens_probes_and_closes(
    make_service: ServiceFactory,
    engine: Engine,
    running: Running,
    mailgun: MailgunFake,
    sendgrid: SendgridFake,
) -> None:
    mailgun.default = Answer(503)
    # The cool-down outlasts delivering the first eight (one at a time) on a loaded machine:
    # a probe among them would make a fourth Mailgun call.
    service = await make_service(
        queue={**FAST, "concurrency": 1},
        health={"degraded_after": 1, "down_after": 3, "cooldown": "3s"},
        providers={"mg": mailgun_cfg(mailgun), "sg": sendgrid_cfg(sendgrid, priority=2)},
    )
    state = service.providers_state
    await running.start(service, seed=7)
    first = await enqueue(service, 8)
    for mid in first:
        await wait_status(engine, mid, "sent")
    # Three failures opened the circuit: the other five went straight to SendGrid.
    assert len(mailgun.calls("messages.mime")) == 3
    assert state.status("mg") == "down"
    assert len(sendgrid.mails) == 8
    assert [a.provider for a in attempts(engine, first[-1])] == ["sg"]

    mailgun.default = Answer()  # Mailgun recovers; after the cool-down one probe closes it
    await asyncio.sleep(3.1)
    later = await enqueue(service, 3, start=100)
    for mid in later:
        await wait_status(engine, mid, "sent")
    assert state.status("mg") == "healthy"
    assert [a.provider for mid in later for a in attempts(engine, mid)] == ["mg"] * 3
    assert len(mailgun.messages) == 3


async def test_all_down_messages_wait_without_using_retries(
    make_service: ServiceFactory,
    engine: Engine,
    running: Running,
    mailgun: MailgunFake,
) -> None:
    mailgun.default = Answer(500)
    # The second message must find the circuit still open: a cool-down with room to spare.
    service = await make_service(
        queue={**FAST, "concurrency": 1},
        health={"down_after": 1, "cooldown": "3s"},
        providers={"mg": mailgun_cfg(mailgun)},
    )
    await running.start(service, seed=7)
    (tripping,) = await enqueue(service, 1)
    row = await until(engine, tripping, lambda r: r.retry_count == 1)
    assert row.status == "queued"  # the failed call used a retry and opened the circuit
    assert not service.providers_state.can_deliver("default")
    (waiting,) = await enqueue(service, 1, start=1)
    row = await until(engine, waiting, lambda r: r.error is not None)
    assert row.status == "queued"
    assert row.error.startswith("ALL_PROVIDERS_DOWN")
    assert row.retry_count == 0
    assert attempts(engine, waiting) == []
    mailgun.default = Answer()
    for mid in (tripping, waiting):
        await wait_status(engine, mid, "sent", timeout=15)
    assert len(mailgun.messages) == 2


async def test_weights_split_traffic_within_a_priority(
    make_service: ServiceFactory,
    engine: Engine,
    running: Running,
    mailgun: MailgunFake,
    sendgrid: SendgridFake,
) -> None:
    service = await make_service(
        queue={**FAST, "concurrency": 32, "batch_size": 100},
        providers={
            "mg": mailgun_cfg(mailgun, weight=70),
            "sg": sendgrid_cfg(sendgrid, weight=30),
        },
    )
    await running.start(service, seed=11)
    ids = await enqueue(service, 400)
    for mid in ids:
        await wait_status(engine, mid, "sent")
    share = len(mailgun.messages) / 400
    assert 0.63 <= share <= 0.77, share
    assert len(mailgun.messages) + len(sendgrid.mails) == 400


async def test_rate_limits_hold(
    make_service: ServiceFactory,
    engine: Engine,
    running: Running,
    mailgun: MailgunFake,
    sendgrid: SendgridFake,
) -> None:
    service = await make_service(
        queue={**FAST, "concurrency": 16},
        providers={
            "mg": mailgun_cfg(mailgun, rate_limit_per_second=4),
            "sg": sendgrid_cfg(sendgrid, priority=2, rate_limit=3),
        },
    )
    await running.start(service, seed=7)
    ids = await enqueue(service, 15)
    for mid in ids:
        await wait_status(engine, mid, "sent", timeout=15)
    # SendGrid's daily limit of 3 held; Mailgun took the rest at most 4 in any second.
    assert len(sendgrid.mails) == 3
    assert len(mailgun.messages) == 12
    # Arrival times at the fake: a loaded machine may hold one call back by a moment
    # (the first four open their connections), so the window is a little short of a second.
    times = sorted(r["at"] for r in mailgun.calls("messages.mime"))
    assert max(sum(1 for t in times if s <= t < s + 0.8) for s in times) <= 4
    assert service.providers_state.sent_today("sg") == 3
    waited = [mid for mid in ids if not attempts(engine, mid) or len(attempts(engine, mid)) > 1]
    assert all(a.outcome == "sent" for mid in waited for a in attempts(engine, mid))


async def test_a_429_is_not_retried_before_the_providers_reset(
    make_service: ServiceFactory, engine: Engine, running: Running, sendgrid: SendgridFake
) -> None:
    """SendGrid answers a rate-limited call 429 with ``X-RateLimit-Reset`` (epoch seconds):
    the retry waits for it although the backoff (50 ms here) would come far sooner."""
    reset = int(time.time()) + 120
    sendgrid.script(
        Answer(429, body={"errors": [{"message": "too many requests"}]},
               headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})
    )  # fmt: skip
    service = await make_service(queue=FAST, providers={"sg": sendgrid_cfg(sendgrid)})
    await running.start(service, seed=7)
    (mid,) = await enqueue(service, 1)
    row = await until(engine, mid, lambda r: r.retry_count == 1)
    assert row.status == "queued"
    assert row.next_attempt_at.replace(tzinfo=UTC) >= datetime.fromtimestamp(reset - 1, UTC)
    assert [(a.provider, a.outcome) for a in attempts(engine, mid)] == [("sg", "temporary")]
    assert "no retry within" in row.error
