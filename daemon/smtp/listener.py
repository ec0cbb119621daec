"""The two SMTP listeners (STARTTLS and implicit TLS), served by the daemon's own event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

from daemon.config import Config, relay_hostname
from daemon.service import RelayService
from daemon.smtp.handler import RelayHandler
from daemon.smtp.protocol import RelaySMTP

log = logging.getLogger("relayd.smtp")

IDENT = "ESMTP relayd"


class SmtpListeners:
    """Binds ``smtp.host:port`` (STARTTLS offered) and ``smtp.host:tls_port`` (SMTPS)."""

    def __init__(self, config: Config, service: RelayService, ssl_context: ssl.SSLContext) -> None:
        self.config = config
        self.service = service
        self.ssl_context = ssl_context
        # The relay's name (relay_hostname, looked up in start); a worker process sets
        # the one the daemon found before starting it.
        self.hostname = ""
        self.handler: RelayHandler | None = None
        self.sessions: set[RelaySMTP] = set()
        self._servers: list[asyncio.Server] = []
        self._ports: tuple[int, int] | None = None

    def _factory(self, implicit_tls: bool) -> RelaySMTP:
        assert self.handler is not None
        smtp = self.config.smtp
        return RelaySMTP(
            self.handler,
            implicit_tls=implicit_tls,
            sessions=self.sessions,
            data_size_limit=smtp.max_size,
            decode_data=False,
            hostname=self.hostname,
            ident=IDENT,
            # On SMTPS the session is already encrypted: no STARTTLS to offer.
            tls_context=None if implicit_tls else self.ssl_context,
            timeout=smtp.timeout.seconds,
            loop=asyncio.get_running_loop(),
        )

    async def start(
        self, sockets: tuple[list[socket.socket], list[socket.socket]] | None = None
    ) -> None:
        """Bind both ports (0 picks a free one); raises OSError when a port is taken.

        ``sockets``: already listening (STARTTLS, implicit TLS) sockets to serve
        instead, as an SMTP worker process is handed them by the daemon.
        """
        loop = asyncio.get_running_loop()
        if not self.hostname:
            self.hostname = await loop.run_in_executor(None, relay_hostname, self.config)
        # aiosmtpd logs every command at INFO; relayd logs one line per event instead.
        aiosmtpd_log = logging.getLogger("mail.log")
        if aiosmtpd_log.level == logging.NOTSET:
            aiosmtpd_log.setLevel(logging.WARNING)
        self.handler = RelayHandler(self.service, self.hostname)
        smtp = self.config.smtp
        if sockets is not None:
            for listening, implicit_tls in ((sockets[0], False), (sockets[1], True)):
                for sock in listening:
                    self._servers.append(
                        await loop.create_server(
                            lambda tls=implicit_tls: self._factory(tls),
                            sock=sock,
                            ssl=self.ssl_context if implicit_tls else None,
                        )
                    )
            self._ports = (sockets[0][0].getsockname()[1], sockets[1][0].getsockname()[1])
            return
        for port, implicit_tls in ((smtp.port, False), (smtp.tls_port, True)):
            try:
                self._servers.append(
                    await loop.create_server(
                        lambda tls=implicit_tls: self._factory(tls),
                        smtp.host,
                        port,
                        ssl=self.ssl_context if implicit_tls else None,
                    )
                )
            except OSError as exc:
                await self.stop()
                reason = f"SMTP cannot listen on {smtp.host}:{port}: {exc.strerror or exc}"
                raise OSError(exc.errno, reason) from None
        self._ports = (self._bound_port(self._servers[0]), self._bound_port(self._servers[1]))
        log.info(
            "SMTP listening on %s:%d (STARTTLS) and %s:%d (TLS) as %s",
            smtp.host,
            self.port,
            smtp.host,
            self.tls_port,
            self.hostname,
        )

    @staticmethod
    def _bound_port(server: asyncio.Server) -> int:
        return int(server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        """The bound STARTTLS port (known once started)."""
        if self._ports is None:
            raise RuntimeError("SMTP listeners not started")
        return self._ports[0]

    @property
    def tls_port(self) -> int:
        """The bound implicit-TLS port (known once started)."""
        if self._ports is None:
            raise RuntimeError("SMTP listeners not started")
        return self._ports[1]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let replies to DATA in flight be sent (up to ``grace``), close all."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for session in list(self.sessions):
            session.shutdown()
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()  # type: ignore[attr-defined]
        # Let connection_lost run for the transports just closed.
        for _ in range(3):
            if not self.sessions:
                break
            await asyncio.sleep(0)
