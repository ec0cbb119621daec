"""SMTP worker processes (``smtp.workers = N``, 1 by default): the daemon's side.

One Python process serves SMTP on one core. With ``smtp.workers = N`` the daemon
binds both SMTP ports itself (bound, not listening: it holds the ports), then
starts N processes (``python -m daemon.smtp.worker``), each inheriting listening
sockets of its own on those ports (SO_REUSEPORT), so the kernel spreads new
connections evenly over the workers. Each worker runs the same
aiosmtpd session and handler as the in-process listener, with its own event
loop, group committer and database connection, so a message is acknowledged
only after its own commit, exactly as in one process (on SQLite the writers of
all processes take turns through one lock file: see
:class:`daemon.store.committer.Committer`). The daemon keeps delivery, the HTTP
API and the jobs. Even one worker (the default) puts SMTP ingest and delivery on
two cores; ``smtp.workers = 0`` serves SMTP in the daemon's own process instead.

The daemon and each worker talk over a private ``SOCK_SEQPACKET`` socket pair,
one pickled list of messages per packet:

- daemon to worker: ``("init", Config, MaintenanceState, hostname, cert, key)``
  first, then ``("config", Config)`` and ``("maintenance", state)`` whenever
  those change (SIGHUP, ``PUT /api/admin/config``, maintenance mode),
  ``("tls", cert, key)`` on SIGHUP once the daemon has loaded that pair itself
  (new handshakes get it; open sessions keep theirs), and ``("stop", grace)``;
- worker to daemon: ``("ready",)``; ``("wake",)`` after a commit of new mail,
  so idle delivery workers claim it at once; ``("metric", name, args)`` for the
  Prometheus figures of the SMTP path (accepted messages, transaction time).

A worker that dies is started again (one second later, so a worker that cannot
start does not spin); a worker whose daemon goes away stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import errno
import io
import logging
import pickle
import socket
import subprocess
import sys
import time
import types
from typing import Any

from daemon.config import Config, relay_hostname
from daemon.service import RelayService

log = logging.getLogger("relayd.smtp")

START_TIMEOUT = 60.0
RESTART_DELAY = 1.0
PACKET = 1 << 20  # largest control packet read at once (a pickled Config is a few KiB)


def _mappingproxy(items: dict[Any, Any]) -> types.MappingProxyType[Any, Any]:
    return types.MappingProxyType(items)


def _reduce_mappingproxy(proxy: types.MappingProxyType[Any, Any]) -> tuple[Any, ...]:
    return (_mappingproxy, (dict(proxy),))


_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[types.MappingProxyType] = _reduce_mappingproxy


def encode(messages: list[tuple[Any, ...]]) -> bytes:
    """One control packet (the Config holds read-only mappings, pickled as such)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(messages)
    return buffer.getvalue()


def decode(packet: bytes) -> list[tuple[Any, ...]]:
    """The messages of one packet; only ever from our own end of a private socket pair."""
    messages = pickle.loads(packet)
    if not isinstance(messages, list):
        raise ValueError("bad control packet")
    return messages


