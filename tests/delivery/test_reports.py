"""DSNs as NOTIFY asks, end to end on SQLite and PostgreSQL: mail sent to relayd over SMTP
on 127.0.0.1, delivered to a real SMTP sink, and the DSNs relayd queues and delivers back."""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Awaitable, Callable
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from typing import Any, cast

import pytest
import sqlalchemy as sa

from daemon.server import Server
from daemon.store import queue
from daemon.store.models import messages
from tests.conftest import StartServer
from tests.delivery.conftest import RAW, dsn_rows
from tests.sink import Sink, SinkMessage

SENDER = "s@example.com"
FAST_RETRY = {"retry_base": "50ms", "retry_max": "100ms", "process_interval": "1s"}

StartRelay = Callable[..., Awaitable[Server]]


@pytest.fixture
def start_relay(start_server: StartServer) -> StartRelay:
    """``await start_relay(sink, queue={...})``: relayd delivering to ``sink``, on the test DB;
    ``provider={...}`` adds to or overrides the sink provider's settings."""

    async def start(sink: Sink, provider: dict[str, Any] | None = None, **sections: Any) -> Server:
        provider = {
            "type": "smtp",
            "host": "127.0.0.1",
            "port": sink.port,
            "timeout": "5s",
            **(provider or {}),
        }
        return await start_server(providers={"sink": provider}, **sections)  # type: ignore[no-any-return]

    return start


def send(
    server: Server, mail_from: str, rcpts: dict[str, list[str]], mail_options: list[str]
) -> str:
    """One SMTP transaction with relayd (call in a thread); the queued message's id."""
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("dsn")
        assert client.mail(mail_from, mail_options)[0] == 250
        for address, options in rcpts.items():
            assert client.rcpt(address, options)[0] == 250
        code, reply = client.data(RAW)
    assert code == 250
    match = re.search(rb"queued as (\S+)", reply)
    assert match is not None
    return match.group(1).decode()


