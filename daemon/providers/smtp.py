"""The smtp provider: an upstream smarthost reached with aiosmtplib over a small connection pool.

The accepted bytes go out unchanged: aiosmtplib only normalises line endings
to CRLF (stored messages already use CRLF) and dot-stuffs lines starting with
".", so no line of the message can end the DATA phase early.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

from daemon.config import Config, ProviderConfig
from daemon.core.dsn import xtext_encode
from daemon.core.message import Recipient
from daemon.core.retry import AUTH_ERROR, PERMANENT, SENT, TEMPORARY, classify_smtp
from daemon.providers.base import DeliveryResult, Envelope, HealthResult, RecipientResult

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


def combine(kinds: Sequence[str]) -> str:
    """One outcome for several recipients: any accepted wins, then retryable ones."""
    if SENT in kinds:
        return SENT
    if TEMPORARY in kinds:
        return TEMPORARY
    if AUTH_ERROR in kinds:
        return AUTH_ERROR
    return PERMANENT


def _is_ascii(text: str) -> bool:
    return text.isascii()


def _orcpt(stored: str) -> str:
    """ORCPT for the wire: the stored (decoded) ``type;address`` with the address xtext-encoded."""
    addr_type, sep, address = stored.partition(";")
    if not sep:
        addr_type, address = "rfc822", stored
    return f"{addr_type};{xtext_encode(address)}"


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
        self.local_hostname = local_hostname or socket.getfqdn()
        self.tls_context = tls_context
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
        reply = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return DeliveryResult.uniform(TEMPORARY, recipients, reply=reply, remote=self.host)

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
        try:
            await client.mail(envelope.mail_from, options=options, encoding=encoding)
        except SMTPServerDisconnected as exc:
            if reused:
                raise _StaleConnection() from exc
            raise
        except SMTPSenderRefused as exc:
            await self._reset(client)
            kind = classify_smtp(exc.code, exc.message)
            reply = f"{exc.code} {exc.message}"
            return DeliveryResult.uniform(
                kind, envelope.recipients, exc.code, reply, remote=self.host
            )
        except ValueError as exc:
            reply = f"501 5.1.7 sender address cannot be sent: {exc}"
            return DeliveryResult.uniform(
                PERMANENT, envelope.recipients, 501, reply, remote=self.host
            )

        accepted: list[Recipient] = []
        refused: dict[str, RecipientResult] = {}
        for r in envelope.recipients:
            rcpt_options: list[str] = []
            if dsn:
                if r.notify:
                    rcpt_options.append(f"NOTIFY={r.notify}")
                if r.orcpt:
                    rcpt_options.append(f"ORCPT={_orcpt(r.orcpt)}")
            try:
                await client.rcpt(r.address, options=rcpt_options, encoding=encoding)
                accepted.append(r)
            except SMTPRecipientRefused as exc:
                kind = classify_smtp(exc.code, exc.message)
                refused[r.address] = RecipientResult(
                    r.address, kind, exc.code, f"{exc.code} {exc.message}"
                )
            except ValueError as exc:
                reply = f"501 5.1.3 recipient address cannot be sent: {exc}"
                refused[r.address] = RecipientResult(r.address, PERMANENT, 501, reply)

        if not accepted:
            await self._reset(client)
            results = tuple(refused[r.address] for r in envelope.recipients)
            first = results[0]
            return DeliveryResult(
                outcome=combine([x.outcome for x in results]),
                recipients=results,
                code=first.code,
                reply=first.reply,
                remote=self.host,
            )

        try:
            response = await client.data(envelope.raw)
        except SMTPDataError as exc:
            await self._reset(client)
            kind = classify_smtp(exc.code, exc.message)
            reply = f"{exc.code} {exc.message}"
            for r in accepted:
                refused[r.address] = RecipientResult(r.address, kind, exc.code, reply)
            results = tuple(refused[r.address] for r in envelope.recipients)
            return DeliveryResult(
                outcome=combine([x.outcome for x in results]),
                recipients=results,
                code=exc.code,
                reply=reply,
                remote=self.host,
            )

        reply = f"{response.code} {response.message}"
        match = _QUEUED_AS.search(response.message)
        provider_message_id = match.group(1) if match else response.message[:200]
        sent = {r.address for r in accepted}
        results = tuple(
            RecipientResult(r.address, SENT, response.code, reply)
            if r.address in sent
            else refused[r.address]
            for r in envelope.recipients
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