def _socket(family: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def receive(control: socket.socket, buffer: bytearray) -> bytes | None:
    """One packet (b"" when the peer closed), or None when none is waiting."""
    try:
        size = control.recv_into(buffer)
    except BlockingIOError:
        return None
    except OSError:
        return b""
    return bytes(memoryview(buffer)[:size])


def bind_listeners(
    host: str, port: int, listen: bool = True, reuse_port: bool = False
) -> list[socket.socket]:
    """Sockets bound to ``host:port`` (every address it resolves to, one port).

    With ``listen=False`` and ``reuse_port`` they only hold the port: the kernel
    hands connections to the listening sockets of the same SO_REUSEPORT group.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, _kind, _proto, _name, address in infos:
            if address[:2] in seen:
                continue
            seen.add(address[:2])
            sock = _socket(family, reuse_port)
            sockets.append(sock)
            if port == 0 and len(sockets) > 1:  # the same port on every address
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            if listen:
                sock.listen(1024)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = f"SMTP cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise OSError(exc.errno, reason) from None
    return sockets


def listen_beside(anchors: list[socket.socket]) -> list[socket.socket]:
    """For one worker: listening sockets on the anchors' addresses (SO_REUSEPORT).

    Each worker has its own, so the kernel spreads new connections evenly over
    the workers instead of waking all of them for each one.
    """
    sockets: list[socket.socket] = []
    try:
        for anchor in anchors:
            sock = _socket(anchor.family, reuse_port=True)
            sockets.append(sock)
            sock.bind(anchor.getsockname())
            sock.listen(1024)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Worker:
    """One worker process and our end of its control socket."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.ready: asyncio.Future[None] | None = None
        self.started = 0.0


class WorkerPool:
    """Starts, feeds, restarts and stops the SMTP worker processes; looks like SmtpListeners."""

    def __init__(
        self, config: Config, service: RelayService, cert: str, key: str, count: int
    ) -> None:
        self.config = config
        self.service = service
        self.cert = cert
        self.key = key
        self.count = count
        self.hostname = ""  # relay_hostname, looked up in start and handed to the workers
        self._listeners: tuple[list[socket.socket], list[socket.socket]] = ([], [])
        self._workers: list[_Worker] = []
        self._stopping = False
        self._serving = False  # every worker of start() is ready; later losses restart
        self._buffer = bytearray(PACKET)

    @property
    def port(self) -> int:
        return int(self._listeners[0][0].getsockname()[1])

    @property
    def tls_port(self) -> int:
        return int(self._listeners[1][0].getsockname()[1])

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.process.pid for w in self._workers if w.process and w.process.poll() is None]

    async def start(self) -> None:
        """Bind both ports, start every worker, and return once all of them serve."""
        smtp = self.config.smtp
        loop = asyncio.get_running_loop()
        self.hostname = await loop.run_in_executor(None, relay_hostname, self.config)
        plain = bind_listeners(smtp.host, smtp.port, listen=False, reuse_port=True)
        try:
            tls = bind_listeners(smtp.host, smtp.tls_port, listen=False, reuse_port=True)
        except OSError:
            for sock in plain:
                sock.close()
            raise
        self._listeners = (plain, tls)
        self.service.observers.append(self._broadcast_state)
        self._workers = [_Worker(index) for index in range(self.count)]
        try:
            for worker in self._workers:
                self._spawn(worker)
            for worker in self._workers:
                assert worker.ready is not None
                await asyncio.wait_for(asyncio.shield(worker.ready), START_TIMEOUT)
        except BaseException:
            await self.stop(grace=0)
            raise
        self._serving = True
        log.info(
            "SMTP listening on %s:%d (STARTTLS) and %s:%d (TLS) as %s in %d worker process%s",
            smtp.host,
            self.port,
            smtp.host,
            self.tls_port,
            self.hostname,
            self.count,
            "" if self.count == 1 else "es",
        )

    def _spawn(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        plain = listen_beside(self._listeners[0])
        tls = listen_beside(self._listeners[1])
        fds = [theirs.fileno(), *(s.fileno() for s in plain), -1, *(s.fileno() for s in tls)]
        argv = [sys.executable, "-m", "daemon.smtp.worker", str(worker.index), *map(str, fds)]
        try:
            process = subprocess.Popen(
                argv,
                pass_fds=[fd for fd in fds if fd >= 0],
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            for sock in (theirs, *plain, *tls):  # the worker has its own copies now
                sock.close()
        ours.setblocking(False)
        worker.process = process
        worker.control = ours
        worker.started = time.monotonic()
        worker.ready = loop.create_future()
        init = (
            "init",
            self.service.config,
            self.service.maintenance,
            self.hostname,
            self.cert,
            self.key,
        )
        ours.sendall(encode([init]))
        loop.add_reader(ours.fileno(), self._readable, worker)

    def _readable(self, worker: _Worker) -> None:
        control = worker.control
        if control is None:
            return
        while True:
            packet = receive(control, self._buffer)
            if packet is None:
                return
            if not packet:
                self._lost(worker)
                return
            try:
                messages = decode(packet)
            except Exception as exc:  # a worker we started sent garbage: restart it
                log.error("SMTP worker %d sent a bad control packet: %s", worker.index, exc)
                self._kill(worker)
                return
            for message in messages:
                self._handle(worker, message)

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "wake":
            self.service.wake.set()
        elif kind == "metric":
            _, name, args = message
            if name in ("message_accepted", "smtp_transaction"):
                getattr(self.service.metrics, name)(*args)
        elif kind == "ready":
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(None)
            assert worker.process is not None
            log.debug("SMTP worker %d ready (pid %d)", worker.index, worker.process.pid)

    def _close_control(self, worker: _Worker) -> None:
        if worker.control is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(worker.control.fileno())
            worker.control.close()
            worker.control = None

    def _kill(self, worker: _Worker) -> None:
        if worker.process is not None and worker.process.poll() is None:
            worker.process.kill()
        self._lost(worker)

    def _lost(self, worker: _Worker) -> None:
        """The worker's control socket closed: it exited (or is about to)."""
        self._close_control(worker)
        if worker.ready is not None and not worker.ready.done():
            if not self._serving:  # start() waits for it and gives up
                code = self._reap(worker)
                reason = f"SMTP worker {worker.index} failed to start (exit code {code})"
                worker.ready.set_exception(OSError(errno.ECHILD, reason))
                return
            worker.ready.cancel()  # a restart nobody waits for: it is tried again below
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        loop.call_later(RESTART_DELAY, self._restart, worker)

    @staticmethod
    def _reap(worker: _Worker) -> int | None:
        """The exit code of a worker whose control socket closed, killing it if it lingers.

        Without its control socket it can no longer be told anything; a kill makes
        the wait short, so the daemon's event loop is never held up here.
        """
        process = worker.process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return process.wait()

    def _restart(self, worker: _Worker) -> None:
        if self._stopping or worker.control is not None:
            return
        code = self._reap(worker)
        log.error("SMTP worker %d exited (code %s); starting it again", worker.index, code)
        self._spawn(worker)

    def reload_tls(self, cert: str, key: str) -> None:
        """Every worker serves ``cert``/``key`` to new handshakes; a restarted one starts so."""
        self.cert, self.key = cert, key
        packet = encode([("tls", cert, key)])
        for worker in self._workers:
            self._send(worker, packet)

    def _broadcast_state(self) -> None:
        """The config or maintenance state changed: every worker follows."""
        packet = encode(
            [("config", self.service.config), ("maintenance", self.service.maintenance)]
        )
        for worker in self._workers:
            self._send(worker, packet)

    @staticmethod
    def _send(worker: _Worker, packet: bytes) -> None:
        if worker.control is None:
            return
        try:
            worker.control.sendall(packet)
        except OSError as exc:
            log.warning("SMTP worker %d unreachable: %s", worker.index, exc)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; workers finish the DATA replies in flight (``grace``), then exit."""
        self._stopping = True
        with contextlib.suppress(ValueError):
            self.service.observers.remove(self._broadcast_state)
        packet = encode([("stop", grace)])
        for worker in self._workers:
            self._send(worker, packet)
        deadline = time.monotonic() + grace + 10.0
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            left = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.to_thread(process.wait, left)
            except subprocess.TimeoutExpired:
                log.warning("SMTP worker %d did not stop in time; killing it", worker.index)
                process.kill()
                await asyncio.to_thread(process.wait)
            self._close_control(worker)
        for sock in (*self._listeners[0], *self._listeners[1]):
            sock.close()
        self._listeners = ([], [])