async def settled(server: Server, mid: str, *statuses: str, timeout: float = 20.0) -> Any:
    """Wait until ``mid`` and every DSN queued so far are finished; the message's row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with server.service.engine.connect() as conn:
            row = queue.get_message(conn, mid)
            busy = conn.execute(
                sa.select(sa.func.count())
                .select_from(messages)
                .where(messages.c.source == "dsn", messages.c.status != "sent")
            ).scalar_one()
        if row is not None and row.status in statuses and busy == 0:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"{mid} did not settle in {statuses} (DSNs pending: {busy})")


def delivered_reports(sink: Sink) -> list[SinkMessage]:
    """What the sink received from the null sender: the DSNs."""
    return [m for m in sink.messages if m.mail_from == "<>"]


def parse(message: SinkMessage) -> tuple[EmailMessage, list[Message]]:
    report = message_from_bytes(message.data, policy=policy.default)
    assert isinstance(report, EmailMessage)
    assert report.get_content_type() == "multipart/report"
    blocks = cast(list[Message], list(report.iter_parts())[1].get_payload())
    return report, blocks


async def test_notify_success_gets_one_relayed_dsn(start_relay: StartRelay) -> None:
    async with Sink() as sink:
        server = await start_relay(sink)
        rcpts = {"x@example.org": ["NOTIFY=SUCCESS", "ORCPT=rfc822;x@example.org"]}
        mid = await asyncio.to_thread(send, server, SENDER, rcpts, ["ENVID=abc"])
        await settled(server, mid, "sent")
        await asyncio.sleep(0.3)  # room for a duplicate to show up
        (stored,) = dsn_rows(server.service.engine)
        assert (stored.mail_from, stored.to_addrs, stored.status) == ("", [SENDER], "sent")
        assert stored.subject == "Successful Mail Delivery Report"
        (dsn,) = delivered_reports(sink)
    original = next(m for m in sink.messages if m.mail_from == SENDER)
    assert original.rcpt_tos == ["x@example.org"]
    assert dsn.rcpt_tos == [SENDER]
    report, (per_message, per_rcpt) = parse(dsn)
    assert report["To"] == SENDER
    assert report["Subject"] == "Successful Mail Delivery Report"
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert per_message["Original-Envelope-Id"] == "abc"
    assert per_rcpt["Original-Recipient"] == "rfc822;x@example.org"
    assert per_rcpt["Final-Recipient"] == "rfc822; x@example.org"
    assert (per_rcpt["Action"], per_rcpt["Status"]) == ("relayed", "2.0.0")
    assert per_rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert per_rcpt["Diagnostic-Code"].startswith("smtp; 250 2.0.0 Ok: queued as SINK")
    # No RET: the original's headers only.
    assert list(report.iter_parts())[2].get_content_type() == "text/rfc822-headers"
    assert b"hello" not in dsn.data


async def test_one_relayed_dsn_covers_every_recipient_that_asked(start_relay: StartRelay) -> None:
    async with Sink() as sink:
        server = await start_relay(sink)
        rcpts = {
            "x@example.org": ["NOTIFY=SUCCESS", "ORCPT=rfc822;X@example.org"],
            "y@example.org": ["NOTIFY=SUCCESS,FAILURE"],
            "z@example.org": [],
            "n@example.org": ["NOTIFY=NEVER"],
        }
        mid = await asyncio.to_thread(send, server, SENDER, rcpts, ["RET=FULL"])
        await settled(server, mid, "sent")
        await asyncio.sleep(0.3)
        assert len(dsn_rows(server.service.engine)) == 1
        (dsn,) = delivered_reports(sink)
    report, blocks = parse(dsn)
    assert [(b["Final-Recipient"], b["Action"]) for b in blocks[1:]] == [
        ("rfc822; x@example.org", "relayed"),
        ("rfc822; y@example.org", "relayed"),
    ]
    assert blocks[1]["Original-Recipient"] == "rfc822;X@example.org"
    assert blocks[2]["Original-Recipient"] is None
    assert blocks[0]["Original-Envelope-Id"] is None
    # RET=FULL: the whole original comes back.
    assert list(report.iter_parts())[2].get_content_type() == "message/rfc822"
    assert RAW in dsn.data


@pytest.mark.parametrize(
    ("mail_from", "options", "dsn_sink"),
    [
        pytest.param(SENDER, [], False, id="no-notify"),
        pytest.param(SENDER, ["NOTIFY=NEVER"], False, id="never"),
        pytest.param(SENDER, ["NOTIFY=FAILURE,DELAY"], False, id="no-success"),
        pytest.param("", ["NOTIFY=SUCCESS"], False, id="null-sender"),
        # A next hop that speaks DSN took NOTIFY=SUCCESS over: it reports, we do not.
        pytest.param(SENDER, ["NOTIFY=SUCCESS"], True, id="passed-on"),
    ],
)
async def test_no_success_dsn_when_not_ours_to_send(
    start_relay: StartRelay, mail_from: str, options: list[str], dsn_sink: bool
) -> None:
    async with Sink(dsn=dsn_sink) as sink:
        server = await start_relay(sink)
        mid = await asyncio.to_thread(send, server, mail_from, {"x@example.org": options}, [])
        await settled(server, mid, "sent")
        await asyncio.sleep(0.3)
        assert dsn_rows(server.service.engine) == []
        (only,) = sink.messages
    if dsn_sink:
        assert only.rcpt_options == [options]


@pytest.mark.parametrize(
    ("mail_from", "options", "delay_warning", "actions"),
    [
        pytest.param(SENDER, ["NOTIFY=DELAY"], "50ms", ["delayed"], id="delay"),
        pytest.param(
            SENDER, ["NOTIFY=DELAY,FAILURE"], "50ms", ["delayed", "failed"], id="delay-failure"
        ),
        # No NOTIFY means FAILURE only: the bounce at give-up, no warning before it.
        pytest.param(SENDER, [], "50ms", ["failed"], id="no-notify"),
        pytest.param("", ["NOTIFY=DELAY"], "50ms", [], id="null-sender"),
        pytest.param(SENDER, ["NOTIFY=DELAY"], "0", [], id="warning-off"),
    ],
)
async def test_notify_delay_gets_one_delayed_dsn_across_retries(
    start_relay: StartRelay,
    mail_from: str,
    options: list[str],
    delay_warning: str,
    actions: list[str],
) -> None:
    async with Sink(rcpt_replies={"x@example.org": "451 4.3.0 try later"}) as sink:
        # The sink's 451s must not open the circuit: the DSNs go out through it too.
        server = await start_relay(
            sink,
            queue={**FAST_RETRY, "max_retries": 4, "delay_warning": delay_warning},
            health={"down_after": 100},
        )
        rcpts = {"x@example.org": [*options, "ORCPT=rfc822;x@example.org"]}
        mid = await asyncio.to_thread(send, server, mail_from, rcpts, ["ENVID=abc"])
        row = await settled(server, mid, "failed")
        await asyncio.sleep(0.3)
        with server.service.engine.connect() as conn:
            tries = queue.get_attempts(conn, mid)
        assert [a.outcome for a in tries] == ["temporary"] * 5
        assert row.retry_count == 4
        stored = dsn_rows(server.service.engine)
        delivered = delivered_reports(sink)
    assert [r.metadata["dsn_action"] for r in stored] == actions
    assert sorted(parse(m)[1][1]["Action"] for m in delivered) == sorted(actions)
    assert all(m.rcpt_tos == [SENDER] for m in delivered)
    with server.service.engine.connect() as conn:
        stamp = conn.execute(
            sa.select(messages.c.dsn_delayed_at).where(messages.c.id == mid)
        ).scalar_one()
    assert (stamp is not None) is ("delayed" in actions)
    if "delayed" not in actions:
        return
    (dsn,) = [m for m in delivered if parse(m)[1][1]["Action"] == "delayed"]
    report, (per_message, per_rcpt) = parse(dsn)
    assert report["Subject"] == "Delayed Mail (still being retried)"
    assert per_message["Original-Envelope-Id"] == "abc"
    assert per_rcpt["Original-Recipient"] == "rfc822;x@example.org"
    assert per_rcpt["Final-Recipient"] == "rfc822; x@example.org"
    assert per_rcpt["Status"] == "4.3.0"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 451 4.3.0 try later"
    assert per_rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    # The give-up time is computable here: the remaining retries' longest backoffs, < 1s.
    until = parsedate_to_datetime(per_rcpt["Will-Retry-Until"])
    warned_at = parsedate_to_datetime(per_rcpt["Last-Attempt-Date"])
    assert 0 <= (until - warned_at).total_seconds() <= 1


# Waiting for a provider (every circuit open, or every provider at its rate limit) uses no
# retry, but it is time in the queue: NOTIFY=DELAY gets its one "delayed" DSN there too.
WAITING = {"retry_base": "1h", "retry_max": "1h", "process_interval": "1s"}


def row_of(server: Server, mid: str) -> Any:
    with server.service.engine.connect() as conn:
        return conn.execute(sa.select(messages).where(messages.c.id == mid)).one()


def delay_reports(server: Server) -> list[Any]:
    return [r for r in dsn_rows(server.service.engine) if r.metadata["dsn_action"] == "delayed"]


def raw_of(server: Server, mid: str) -> bytes:
    with server.service.engine.connect() as conn:
        raw = queue.get_raw(conn, mid)
    assert raw is not None
    return raw


def attempts_of(server: Server, mid: str) -> list[Any]:
    with server.service.engine.connect() as conn:
        return list(queue.get_attempts(conn, mid))


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def waited(server: Server, mid: str, times: int, timeout: float = 20.0) -> list[Any]:
    """Watch ``mid`` until it has been requeued to wait for a provider ``times`` times; the
    time of each wait (its processed_at then)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: list[Any] = []
    while loop.time() < deadline:
        row = row_of(server, mid)
        if (
            row.status == "queued"
            and (row.error or "").startswith("ALL_PROVIDERS_DOWN")
            and row.processed_at not in seen
        ):
            seen.append(row.processed_at)
            if len(seen) >= times:
                return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"{mid} waited {len(seen)} times, wanted {times}")


