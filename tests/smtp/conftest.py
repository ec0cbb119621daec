"""The SMTP tier in isolation: RelayService + SmtpListeners on a migrated database.

No delivery workers run here, so every accepted message stays ``queued`` and can
be read back exactly as ingest stored it.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.config import Config
from daemon.service import RelayService
from daemon.smtp.listener import SmtpListeners
from daemon.store import queue
from daemon.store.engine import make_engine
from daemon.store.migrate import upgrade
from daemon.store.models import messages
from daemon.tls import ensure_certificate, server_ssl_context

HOST = "127.0.0.1"
TOKEN = "test-admin-token"


@dataclass
class SmtpRelay:
    """A running SMTP tier and what tests need to talk to it and inspect its store."""

    config: Config
    engine: Engine
    service: RelayService
    listeners: SmtpListeners
    cert: Path

    @property
    def port(self) -> int:
        return self.listeners.port

    @property
    def tls_port(self) -> int:
        return self.listeners.tls_port

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly the relay's (generated) certificate."""
        return ssl.create_default_context(cafile=str(self.cert))

    def smtp(self) -> smtplib.SMTP:
        """A plain smtplib client (call from a thread: the server runs on the test's loop)."""
        return smtplib.SMTP(HOST, self.port, local_hostname="client.test", timeout=10)

    def smtps(self) -> smtplib.SMTP_SSL:
        return smtplib.SMTP_SSL(
            HOST,
            self.tls_port,
            local_hostname="client.test",
            timeout=10,
            context=self.client_context(),
        )

    def message(self, message_id: str) -> Any:
        with self.engine.connect() as conn:
            return queue.get_message(conn, message_id)

    def raw(self, message_id: str) -> bytes | None:
        with self.engine.connect() as conn:
            return queue.get_raw(conn, message_id)

    def recipients(self, message_id: str) -> list[Any]:
        with self.engine.connect() as conn:
            return queue.get_recipients(conn, message_id)

    def message_row(self, message_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(messages).where(messages.c.id == message_id)).first()

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one())

    async def stop(self) -> None:
        await self.listeners.stop(grace=2)
        await self.service.close()
        self.engine.dispose()


StartRelay = Callable[..., Awaitable[SmtpRelay]]


@pytest.fixture
async def start_relay(
    make_config: Callable[..., Config], sqlite_url: str
) -> AsyncIterator[StartRelay]:
    """``await start_relay(smtp={...})`` starts an SMTP tier; all are stopped at teardown.

    ``engine_hook(engine)`` runs before the service starts (e.g. to add pool events).
    """
    started: list[SmtpRelay] = []

    async def start(
        database_url: str | None = None,
        engine_hook: Callable[[Engine], None] | None = None,
        **sections: Any,
    ) -> SmtpRelay:
        config = make_config(database_url or sqlite_url, **sections)
        engine = make_engine(config.database_url)
        await asyncio.to_thread(upgrade, engine)
        if engine_hook is not None:
            engine_hook(engine)
        service = RelayService(config, engine)
        await service.start()
        cert, key = ensure_certificate(config)
        listeners = SmtpListeners(config, service, server_ssl_context(cert, key))
        relay = SmtpRelay(config, engine, service, listeners, cert)
        started.append(relay)
        await listeners.start()
        return relay

    yield start
    for relay in reversed(started):
        await relay.stop()


@pytest.fixture
async def smtp_relay(start_relay: StartRelay) -> SmtpRelay:
    """The SMTP tier on SQLite with the default policy (loopback is trusted)."""
    return await start_relay()


def in_thread(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """Run a blocking smtplib dialogue off the loop that serves the relay."""
    return asyncio.to_thread(fn, *args)


class Dialog:
    """A raw SMTP client on asyncio streams, for exact protocol-level assertions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, ssl_context: ssl.SSLContext | None = None) -> Dialog:
        reader, writer = await asyncio.open_connection(HOST, port, ssl=ssl_context)
        dialog = cls(reader, writer)
        await dialog.reply()  # the greeting
        return dialog

    async def reply(self) -> tuple[int, list[str]]:
        """Read one (possibly multi-line) reply: its code and the text of each line."""
        lines: list[str] = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 10)).decode()
            assert line.endswith("\r\n"), f"connection closed after {lines!r}: {line!r}"
            lines.append(line[4:-2])
            if line[3] == " ":
                return int(line[:3]), lines

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str) -> str:
        """Send one command; return its (last) reply line as ``"250 2.1.0 Ok"``."""
        await self.send(line.encode() + b"\r\n")
        code, lines = await self.reply()
        return f"{code} {lines[-1]}"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@pytest.fixture
async def dialog_factory() -> AsyncIterator[Callable[..., Awaitable[Dialog]]]:
    """Open raw dialogs that are closed at teardown."""
    opened: list[Dialog] = []

    async def open_dialog(port: int, ssl_context: ssl.SSLContext | None = None) -> Dialog:
        dialog = await Dialog.open(port, ssl_context)
        opened.append(dialog)
        return dialog

    yield open_dialog
    for dialog in opened:
        await dialog.close()
