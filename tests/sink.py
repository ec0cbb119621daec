"""A real SMTP sink for tests: aiosmtpd on 127.0.0.1 in the running event loop.

    async with Sink() as sink:                     # plain SMTP
        ...; await sink.wait_for(3); sink.messages[0].data
    Sink(rcpt_replies={"bad@x.test": "550 5.1.1 No such user"}, data_reply="451 4.3.0 later")
    Sink(tls=make_tls_context(cert, key), implicit_tls=True)   # SMTPS
    Sink(auth=("user", "secret"))                  # AUTH PLAIN/LOGIN offered without TLS
    Sink(dsn=True)                                 # advertises DSN, records RET/ENVID/NOTIFY/ORCPT
    Sink(pipelining=False)                         # no PIPELINING: clients wait for each reply
    Sink(hold=event)                               # DATA answers once event is set (sink.held
                                                   # is set while one waits)

Records every accepted message (envelope and the bytes exactly as aiosmtpd
un-dot-stuffed them) and counts connections, so tests can check reuse.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


@dataclass
class SinkMessage:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[list[str]] = field(default_factory=list)
    connection: int = 0


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        if self.sink.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.sink.mail_reply:
            return self.sink.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.rcpt_options_each = []
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.sink.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options_each.append(list(options))
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.sink.data_delay:
            await asyncio.sleep(self.sink.data_delay)
        if self.sink.hold is not None:
            self.sink.held.set()
            await self.sink.hold.wait()
        if self.sink.data_reply:
            return self.sink.data_reply
        self.sink.messages.append(
            SinkMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content),
                mail_options=list(envelope.mail_options),
                rcpt_options=list(envelope.rcpt_options_each),
                connection=getattr(session, "sink_connection", 0),
            )
        )
        self.sink.arrived.set()
        return f"250 2.0.0 Ok: queued as SINK{len(self.sink.messages)}"


class _SinkSMTP(SMTP):
    """Numbers each connection so a message knows which session carried it."""

    def __init__(self, sink: Sink, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), **kwargs)
        sink.connections += 1
        self.sink = sink
        self.sink_connection = sink.connections
        sink._protocols.append(self)

    def _create_session(self) -> Any:
        # aiosmtpd's Session has no such attribute: this sink adds it to each session.
        session: Any = super()._create_session()
        session.sink_connection = self.sink_connection
        return session

    def _getparams(self, params: Any) -> Any:
        # aiosmtpd refuses the RFC 3461 parameters; a DSN sink records them instead.
        result = super()._getparams(params)
        if result is not None and self.sink.dsn:
            for key in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                result.pop(key, None)
        return result


class Sink:
    """An SMTP server on 127.0.0.1:<ephemeral> that records what it receives."""

    def __init__(
        self,
        *,
        rcpt_replies: dict[str, str] | None = None,
        data_reply: str | None = None,
        mail_reply: str | None = None,
        data_delay: float = 0.0,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        auth: tuple[str, str] | None = None,
        dsn: bool = False,
        pipelining: bool = True,
        hold: asyncio.Event | None = None,
    ) -> None:
        self.rcpt_replies = dict(rcpt_replies or {})
        self.data_reply = data_reply
        self.mail_reply = mail_reply
        self.data_delay = data_delay
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.dsn = dsn
        self.pipelining = pipelining
        self.hold = hold
        self.held = asyncio.Event()
        self.messages: list[SinkMessage] = []
        self.connections = 0
        self.auth_attempts = 0
        self.arrived = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._protocols: list[_SinkSMTP] = []

    def _authenticate(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        self.auth_attempts += 1
        ok = (
            self.auth is not None
            and isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == self.auth
        )
        return AuthResult(success=ok, handled=False)

    def _protocol(self) -> SMTP:
        kwargs: dict[str, Any] = {"hostname": "sink.test", "loop": asyncio.get_running_loop()}
        if self.tls is not None and not self.implicit_tls:
            kwargs["tls_context"] = self.tls
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_require_tls"] = False
        return _SinkSMTP(self, **kwargs)

    async def start(self) -> Sink:
        ssl_ctx = self.tls if self.implicit_tls else None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", 0, ssl=ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for proto in self._protocols:
            if proto.transport is not None and not proto.transport.is_closing():
                proto.transport.close()
        await asyncio.sleep(0.01)  # let the closed transports finish their callbacks

    async def __aenter__(self) -> Sink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until at least ``count`` messages arrived; fail the test after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.messages) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"sink got {len(self.messages)} messages, wanted {count}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                continue
        return self.messages


def write_self_signed(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and ``hostname``: (cert, key) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "sink.crt", directory / "sink.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context for the sink."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