async def open_circuit_with_probe_held(server: Server, sink: Sink) -> None:
    """Leave the sink provider down (circuit open) with its one probe held in DATA.

    With ``down_after = 1`` one temporary failure opens the circuit; with no cool-down the
    next message goes as the probe, which the sink holds until ``sink.hold`` is set.
    Until then every other message waits for the provider, about a second at a time
    (a probe is in flight), without an attempt.
    """
    never = ["NOTIFY=NEVER"]
    first = await asyncio.to_thread(send, server, SENDER, {"fail@example.org": never}, [])
    await until(lambda: len(attempts_of(server, first)) == 1, "the first 451")
    await asyncio.to_thread(send, server, SENDER, {"probe@example.org": never}, [])
    await asyncio.wait_for(sink.held.wait(), 10)


@pytest.mark.parametrize(
    ("mail_from", "options", "delay_warning", "warned"),
    [
        pytest.param(SENDER, ["NOTIFY=DELAY"], "300ms", True, id="delay"),
        pytest.param(SENDER, ["NOTIFY=FAILURE,DELAY"], "300ms", True, id="delay-failure"),
        # No NOTIFY means FAILURE only.
        pytest.param(SENDER, [], "300ms", False, id="no-notify"),
        pytest.param(SENDER, ["NOTIFY=SUCCESS,FAILURE"], "300ms", False, id="no-delay"),
        pytest.param("", ["NOTIFY=DELAY"], "300ms", False, id="null-sender"),
        pytest.param(SENDER, ["NOTIFY=DELAY"], "0", False, id="warning-off"),
    ],
)
async def test_waiting_for_a_down_provider_gets_one_delayed_dsn(
    start_relay: StartRelay, mail_from: str, options: list[str], delay_warning: str, warned: bool
) -> None:
    hold = asyncio.Event()
    async with Sink(rcpt_replies={"fail@example.org": "451 4.3.0 try later"}, hold=hold) as sink:
        server = await start_relay(
            sink,
            provider={"timeout": "60s"},
            queue={**WAITING, "delay_warning": delay_warning},
            health={"down_after": 1, "cooldown": "0s", "interval": "1h"},
        )
        try:
            await open_circuit_with_probe_held(server, sink)
            rcpts = {"x@example.org": [*options, "ORCPT=rfc822;x@example.org"]}
            mid = await asyncio.to_thread(send, server, mail_from, rcpts, ["ENVID=abc"])
            # Four waits, a second apart: the warning is due from the second on.
            waits = await waited(server, mid, 4)
            stored = delay_reports(server)
            row = row_of(server, mid)
        finally:
            hold.set()  # the probe succeeds: the circuit closes, the waiting mail goes
        assert (row.retry_count, row.dsn_delayed_at is not None) == (0, warned)
        assert attempts_of(server, mid) == []
        if warned:
            (report,) = stored
            # Queued with the wait that found it due, and not again by the later waits.
            assert report.queued_at < waits[-2]
            # The DSN waits for the provider like any message (it is from <>: no DSN of its own).
            # (Caught either between two waits or in one.)
            assert report.status in ("queued", "processing")
            assert (report.mail_from, report.to_addrs) == ("", [SENDER])
            assert report.metadata == {"dsn_for": mid, "dsn_action": "delayed"}
            assert b"Action: delayed" in raw_of(server, report.id)
        else:
            assert stored == []
        await settled(server, mid, "sent")
        await asyncio.sleep(0.3)  # room for a late duplicate
        assert len(delay_reports(server)) == len(stored)
    assert any(m.rcpt_tos == ["x@example.org"] for m in sink.messages)
    # (NOTIFY=SUCCESS also gets its "relayed" DSN once the message is sent.)
    delivered = [m for m in delivered_reports(sink) if b"Action: delayed" in m.data]
    if not warned:
        assert delivered == []
        return
    (dsn,) = delivered
    assert dsn.rcpt_tos == [SENDER]
    report, (per_message, per_rcpt) = parse(dsn)
    assert report["Subject"] == "Delayed Mail (still being retried)"
    assert per_message["Original-Envelope-Id"] == "abc"
    assert per_rcpt["Original-Recipient"] == "rfc822;x@example.org"
    assert per_rcpt["Final-Recipient"] == "rfc822; x@example.org"
    assert (per_rcpt["Action"], per_rcpt["Status"]) == ("delayed", "4.4.1")
    assert per_rcpt["Diagnostic-Code"] == "X-Relay; every provider is down (circuit open)"
    # Nothing was tried and no retry is used while waiting: no next hop, no attempt date,
    # no give-up time.
    for absent in ("Remote-MTA", "Last-Attempt-Date", "Will-Retry-Until"):
        assert per_rcpt[absent] is None
    plain = report.get_body(("plain",))
    assert plain is not None
    assert "retried until" not in plain.get_content()


