"""A provider call is bounded as a whole by the provider's ``timeout``.

httpx's timeouts bound each read and write, aiosmtplib's each reply: an upstream that
answers one byte at a time, each within the timeout, must still not keep a delivery
(its lease and a delivery slot) for ever. Every provider here is built from its config
(``timeout = "1s"``) and pointed at a local server on 127.0.0.1 that trickles its answer
a byte every 0.2 s; each call must end as a temporary failure within about the timeout,
and drop its connection. A message whose upload takes longer than the timeout on a slow
link is still delivered: the upload gets time for its size.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, AnyStr, TypeVar
from urllib.parse import parse_qs

import pytest
from aiosmtpd.smtp import SMTP

from daemon.core.retry import SENT, TEMPORARY
from daemon.providers import build_providers
from daemon.providers.base import DeliveryResult, Provider
from daemon.providers.google_token import JWT_BEARER
from daemon.providers.smtp import SmtpProvider, data_payload
from tests.conftest import ConfigFactory
from tests.providers.conftest import RAW, ServiceAccountKey, envelope
from tests.sink import Sink, _SinkSMTP

T = TypeVar("T")

TIMEOUT = 1.0  # the providers' configured timeout
TRICKLE = 0.2  # seconds between two bytes of a trickled answer
LIMIT = 3 * TIMEOUT  # a bounded call ends well within this
JSON = "application/json"


async def bounded(call: Awaitable[T], limit: float = LIMIT) -> tuple[T, float]:
    """``call``'s result and how long it took; a test failure if it runs past ``limit``."""
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(call, limit)
    except TimeoutError:
        pytest.fail(f"the provider call was still running after {limit:g}s")
    return result, time.monotonic() - started


async def trickle(writer: asyncio.StreamWriter, data: bytes, gone: Callable[[], bool]) -> bool:
    """Write ``data`` a byte every TRICKLE seconds; False once the client has gone."""
    for byte in data:
        if gone():
            return False
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return False
        await asyncio.sleep(TRICKLE)
    return True


# -- HTTP ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCall:
    """One request the HTTP server read: its method, path, headers (lower-case) and body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """An answer; ``trickle`` is "head" (from the status line on), "body" or None."""

    status: int = 200
    body: bytes = b"{}"
    headers: tuple[tuple[str, str], ...] = (("Content-Type", JSON),)
    trickle: str | None = None

    def encode(self) -> tuple[bytes, bytes]:
        lines = [f"HTTP/1.1 {self.status} Fine", *(f"{k}: {v}" for k, v in self.headers)]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode(), self.body


@dataclass
class SlowHttp:
    """An HTTP/1.1 server on 127.0.0.1: each request is read whole (``read_pause`` seconds
    between 64 KiB reads of its body, a slow link) and answered with ``answer(call)``.

    Records every request (``calls``) and the moment each connection was found closed by
    the client (``closed``).
    """

    answer: Callable[[HttpCall], Reply]
    read_pause: float = 0.0
    calls: list[HttpCall] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _sessions: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _stopping: bool = False

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> SlowHttp:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._stopping = True  # a trickle in progress stops at its next byte
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._sessions), 2.0)
        await self._server.wait_closed()

    async def wait_closed(self, count: int = 1, timeout: float = 1.0) -> None:
        """Until the client has closed ``count`` connections; a test failure after ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.closed) < count:
            assert time.monotonic() < deadline, "the provider kept its connection open"
            await asyncio.sleep(0.02)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self._writers.append(writer)

        def gone() -> bool:
            return reader.at_eof() or self._stopping

        try:
            while (call := await self._read(reader)) is not None:
                self.calls.append(call)
                reply = self.answer(call)
                head, body = reply.encode()
                if reply.trickle == "head":
                    sent = await trickle(writer, head + body, gone)
                elif reply.trickle == "body":
                    writer.write(head)
                    sent = await trickle(writer, body, gone)
                else:
                    writer.write(head + body)
                    sent = True
                if not sent:
                    break
            self.closed.append(time.monotonic())
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed.append(time.monotonic())
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> HttpCall | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # the client closed its kept-alive connection
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        remaining = int(headers.get("content-length", "0"))
        body = bytearray()
        while remaining:
            chunk = await reader.read(min(remaining, 65536))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(body), remaining)
            body += chunk
            remaining -= len(chunk)
            if self.read_pause:
                await asyncio.sleep(self.read_pause)
        return HttpCall(method, path, headers, bytes(body))


