"""The smtp provider: an upstream smarthost reached with aiosmtplib over a small connection pool.

The accepted bytes go out unchanged: line endings are normalised to CRLF
(stored messages already use CRLF, so this is usually a no-op) and lines
starting with "." are dot-stuffed, so no line of the message can end the DATA
phase early.

aiosmtplib connects, negotiates TLS, authenticates and greets. When the server
advertises PIPELINING (RFC 2920), one transaction is two writes: MAIL FROM,
every RCPT TO and DATA together, then the message; the replies are read in
order by :class:`_ReplyReader`, which takes the transport over for that
exchange only. Without PIPELINING each command waits for its reply through
aiosmtplib as before. Either way every reply is handled the same way.

Bounds: the provider's ``timeout`` bounds each reply as a whole, from the command
that asks for it to its last line (aiosmtplib waits for the complete reply, and
:class:`_ReplyReader` restarts its clock only when a whole reply has arrived), so
an upstream that trickles a reply, a multi-line one included, a byte at a time
is given up at the timeout like one that says nothing (RFC 5321 4.5.3.2 sets its
timeouts per command too). A whole transaction is not bounded by the timeout:
the message's upload takes as long as its size on the link, and the reply to it
is only due once the upload is through. That reply's clock starts as the message
is handed to the transport (the kernel's send buffer takes megabytes, so when the
last byte leaves is not known), so it gets the timeout plus the message's size
at :data:`MIN_UPLOAD_RATE` (:func:`upload_budget`): a large message on a slow
link is not cut short, and an upstream that stalls still ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)
from aiosmtplib.email import quote_address

from daemon.config import Config, ProviderConfig, machine_fqdn
from daemon.core.dsn import xtext_encode
from daemon.core.message import Recipient
from daemon.core.retry import AUTH_ERROR, PERMANENT, SENT, TEMPORARY, classify_smtp
from daemon.providers.base import (
    MIN_UPLOAD_RATE,
    DeliveryResult,
    Envelope,
    HealthResult,
    RecipientResult,
    combine,
    upload_budget,
)

log = logging.getLogger("relayd.smtp-client")

DEFAULT_MAX_CONNECTIONS = 8
DEFAULT_TIMEOUT = 30.0
# Upstream servers drop idle sessions (Postfix after 300s); we let ours go well before.
IDLE_LIMIT = 30.0
_QUEUED_AS = re.compile(r"queued as\s+<?([^\s>]+)>?", re.IGNORECASE)


class _StaleConnection(Exception):
    """A reused connection turned out dead before the message was handed over."""


@dataclass
class _Pooled:
    client: aiosmtplib.SMTP
    idle_since: float


def _is_ascii(text: str) -> bool:
    return text.isascii()


def _orcpt(stored: str) -> str:
    """ORCPT for the wire: the stored (decoded) ``type;address`` with the address xtext-encoded."""
    addr_type, sep, address = stored.partition(";")
    if not sep:
        addr_type, address = "rfc822", stored
    return f"{addr_type};{xtext_encode(address)}"


# A plain dot-atom address: ``email.utils.parseaddr`` (behind aiosmtplib's
# ``quote_address``) returns it unchanged, so it is quoted without parsing.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# What aiosmtplib refuses on a command line and how it ends and stuffs DATA.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_LINE_ENDINGS = re.compile(rb"(?:\r\n|\n|\r(?!\n))")
_LEADING_DOT = re.compile(rb"(?m)^\.")
# aiosmtplib's limits on a reply (protocol.MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH).
_MAX_REPLY_LINE = 8192
_MAX_PENDING_REPLY = _MAX_REPLY_LINE * 4
_SERVICE_CLOSING = 421  # aiosmtplib drops the session on this reply to MAIL or RCPT


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def quoted_address(address: str) -> str:
    """``<address>`` exactly as aiosmtplib's ``quote_address`` makes it (ValueError if unsafe)."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return quote_address(address)


def _command(verb: str, address: str, options: Sequence[str], encoding: str) -> bytes:
    """One MAIL or RCPT line, byte for byte what aiosmtplib sends (ValueError where it would)."""
    line = b" ".join(
        [f"{verb}{quoted_address(address)}".encode(encoding), *(o.encode("ascii") for o in options)]
    )
    if _CONTROL.search(line):
        raise ValueError("Command arg contains a prohibited control character")
    return line + b"\r\n"