async def test_waiting_at_a_rate_limit_gets_one_delayed_dsn(start_relay: StartRelay) -> None:
    async with Sink() as sink:
        # One message a day: the first one uses it up; the next waits until tomorrow.
        server = await start_relay(
            sink, provider={"rate_limit": 1}, queue={**WAITING, "delay_warning": "1ms"}
        )
        first = await asyncio.to_thread(send, server, SENDER, {"a@example.org": []}, [])
        await settled(server, first, "sent")
        rcpts = {"x@example.org": ["NOTIFY=DELAY"]}
        mid = await asyncio.to_thread(send, server, SENDER, rcpts, ["ENVID=abc"])
        await until(lambda: bool(dsn_rows(server.service.engine)), "the delay DSN")
        await asyncio.sleep(0.3)  # room for a duplicate
        (stored,) = dsn_rows(server.service.engine)
        row = row_of(server, mid)
        assert (row.status, row.retry_count) == ("queued", 0)
        assert row.error.startswith("no provider can take the message now (sink: daily rate limit)")
        assert row.dsn_delayed_at is not None
        assert stored.status in ("queued", "processing")  # waiting for the provider too
        assert (stored.mail_from, stored.to_addrs) == ("", [SENDER])
        raw = raw_of(server, stored.id)
        assert len(sink.messages) == 1
    _, (per_message, per_rcpt) = parse(SinkMessage("<>", [SENDER], raw))
    assert per_message["Original-Envelope-Id"] == "abc"
    assert (per_rcpt["Action"], per_rcpt["Status"]) == ("delayed", "4.4.5")
    assert per_rcpt["Diagnostic-Code"] == (
        "X-Relay; no provider can take the message now (daily rate limit)"
    )
    assert per_rcpt["Will-Retry-Until"] is None