def build(make_config: ConfigFactory, settings: dict[str, Any]) -> Provider:
    """The provider ``p`` of that type, as relayd builds it, with ``timeout = "1s"``."""
    config = make_config(providers={"p": {**settings, "timeout": "1s"}})
    return build_providers(config)["p"]


def assert_timed_out(result: DeliveryResult, elapsed: float, prefix: str = "") -> None:
    assert result.outcome == TEMPORARY, result
    assert {r.outcome for r in result.recipients} == {TEMPORARY}
    assert result.reply == f"{prefix}timeout: no complete answer within 1s (the provider's timeout)"
    assert TIMEOUT * 0.9 <= elapsed < LIMIT


TRICKLES = pytest.mark.parametrize("part", ["head", "body"])


@TRICKLES
async def test_mailgun_that_trickles_its_answer_times_out(
    make_config: ConfigFactory, part: str
) -> None:
    queued = json.dumps({"id": "<1@mg.example.com>", "message": "Queued. Thank you."})
    async with SlowHttp(lambda call: Reply(body=queued.encode(), trickle=part)) as server:
        p = build(
            make_config,
            {
                "type": "mailgun",
                "api_key": "key-test",
                "domain": "mg.example.com",
                "base_url": server.base_url,
            },
        )
        try:
            result, elapsed = await bounded(p.send(envelope()))
            await server.wait_closed()  # dropped by the deadline, not by close()
        finally:
            await p.close()
    assert_timed_out(result, elapsed)
    (call,) = server.calls
    assert (call.method, call.path) == ("POST", "/v3/mg.example.com/messages.mime")
    assert call.headers["authorization"] == "Basic " + base64.b64encode(b"api:key-test").decode()
    assert call.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert RAW in call.body and b"bob@example.org" in call.body


@TRICKLES
async def test_sendgrid_that_trickles_its_answer_times_out(
    make_config: ConfigFactory, part: str
) -> None:
    accepted = Reply(202, b'{"note": "accepted"}', (("X-Message-Id", "sg-1"),), trickle=part)
    async with SlowHttp(lambda call: accepted) as server:
        p = build(
            make_config,
            {"type": "sendgrid", "api_key": "SG.test-key", "base_url": server.base_url},
        )
        try:
            result, elapsed = await bounded(p.send(envelope()))
            await server.wait_closed()
        finally:
            await p.close()
    assert_timed_out(result, elapsed)
    (call,) = server.calls
    assert (call.method, call.path) == ("POST", "/v3/mail/send")
    assert call.headers["authorization"] == "Bearer SG.test-key"
    assert call.headers["content-type"] == JSON
    body = json.loads(call.body)
    assert body["personalizations"] == [{"to": [{"email": "bob@example.org", "name": "Bob"}]}]


@pytest.mark.parametrize("slow", ["token", "send"])
async def test_gmail_that_trickles_its_answer_times_out(
    make_config: ConfigFactory, service_account: ServiceAccountKey, slow: str
) -> None:
    """The token endpoint's answer and the send's are each bounded."""

    def answer(call: HttpCall) -> Reply:
        if call.path == "/token":
            body = json.dumps({"access_token": "ya29.token", "expires_in": 3600})
            return Reply(body=body.encode(), trickle="head" if slow == "token" else None)
        return Reply(body=b'{"id": "g-1"}', trickle="head" if slow == "send" else None)

    async with SlowHttp(answer) as server:
        p = build(
            make_config,
            {
                "type": "gmail",
                "service_account_json": service_account.text,
                "base_url": server.base_url,
                "token_url": f"{server.base_url}/token",
            },
        )
        try:
            result, elapsed = await bounded(p.send(envelope()))
            await server.wait_closed()
        finally:
            await p.close()
    assert_timed_out(result, elapsed, "token endpoint: " if slow == "token" else "")
    token, *send = server.calls
    assert (token.method, token.path) == ("POST", "/token")
    form = parse_qs(token.body.decode())
    assert form["grant_type"] == [JWT_BEARER] and form["assertion"]
    if slow == "send":
        (call,) = send
        assert (call.method, call.path) == ("POST", "/gmail/v1/users/me/messages/send")
        assert call.headers["authorization"] == "Bearer ya29.token"
        raw = base64.urlsafe_b64decode(json.loads(call.body)["raw"])
        assert raw == RAW
    else:
        assert send == []


