"""Lifecycle: build every part from one Config, run SMTP + HTTP + workers + jobs, stop cleanly.

``Server(config)`` is used by ``relayd`` and, unchanged, by the loopback tests.
SIGTERM drains (stop accepting, finish in-flight deliveries within the grace,
release leases) and exits 0; SIGHUP re-reads the configuration file and the TLS
certificate and key (renewed in place by certbot, say), in SMTP workers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from daemon.api.app import create_app
from daemon.config import Config, ConfigError
from daemon.delivery.dispatcher import SHARED_WRITER_DELAY, Dispatcher
from daemon.delivery.webhooks import WebhookSender
from daemon.jobs import Jobs
from daemon.overrides import LIVE_TLS_KEYS, apply_runtime, changed, needs_restart, restore
from daemon.providers import build_providers
from daemon.service import RelayService
from daemon.smtp.listener import SmtpListeners
from daemon.smtp.workers import WorkerPool
from daemon.store.engine import bound_lock_waits, make_engine
from daemon.store.migrate import upgrade
from daemon.tls import ServerTls, ensure_certificate

log = logging.getLogger("relayd")

# Read again on every SIGHUP (Server.reload): a new pair needs no restart.


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def notify_systemd(state: str) -> None:
    """Send an sd_notify datagram (READY=1, STOPPING=1, ...) when run under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as exc:
        sock.close()
        raise ConfigError("http.host", f"cannot resolve {host!r}: {exc.strerror}") from None
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"HTTP cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Server:
    """The whole daemon in one object: ``await start()``, ``await stop()``, or ``run()``."""

    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._reload = reload
        self._stopped = asyncio.Event()
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self._uvicorn: _Uvicorn | None = None
        self.service: RelayService
        self.smtp: SmtpListeners | WorkerPool
        self.dispatcher: Dispatcher
        self.jobs: Jobs
        self.webhooks: WebhookSender
        self.tls: ServerTls

    @property
    def data_dir(self) -> Path:
        return self.config.data_path

    @property
    def admin_token(self) -> str:
        return self.service.admin_token

    @property
    def smtp_port(self) -> int:
        return self.smtp.port

    @property
    def smtp_tls_port(self) -> int:
        return self.smtp.tls_port

    @property
    def http_port(self) -> int:
        assert self._http_socket is not None
        return int(self._http_socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        host = self.config.http.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.http_port}"

    async def start(self) -> None:
        """Migrate, then bring up the store, workers, SMTP listeners and the HTTP API."""
        config = self.config
        config.data_path.mkdir(parents=True, exist_ok=True)
        engine = make_engine(config.database_url)
        before, after = await asyncio.to_thread(upgrade, engine)
        if before != after:
            log.info("database migrated from %s to %s", before or "empty", after)
        # Runtime changes made through PUT /api/admin/config, and maintenance mode.
        base = config
        config, runtime, maintenance = await asyncio.to_thread(restore, base, engine)
        if config.database_url != base.database_url:
            engine.dispose()
            engine = make_engine(config.database_url)
            await asyncio.to_thread(upgrade, engine)
        self.config = config
        bound_lock_waits(engine)  # after the migrations: see the function
        self.service = RelayService(config, engine)
        self.service.base_config = base
        self.service.runtime_layer = runtime
        self.service.maintenance = maintenance
        await self.service.start()
        cert, key = ensure_certificate(config)
        self.tls = ServerTls(cert, key)
        self.service.reload_tls = self._reload_tls  # for PUT /api/admin/config
        # SMTP in worker processes: delivery's writes wait to share commits (see the constant).
        self.dispatcher = Dispatcher(
            self.service,
            build_providers(config),
            write_within=SHARED_WRITER_DELAY if config.smtp.workers > 0 else 0.0,
        )
        await self.dispatcher.start()
        if config.smtp.workers > 0:
            self.smtp = WorkerPool(config, self.service, str(cert), str(key), config.smtp.workers)
        else:
            self.smtp = SmtpListeners(config, self.service, self.tls.context)
        try:
            await self.smtp.start()
        except socket.gaierror as exc:
            host = config.smtp.host
            raise ConfigError("smtp.host", f"cannot resolve {host!r}: {exc.strerror}") from None
        await self._start_http()
        self.service.engagement.public_url = self.base_url
        self.webhooks = WebhookSender(self.service)
        await self.webhooks.start()
        self.jobs = Jobs(self.service)
        self.jobs.start()
        log.info(
            "relayd ready: smtp %s:%d (starttls) and :%d (tls), http %s, database %s",
            config.smtp.host,
            self.smtp_port,
            self.smtp_tls_port,
            self.base_url,
            config.database_url.split("://", 1)[0],
        )

    async def _start_http(self) -> None:
        self._http_socket = _bind(self.config.http.host, self.config.http.port)
        uv_config = uvicorn.Config(
            create_app(self.service),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._uvicorn = _Uvicorn(uv_config)
        self._http_task = asyncio.create_task(
            self._uvicorn.serve(sockets=[self._http_socket]), name="http"
        )
        while not self._uvicorn.started:
            if self._http_task.done():
                await self._http_task
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration and the TLS pair; apply what needs no restart."""
        if self._reload is None:  # a Server built without a config file: only the TLS pair
            if (tls := self._reload_tls()) is not None:
                log.info("TLS certificate reloaded%s", tls or ": unchanged")
            return
        try:
            base = self._reload()
            config = apply_runtime(base, self.service.runtime_layer)
        except Exception as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        # The same classification as PUT /api/admin/config, so both name the same keys.
        keys = changed(self.config, config)
        restart = [k for k in needs_restart(keys, self.config) if k not in LIVE_TLS_KEYS]
        self.config = config
        self.service.base_config = base
        self.service.reconfigure(config)
        logging.getLogger().setLevel(config.log_level.upper())
        tls = self._reload_tls()
        log.info(
            "configuration reloaded: %s%s%s",
            f"changed {', '.join(keys)}" if keys else "nothing changed",
            f"; restart needed for {', '.join(restart)}" if restart else "",
            tls or "",
        )

    def _reload_tls(self, config: Config | None = None) -> str | None:
        """Serve the pair ``config`` (default: the running one) names or generates, read
        again, to new TLS handshakes.

        Returns what to add to the reload line ("" when the certificate is the same),
        or None when the pair does not load: then the one in service stays, said in
        one line.
        """
        try:
            cert, key = ensure_certificate(config or self.config)
            renewed = self.tls.load(cert, key)
        except ConfigError as exc:
            log.error(
                "TLS certificate reload refused, still serving %s: %s", self.tls.describe(), exc
            )
            return None
        if isinstance(self.smtp, WorkerPool):
            self.smtp.reload_tls(str(cert), str(key))
        return f"; serving the new TLS certificate {self.tls.describe()}" if renewed else ""

    async def stop(self) -> None:
        """Stop accepting, drain deliveries within the grace, release leases, close the store.

        Once stopped, stopping again does nothing."""
        if self._stopped.is_set():
            return
        self.service.accepting = False
        await self.smtp.stop()
        self.jobs.stop()
        await self.webhooks.stop()
        await self.dispatcher.stop(self.config.queue.shutdown_grace.seconds)
        if self._uvicorn is not None and self._http_task is not None:
            self._uvicorn.should_exit = True
            await self._http_task
        await self.service.close()
        self.service.engine.dispose()
        self._stopped.set()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, telling systemd when ready and when stopping."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        notify_systemd("READY=1\nSTATUS=accepting mail")
        await stop.wait()
        log.info("shutting down: draining in-flight deliveries")
        notify_systemd("STOPPING=1")
        await self.stop()
        log.info("stopped")
