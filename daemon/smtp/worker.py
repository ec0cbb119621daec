"""An SMTP worker process: ``python -m daemon.smtp.worker INDEX CONTROL PLAIN... -1 TLS...``.

Started only by :class:`daemon.smtp.workers.WorkerPool`, which passes the control
socket and the listening sockets as inherited file descriptors and sends the
configuration as the first control packet. The worker serves SMTP with the same
listener, handler and durable enqueue as the daemon itself, forwards wake-ups
and SMTP metrics to the daemon, follows its config and maintenance changes and
its TLS certificate reloads, and stops on ``("stop", grace)``, SIGTERM or SIGINT,
or when the daemon goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from daemon.cli import loop_factory, setup_logging
from daemon.config import Config, ConfigError
from daemon.core.maintenance import MaintenanceState
from daemon.metrics import RelayMetrics
from daemon.service import RelayService
from daemon.smtp.listener import SmtpListeners
from daemon.smtp.workers import PACKET, decode, encode, receive
from daemon.store.engine import bound_lock_waits, make_engine
from daemon.tls import ServerTls

log = logging.getLogger("relayd.smtp")

DEFAULT_GRACE = 10.0


class _Link:
    """Our end of the control socket: messages to the daemon go out once per loop turn."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self._pending: list[tuple[Any, ...]] = []
        self._scheduled = False

    def post(self, message: tuple[Any, ...]) -> None:
        self._pending.append(message)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        try:
            self.control.send(encode(self._pending))
        except BlockingIOError:  # the daemon is busy: try again shortly, keep the order
            self._scheduled = True
            asyncio.get_running_loop().call_later(0.005, self._flush)
            return
        except OSError:
            pass  # the daemon is gone; the control reader stops this worker
        self._pending.clear()


class _WakeDaemon(asyncio.Event):
    """The service's wake-up event: new mail here wakes the daemon's delivery workers."""

    def __init__(self, link: _Link) -> None:
        super().__init__()
        self._link = link

    def set(self) -> None:
        self._link.post(("wake",))


class _ForwardedMetrics(RelayMetrics):
    """The SMTP path's figures, counted by the daemon (which serves /metrics and stats)."""

    def __init__(self, link: _Link) -> None:
        super().__init__()
        self._link = link

    def message_accepted(self, source: str, workspace_id: str) -> None:
        self._link.post(("metric", "message_accepted", (source, workspace_id)))

    def smtp_transaction(self, seconds: float) -> None:
        self._link.post(("metric", "smtp_transaction", (seconds,)))


class Worker:
    def __init__(
        self,
        index: int,
        control: socket.socket,
        sockets: tuple[list[socket.socket], list[socket.socket]],
        init: tuple[Any, ...],
    ) -> None:
        _, config, maintenance, hostname, cert, key = init
        self.index = index
        self.control = control
        self.sockets = sockets
        self.config: Config = config
        self.maintenance: MaintenanceState = maintenance
        self.hostname: str = hostname
        self.cert, self.key = Path(cert), Path(key)
        self.link = _Link(control)
        self.grace = DEFAULT_GRACE
        self._stop: asyncio.Event | None = None
        self.service: RelayService | None = None
        self.tls: ServerTls | None = None
        self._buffer = bytearray(PACKET)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the daemon reloads for us
        engine = make_engine(self.config.database_url)
        bound_lock_waits(engine)
        service = self.service = RelayService(self.config, engine)
        service.maintenance = self.maintenance
        service.metrics = _ForwardedMetrics(self.link)
        await service.start(wake=_WakeDaemon(self.link))
        self.tls = ServerTls(self.cert, self.key)
        listeners = SmtpListeners(self.config, service, self.tls.context)
        listeners.hostname = self.hostname
        try:
            await listeners.start(self.sockets)
            self.control.setblocking(False)
            loop.add_reader(self.control.fileno(), self._readable)
            self.link.post(("ready",))
            log.debug("SMTP worker %d serving", self.index)
            await stop.wait()
        finally:
            service.accepting = False
            with contextlib.suppress(Exception):
                loop.remove_reader(self.control.fileno())
            await listeners.stop(self.grace)
            await service.close()
            engine.dispose()
        return 0

    def _readable(self) -> None:
        assert self._stop is not None and self.service is not None
        while True:
            packet = receive(self.control, self._buffer)
            if packet is None:
                return
            if not packet:  # the daemon went away
                self._stop.set()
                return
            for message in decode(packet):
                kind = message[0]
                if kind == "config":
                    self.service.reconfigure(message[1])
                elif kind == "maintenance":
                    self.service.maintenance = message[1]
                elif kind == "tls":
                    self._reload_tls(Path(message[1]), Path(message[2]))
                elif kind == "stop":
                    self.grace = float(message[1])
                    self._stop.set()

    def _reload_tls(self, cert: Path, key: Path) -> None:
        assert self.tls is not None
        try:
            self.tls.load(cert, key)
        except ConfigError as exc:  # replaced again since the daemon loaded it
            log.error(
                "SMTP worker %d: TLS certificate reload refused, still serving %s: %s",
                self.index,
                self.tls.describe(),
                exc,
            )


def main(argv: list[str]) -> int:
    index, control_fd, *rest = (int(arg) for arg in argv)
    split = rest.index(-1)
    control = socket.socket(fileno=control_fd)
    sockets = (
        [socket.socket(fileno=fd) for fd in rest[:split]],
        [socket.socket(fileno=fd) for fd in rest[split + 1 :]],
    )
    packet = receive(control, bytearray(PACKET))
    if not packet:
        return 1
    init = decode(packet)[0]
    if init[0] != "init":
        return 1
    setup_logging(init[1].log_level)
    sys.setswitchinterval(0.001)  # as in the daemon (daemon/cli.py)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(Worker(index, control, sockets, init).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