async def test_mailgun_upload_slower_than_the_timeout_is_not_cut_short(
    make_config: ConfigFactory,
) -> None:
    """3 MB read at about 1.6 MB/s: the answer comes after twice the timeout, and counts."""
    big = RAW + b"".join(b"%07d " % i + b"x" * 90 + b"\r\n" for i in range(30_000))
    queued = json.dumps({"id": "<2@mg.example.com>", "message": "Queued. Thank you."})
    async with SlowHttp(lambda call: Reply(body=queued.encode()), read_pause=0.04) as server:
        p = build(
            make_config,
            {
                "type": "mailgun",
                "api_key": "key-test",
                "domain": "mg.example.com",
                "base_url": server.base_url,
            },
        )
        try:
            result, elapsed = await bounded(p.send(envelope(raw=big)), limit=15.0)
        finally:
            await p.close()
    assert result.outcome == SENT, result.reply
    assert result.provider_message_id == "2@mg.example.com"
    assert elapsed > TIMEOUT
    (call,) = server.calls
    assert big in call.body


# -- SMTP ------------------------------------------------------------------------------


class _TricklingSMTP(_SinkSMTP):
    """The sink's aiosmtpd session, trickling the replies of one stage of the session."""

    sink: TricklingSink

    def __init__(self, sink: TricklingSink, **kwargs: Any) -> None:
        super().__init__(sink, **kwargs)
        self._current = "greeting"  # the stage whose replies are being pushed
        self._noted = False

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if self._current == self.sink.stage and not text.startswith("354"):
            writer = self._writer
            await trickle(writer, text.encode() + b"\r\n", writer.is_closing)
            return
        await super().push(status)

    async def smtp_EHLO(self, arg: str) -> None:
        self._current = "ehlo"
        await super().smtp_EHLO(arg)

    async def smtp_MAIL(self, arg: str) -> None:
        self._current = "mail"
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self._current = "data"
        await super().smtp_DATA(arg)

    def eof_received(self) -> bool | None:
        self._gone()
        return super().eof_received()

    def connection_lost(self, error: Exception | None) -> None:
        self._gone()
        super().connection_lost(error)

    def _gone(self) -> None:
        """The client closed the connection (noted once, at its EOF or loss)."""
        if not self._noted:
            self._noted = True
            self.sink.closed.append(time.monotonic())