def data_payload(raw: bytes) -> bytes:
    """The DATA bytes aiosmtplib would send: CRLF line ends, dot-stuffed, then ``.CRLF``.

    Stored messages already end every line with CRLF; only other input is rewritten.
    """
    lf = raw.count(b"\n")
    if raw.count(b"\r\n") != lf or raw.count(b"\r") != lf or not raw.endswith(b"\r\n"):
        raw = _LINE_ENDINGS.sub(b"\r\n", raw)
        if not raw.endswith(b"\r\n"):
            raw += b"\r\n"
    if raw.startswith(b".") or b"\n." in raw:
        raw = _LEADING_DOT.sub(b"..", raw)
    return raw + b".\r\n"


def _rcpt_options(recipient: Recipient, dsn: bool) -> list[str]:
    options: list[str] = []
    if dsn:
        if recipient.notify:
            options.append(f"NOTIFY={recipient.notify}")
        if recipient.orcpt:
            options.append(f"ORCPT={_orcpt(recipient.orcpt)}")
    return options


class _ReplyReader(asyncio.Protocol):
    """Takes a session's transport over for one pipelined exchange and reads the replies.

    Replies are parsed as aiosmtplib parses them and kept in order. A lost
    connection, an EOF, a reply timeout (restarted whenever a whole reply arrives,
    not by a part of one) or an unreadable reply ends the exchange with the error
    aiosmtplib would raise, and the session is then never reused (``broken``).
    """

    def __init__(self, transport: asyncio.WriteTransport, timeout: float | None) -> None:
        self.transport = transport
        self.timeout = timeout
        self.replies: list[SMTPResponse] = []
        self.error: SMTPException | None = None
        self.broken = False
        self._wanted = 0
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._patience = timeout  # the current wait's timeout
        self._loop = asyncio.get_running_loop()

    def send(self, data: bytes, replies: int) -> None:
        """Write ``data`` (one or more commands) that ``replies`` replies will answer."""
        if self.error is not None:
            raise self.error
        if self.transport.is_closing():
            self.broken = True
            raise SMTPServerDisconnected("Connection lost")
        self._wanted += replies
        self.transport.write(data)

    async def wait(self, timeout: float | None = None) -> None:
        """Until every reply asked for so far has arrived, or the exchange failed; each
        reply within ``timeout`` (by default the session's) of the one before."""
        if len(self.replies) >= self._wanted or self.error is not None:
            return
        self._patience = self.timeout if timeout is None else timeout
        self._waiter = self._loop.create_future()
        if self._patience is not None:
            self._timer = self._loop.call_later(self._patience, self._timed_out)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def reply(self, index: int) -> SMTPResponse:
        """The ``index``-th reply of the exchange, or the error that stopped it first."""
        if index < len(self.replies):
            return self.replies[index]
        assert self.error is not None, "wait() for a reply before taking it"
        raise self.error

    # -- asyncio.Protocol ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.error is not None or len(self.replies) >= self._wanted:
            return  # unsolicited, dropped as aiosmtplib drops it
        self._buffer += data
        before = len(self.replies)
        try:
            self._parse()
        except SMTPResponseException as exc:
            self._fail(exc)
            return
        if len(self.replies) >= self._wanted:
            self._wake()
        elif len(self._buffer) > _MAX_PENDING_REPLY:
            self._fail(SMTPResponseException(-1, "Response too long"))
        elif len(self.replies) > before and self._timer is not None and self._patience is not None:
            self._timer.cancel()
            self._timer = self._loop.call_later(self._patience, self._timed_out)

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        error = SMTPServerDisconnected("Connection lost")
        if exc is not None:
            error.__cause__ = exc
        self._fail(error)

    # -- internals -----------------------------------------------------------------

    def _parse(self) -> None:
        """Move every complete reply (up to the ones wanted) from the buffer to ``replies``."""
        data = bytes(self._buffer)
        offset = done = 0
        message: bytearray | None = None  # the lines so far of a multi-line reply
        while len(self.replies) < self._wanted:
            end = data.find(b"\n", offset)
            if end == -1:
                break
            line = data[offset : end + 1]
            offset = end + 1
            if len(line) > _MAX_REPLY_LINE:
                raise SMTPResponseException(-1, "Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                shown = line.decode("utf-8", errors="ignore")
                raise SMTPResponseException(-1, f"Malformed SMTP response line: {shown}") from None
            text = line[4:].strip(b" \t\r\n")
            last = line[3:4] != b"-"
            if message is not None:
                if message:
                    message += b"\n"
                message += text
                text = bytes(message)
            if last:
                self.replies.append(SMTPResponse(code, text.decode("utf-8", "surrogateescape")))
                message = None
                done = offset
            elif message is None:
                message = bytearray(text)
        if done:
            del self._buffer[:done]

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(SMTPReadTimeoutError("Timed out waiting for server response"))

    def _fail(self, error: SMTPException) -> None:
        self.broken = True
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class SmtpProvider:
    """Delivers through one upstream SMTP server, reusing up to ``max_connections`` sessions."""

    type = "smtp"

    def __init__(
        self,
        provider_id: str,
        host: str,
        port: int = 25,
        tls: str = "none",
        username: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        local_hostname: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        min_upload_rate: float = MIN_UPLOAD_RATE,
    ) -> None:
        if tls not in ("none", "starttls", "implicit"):
            raise ValueError(f"tls must be none, starttls or implicit, not {tls!r}")
        self.id = provider_id
        self.host = host
        self.port = port
        self.tls = tls
        self.username = username or None
        self.password = password or None
        self.timeout = timeout
        self.max_connections = max(1, max_connections)
        self.local_hostname = local_hostname or machine_fqdn()
        self.tls_context = tls_context
        # The slowest upload of a message waited for, in bytes/s (see the module's docstring).
        self.min_upload_rate = min_upload_rate
        self._idle: list[_Pooled] = []
        self._slots = asyncio.Semaphore(self.max_connections)
        self._closed = False
        self.connections_opened = 0

    @classmethod
    def from_config(cls, pc: ProviderConfig, config: Config) -> SmtpProvider:
        tls = pc.option("tls", "none")
        context: ssl.SSLContext | None = None
        if tls != "none":
            context = ssl.create_default_context(cafile=pc.options.get("ca_file") or None)
            if pc.option("tls_verify", True) is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        timeout = pc.option("timeout")
        return cls(
            pc.id,
            host=pc.option("host"),
            port=pc.option("port", 465 if tls == "implicit" else 25),
            tls=tls,
            username=pc.option("username"),
            password=pc.option("password"),
            timeout=timeout.seconds if timeout is not None else DEFAULT_TIMEOUT,
            max_connections=pc.option("max_connections", DEFAULT_MAX_CONNECTIONS),
            local_hostname=config.smtp.hostname or None,
            tls_context=context,
        )

    # -- connections ---------------------------------------------------------------

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            local_hostname=self.local_hostname,
            timeout=self.timeout,
            use_tls=self.tls == "implicit",
            start_tls=self.tls == "starttls",
            tls_context=self.tls_context,
        )
        await client.connect()
        self.connections_opened += 1
        # Greet now: MAIL's SIZE/BODY/DSN parameters depend on what EHLO advertised.
        try:
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except SMTPHeloError:
                    await client.helo()
        except BaseException:
            client.close()
            raise
        return client

    def _checkout(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            pooled = self._idle.pop()
            if pooled.client.is_connected and now - pooled.idle_since < IDLE_LIMIT:
                return pooled.client
            pooled.client.close()
        return None

    def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if self._closed or not client.is_connected:
            client.close()
            return
        self._idle.append(_Pooled(client, time.monotonic()))

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    # -- delivery ------------------------------------------------------------------

    async def send(self, envelope: Envelope) -> DeliveryResult:
        """Deliver over a pooled session; a dead reused session gets one fresh retry."""
        if not envelope.recipients:
            raise ValueError("an envelope needs at least one recipient")
        async with self._slots:
            client = self._checkout()
            reused = client is not None
            for _ in range(2):
                try:
                    if client is None:
                        client = await self._connect()
                    result = await self._transaction(client, envelope, reused)
                except _StaleConnection:
                    assert client is not None
                    client.close()
                    client, reused = None, False
                    continue
                except Exception as exc:
                    if client is not None:
                        client.close()
                    return self._failure(exc, envelope.recipients)
                except asyncio.CancelledError:
                    # Mid-transaction the session state is unknown: never reuse it.
                    if client is not None:
                        client.close()
                    raise
                self._checkin(client)
                return result
        raise AssertionError("unreachable: a fresh connection is never stale")

    def _failure(self, exc: Exception, recipients: Sequence[Recipient]) -> DeliveryResult:
        """Map a connection-level failure (connect, TLS, login, transport) to a result."""
        if isinstance(exc, SMTPResponseException):
            kind = classify_smtp(exc.code, exc.message)
            if isinstance(exc, SMTPAuthenticationError) and kind == PERMANENT:
                kind = AUTH_ERROR
            reply = f"{exc.code} {exc.message}"
            return DeliveryResult.uniform(kind, recipients, exc.code, reply, remote=self.host)
        if isinstance(exc, SMTPException) and "AUTH" in str(exc):
            reply = f"upstream {self.host} does not offer AUTH: {exc}"
            return DeliveryResult.uniform(AUTH_ERROR, recipients, reply=reply, remote=self.host)
        # Anything else (connection refused, timeout, TLS failure, a client bug) is
        # retried later rather than lost.
        if not isinstance(exc, SMTPException | OSError | TimeoutError):
            log.warning("unexpected error delivering via %s: %r", self.id, exc)
        return DeliveryResult.uniform(
            TEMPORARY, recipients, reply=_error_text(exc), remote=self.host
        )

    def _mail_options(
        self, client: aiosmtplib.SMTP, envelope: Envelope, utf8: bool
    ) -> tuple[list[str], bool]:
        options: list[str] = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(envelope.raw)}")
        if client.supports_extension("8bitmime") and not envelope.raw.isascii():
            options.append("BODY=8BITMIME")
        if utf8:
            options.append("SMTPUTF8")
        # Pass the RFC 3461 parameters on when the next hop can honour them.
        dsn = client.supports_extension("dsn") and envelope.mail_from != ""
        if dsn:
            if envelope.dsn_ret:
                options.append(f"RET={envelope.dsn_ret}")
            if envelope.dsn_envid:
                options.append(f"ENVID={xtext_encode(envelope.dsn_envid)}")
        return options, dsn

    async def _transaction(
        self, client: aiosmtplib.SMTP, envelope: Envelope, reused: bool
    ) -> DeliveryResult:
        addresses = [envelope.mail_from, *(r.address for r in envelope.recipients)]
        utf8 = not all(_is_ascii(a) for a in addresses)
        if utf8 and not client.supports_extension("smtputf8"):
            reply = "553 5.6.7 upstream does not support SMTPUTF8 for non-ASCII addresses"
            return DeliveryResult.uniform(
                PERMANENT, envelope.recipients, 553, reply, remote=self.host
            )
        encoding = "utf-8" if utf8 else "ascii"
        options, dsn = self._mail_options(client, envelope, utf8)
        if client.supports_extension("pipelining"):
            pipelined = await self._pipelined(client, envelope, reused, options, dsn, encoding)
            if pipelined is not None:
                return pipelined
        try:
            await client.mail(envelope.mail_from, options=options, encoding=encoding)
        except SMTPServerDisconnected as exc:
            if reused:
                raise _StaleConnection() from exc
            raise
        except SMTPSenderRefused as exc:
            await self._reset(client)
            return self._sender_refused(envelope, exc.code, exc.message)
        except ValueError as exc:
            reply = f"501 5.1.7 sender address cannot be sent: {exc}"
            return DeliveryResult.uniform(
                PERMANENT, envelope.recipients, 501, reply, remote=self.host
            )

        accepted: list[Recipient] = []
        refused: dict[str, RecipientResult] = {}
        for r in envelope.recipients:
            try:
                await client.rcpt(r.address, options=_rcpt_options(r, dsn), encoding=encoding)
                accepted.append(r)
            except SMTPRecipientRefused as exc:
                refused[r.address] = self._refused_recipient(r.address, exc.code, exc.message)
                if exc.code == _SERVICE_CLOSING:  # aiosmtplib has closed the session
                    return self._broken_off(
                        envelope, refused, exc.code, f"{exc.code} {exc.message}"
                    )
            except ValueError as exc:
                reply = f"501 5.1.3 recipient address cannot be sent: {exc}"
                refused[r.address] = RecipientResult(r.address, PERMANENT, 501, reply)
            except (SMTPException, OSError) as exc:  # the connection broke mid-transaction
                client.close()
                return self._broken_off(envelope, refused, None, _error_text(exc))

        if not accepted:
            await self._reset(client)
            return self._all_refused(envelope, refused)

        try:
            # aiosmtplib times the reply to the message from handing it over (and waits for
            # the 354 before it with the same timeout): both get the upload's budget.
            response = await client.data(
                envelope.raw, timeout=self._upload_budget(len(envelope.raw))
            )
        except SMTPDataError as exc:
            await self._reset(client)
            return self._data_refused(envelope, accepted, refused, exc.code, exc.message)
        except (SMTPException, OSError) as exc:
            client.close()
            return self._broken_off(envelope, refused, None, _error_text(exc))
        return self._sent(envelope, accepted, refused, response, dsn)

    def _upload_budget(self, size: int) -> float:
        """Seconds to send a message of ``size`` bytes (:func:`upload_budget`)."""
        return upload_budget(self.timeout, size, self.min_upload_rate)

    def _broken_off(
        self, envelope: Envelope, refused: dict[str, RecipientResult], code: int | None, reply: str
    ) -> DeliveryResult:
        """A transaction the upstream ended before the message was through: a 421 ("closing
        transmission channel") to a RCPT, or the connection lost or timed out after MAIL.

        The recipients it had already refused keep that answer (a 550 stays permanent, and
        is not sent to again); every other one, accepted or not reached, is deferred with
        what ended the transaction, the 421's own text included.
        """
        results = tuple(
            refused.get(r.address) or RecipientResult(r.address, TEMPORARY, code, reply)
            for r in envelope.recipients
        )
        return self._combined(results, code, reply)

    def _combined(
        self, results: tuple[RecipientResult, ...], code: int | None, reply: str
    ) -> DeliveryResult:
        """One result from per-recipient ones: their combined outcome, with ``code``/``reply``."""
        return DeliveryResult(
            outcome=combine([x.outcome for x in results]),
            recipients=results,
            code=code,
            reply=reply,
            remote=self.host,
        )

    def _sender_refused(self, envelope: Envelope, code: int, message: str) -> DeliveryResult:
        kind = classify_smtp(code, message)
        reply = f"{code} {message}"
        return DeliveryResult.uniform(kind, envelope.recipients, code, reply, remote=self.host)

    @staticmethod
    def _refused_recipient(address: str, code: int, message: str) -> RecipientResult:
        return RecipientResult(address, classify_smtp(code, message), code, f"{code} {message}")

    def _all_refused(
        self, envelope: Envelope, refused: dict[str, RecipientResult]
    ) -> DeliveryResult:
        results = tuple(refused[r.address] for r in envelope.recipients)
        first = results[0]
        return self._combined(results, first.code, first.reply)

    def _data_refused(
        self,
        envelope: Envelope,
        accepted: list[Recipient],
        refused: dict[str, RecipientResult],
        code: int,
        message: str,
    ) -> DeliveryResult:
        kind = classify_smtp(code, message)
        reply = f"{code} {message}"
        for r in accepted:
            refused[r.address] = RecipientResult(r.address, kind, code, reply)
        results = tuple(refused[r.address] for r in envelope.recipients)
        return self._combined(results, code, reply)

    def _sent(
        self,
        envelope: Envelope,
        accepted: list[Recipient],
        refused: dict[str, RecipientResult],
        response: SMTPResponse,
        dsn: bool,
    ) -> DeliveryResult:
        reply = f"{response.code} {response.message}"
        match = _QUEUED_AS.search(response.message)
        provider_message_id = match.group(1) if match else response.message[:200]
        if refused:
            sent = {r.address for r in accepted}
            results = tuple(
                RecipientResult(r.address, SENT, response.code, reply)
                if r.address in sent
                else refused[r.address]
                for r in envelope.recipients
            )
        else:
            results = tuple(
                RecipientResult(r.address, SENT, response.code, reply) for r in envelope.recipients
            )
        return DeliveryResult(
            outcome=SENT,
            recipients=results,
            code=response.code,
            reply=reply,
            provider_message_id=provider_message_id,
            remote=self.host,
            dsn_relayed=dsn,
        )

    async def _pipelined(
        self,
        client: aiosmtplib.SMTP,
        envelope: Envelope,
        reused: bool,
        options: list[str],
        dsn: bool,
        encoding: str,
    ) -> DeliveryResult | None:
        """The transaction in two writes (RFC 2920); None to take the step-by-step path.

        Addresses aiosmtplib would refuse to send, and a session that is not in
        its usual greeted state, take the step-by-step path, which reports them
        exactly as before.
        """
        transport, protocol = client.transport, client.protocol
        if transport is None or protocol is None or client.is_ehlo_or_helo_needed:
            return None
        try:
            commands = [_command("MAIL FROM:", envelope.mail_from, options, encoding)]
            commands += [
                _command("RCPT TO:", r.address, _rcpt_options(r, dsn), encoding)
                for r in envelope.recipients
            ]
        except ValueError:
            return None
        commands.append(b"DATA\r\n")
        reader = _ReplyReader(cast(asyncio.WriteTransport, transport), self.timeout)
        transport.set_protocol(reader)
        try:
            result, reset = await self._exchange(reader, envelope, reused, commands, dsn)
        finally:
            if reader.broken:
                client.close()
            else:
                transport.set_protocol(protocol)
        if reset:
            await self._reset(client)
        return result

    async def _exchange(
        self,
        reader: _ReplyReader,
        envelope: Envelope,
        reused: bool,
        commands: list[bytes],
        dsn: bool,
    ) -> tuple[DeliveryResult, bool]:
        """Every reply handled as the step-by-step path handles it; True when RSET must follow.

        Where aiosmtplib drops the session (a 421 to MAIL or RCPT) the reader is marked
        broken; a 421 to a RCPT, or the connection lost after MAIL, ends the transaction
        there (see :meth:`SmtpProvider._broken_off`).
        """
        try:
            reader.send(b"".join(commands), len(commands))
            await reader.wait()
            mail = reader.reply(0)
        except SMTPServerDisconnected as exc:
            if reused:
                raise _StaleConnection() from exc
            raise
        data_index = len(commands) - 1
        if mail.code != 250:
            reader.broken = reader.broken or mail.code == _SERVICE_CLOSING
            self._abandon(reader, data_index)
            return self._sender_refused(envelope, mail.code, mail.message), True

        accepted: list[Recipient] = []
        refused: dict[str, RecipientResult] = {}
        try:
            for index, r in enumerate(envelope.recipients, start=1):
                reply = reader.reply(index)
                if reply.code in (250, 251):
                    accepted.append(r)
                    continue
                refused[r.address] = self._refused_recipient(r.address, reply.code, reply.message)
                if reply.code == _SERVICE_CLOSING:
                    # The upstream is going away: nothing after this reply counts.
                    reader.broken = True
                    reply_text = f"{reply.code} {reply.message}"
                    return self._broken_off(envelope, refused, reply.code, reply_text), False

            if not accepted:
                self._abandon(reader, data_index)
                return self._all_refused(envelope, refused), True
            start = reader.reply(data_index)
            if start.code != 354:
                refusal = self._data_refused(envelope, accepted, refused, start.code, start.message)
                return refusal, True
            payload = data_payload(envelope.raw)
            reader.send(payload, 1)
            await reader.wait(self._upload_budget(len(payload)))
            response = reader.reply(data_index + 1)
        except SMTPException as exc:  # the connection broke (or timed out) mid-transaction
            reader.broken = True
            return self._broken_off(envelope, refused, None, _error_text(exc)), False
        if response.code != 250:
            refusal = self._data_refused(
                envelope, accepted, refused, response.code, response.message
            )
            return refusal, True
        return self._sent(envelope, accepted, refused, response, dsn), False

    @staticmethod
    def _abandon(reader: _ReplyReader, data_index: int) -> None:
        """After MAIL or every RCPT was refused: a server that opened DATA anyway is dropped.

        A compliant server refuses that DATA; one that answered 354 is waiting
        for a message we will not send, so the session is closed, not reused.
        """
        if reader.broken:
            return
        try:
            start = reader.reply(data_index)
        except SMTPException:
            reader.broken = True
            return
        if start.code == 354:
            reader.broken = True

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        """RSET after an aborted transaction so the session can carry the next message."""
        try:
            await client.rset()
        except (SMTPException, OSError, TimeoutError):
            client.close()

    # -- health and shutdown -------------------------------------------------------

    async def check(self) -> HealthResult:
        """Connect (with TLS and AUTH as configured), NOOP, QUIT."""
        start = time.monotonic()
        client: aiosmtplib.SMTP | None = None
        try:
            client = await self._connect()
            await client.noop()
            await client.quit()
        except (SMTPException, OSError, TimeoutError) as exc:
            if client is not None:
                client.close()
            latency = int((time.monotonic() - start) * 1000)
            return HealthResult(False, latency, f"{type(exc).__name__}: {exc}")
        latency = int((time.monotonic() - start) * 1000)
        return HealthResult(True, latency, f"{self.host}:{self.port}")

    async def close(self) -> None:
        """QUIT every idle session (briefly), then drop them."""
        self._closed = True
        idle, self._idle = self._idle, []

        async def quit_one(client: aiosmtplib.SMTP) -> None:
            try:
                await asyncio.wait_for(client.quit(), timeout=min(self.timeout, 2.0))
            except (SMTPException, OSError, TimeoutError):
                pass
            finally:
                client.close()

        await asyncio.gather(*(quit_one(p.client) for p in idle))