class TricklingSink(Sink):
    """A :class:`Sink` trickling its greeting, its EHLO reply (several lines), its reply
    to MAIL or its reply to the message (``stage``) a byte every TRICKLE seconds."""

    def __init__(self, stage: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.closed: list[float] = []

    def _protocol(self) -> SMTP:
        return _TricklingSMTP(self, hostname="sink.test", loop=asyncio.get_running_loop())

    async def __aenter__(self) -> TricklingSink:
        await self.start()
        return self


def smtp_provider(make_config: ConfigFactory, port: int, timeout: str = "1s") -> SmtpProvider:
    config = make_config(
        providers={"up": {"type": "smtp", "host": "127.0.0.1", "port": port, "timeout": timeout}}
    )
    p = build_providers(config)["up"]
    assert isinstance(p, SmtpProvider)
    return p


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
@pytest.mark.parametrize("stage", ["greeting", "ehlo", "mail", "data"])
async def test_smtp_upstream_that_trickles_a_reply_times_out(
    make_config: ConfigFactory, stage: str, pipelining: bool
) -> None:
    """aiosmtplib waits for a reply whole, as our pipelined reader does: a reply trickled
    a byte at a time, each within the timeout, still ends at the timeout."""
    async with TricklingSink(stage, pipelining=pipelining) as sink:
        p = smtp_provider(make_config, sink.port)
        try:
            result, elapsed = await bounded(p.send(envelope()))
            assert p.idle_connections == 0  # the session is dropped, not pooled
            deadline = time.monotonic() + 1.0
            while not sink.closed:
                assert time.monotonic() < deadline, "the provider kept its connection open"
                await asyncio.sleep(0.02)
        finally:
            await p.close()
    assert result.outcome == TEMPORARY, result
    assert {r.outcome for r in result.recipients} == {TEMPORARY}
    assert "Timed out waiting for server" in result.reply
    assert TIMEOUT * 0.9 <= elapsed < LIMIT


@dataclass
class SlowSmtp:
    """An SMTP server on 127.0.0.1 that reads a message ``chunk`` bytes every ``pause``
    seconds and accepts it, or (``stall``) stops reading after the 354 and never answers."""

    pipelining: bool
    pause: float = 0.04
    chunk: int = 65536
    stall: bool = False
    received: list[bytes] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> SlowSmtp:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._done.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            writer.write(b"220 slow.test ESMTP\r\n")
            await reader.readline()
            extensions = b"250-PIPELINING\r\n" if self.pipelining else b""
            writer.write(b"250-slow.test\r\n" + extensions + b"250 8BITMIME\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                if verb != b"DATA":
                    writer.write(b"250 ok\r\n")
                    continue
                writer.write(b"354 go ahead\r\n")
                if self.stall:
                    await self._done.wait()  # nothing read, nothing said, until the end
                    break
                data = bytearray()
                while not data.endswith(b"\r\n.\r\n"):
                    chunk = await reader.read(self.chunk)
                    if not chunk:
                        return
                    data += chunk
                    await asyncio.sleep(self.pause)
                self.received.append(bytes(data))
                writer.write(b"250 2.0.0 Ok: queued as SLOW1\r\n")
        writer.close()


def big_message(size: int) -> bytes:
    line = b"y" * 98 + b"\r\n"
    return RAW + line * (size // len(line))


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
async def test_smtp_upload_slower_than_the_timeout_is_not_cut_short(
    make_config: ConfigFactory, pipelining: bool
) -> None:
    """2.5 MB read at about 1.6 MB/s: the reply comes well after the timeout, and counts."""
    raw = big_message(2_500_000)
    async with SlowSmtp(pipelining) as server:
        p = smtp_provider(make_config, server.port)
        try:
            result, elapsed = await bounded(p.send(envelope(raw=raw)), limit=15.0)
        finally:
            await p.close()
    assert result.outcome == SENT, result.reply
    assert result.provider_message_id == "SLOW1"
    assert elapsed > TIMEOUT
    assert server.received == [data_payload(raw)]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
async def test_smtp_stalled_upload_ends_at_the_timeout_plus_time_for_its_size(
    make_config: ConfigFactory, pipelining: bool
) -> None:
    """The upload's allowance is bounded too: an upstream that stops reading (here at
    1 MB/s, ~1 MB: one second more than the 0.5 s timeout) is given up then."""
    raw = big_message(1_000_000)
    async with SlowSmtp(pipelining, stall=True) as server:
        p = smtp_provider(make_config, server.port, timeout="0.5s")
        p.min_upload_rate = 1_000_000
        budget = 0.5 + len(data_payload(raw)) / p.min_upload_rate
        try:
            result, elapsed = await bounded(p.send(envelope(raw=raw)), limit=3 * budget)
        finally:
            await p.close()
    assert result.outcome == TEMPORARY, result
    assert "Timed out waiting for server response" in result.reply
    assert budget - 0.1 <= elapsed < budget + 1.0
