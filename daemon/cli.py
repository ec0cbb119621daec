"""``relayd``: turn flags into a Config and run the Server (or check-config / migrate).

Exit codes: 0 ok; 1 a runtime failure, one that may pass (a port or the data_dir
taken by another process, the database unreachable), so systemd's
``Restart=on-failure`` tries again; 2 a bad configuration or usage, which a restart
cannot fix (``RestartPreventExitStatus=2`` in daemon/systemd/relayd.service).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from daemon import __version__
from daemon.config import Config, ConfigError, load_config, parse_assignment

log = logging.getLogger("relayd")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayd",
        description="Relay daemon: accepts mail over SMTP and HTTP, queues it, delivers it.",
        epilog=(
            "Every setting can also be set as RELAY_<SECTION>_<KEY> (e.g. RELAY_HTTP_PORT=8081). "
            "Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage."
        ),
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "check-config", "migrate", "version"],
        help="run (default), check-config, migrate or version",
    )
    parser.add_argument("--version", action="version", version=f"relayd {__version__}")
    parser.add_argument("-c", "--config", type=Path, help="TOML configuration file")
    parser.add_argument("--data-dir", help="data directory (default ./relay-data)")
    parser.add_argument("--smtp-port", help="SMTP (STARTTLS) port")
    parser.add_argument("--http-port", help="HTTP API port")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any setting (repeatable)",
    )
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for assignment in args.set:
        for key, value in parse_assignment(assignment).items():
            if isinstance(value, dict):
                layer.setdefault(key, {}).update(value)
            else:
                layer[key] = value
    if args.data_dir:
        layer["data_dir"] = args.data_dir
    if args.log_level:
        layer["log_level"] = args.log_level
    if args.smtp_port:
        layer.setdefault("smtp", {})["port"] = args.smtp_port
    if args.http_port:
        layer.setdefault("http", {})["port"] = args.http_port
    return layer


def setup_logging(level: str) -> None:
    """One line per event; journald adds its own timestamp, a terminal gets one from us."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    # httpx/httpcore log each request's full URL at INFO: a webhook's ?token=, a
    # provider URL's password. aiosmtpd (mail.log) would log AUTH lines.
    noisy_loggers = ("mail.log", "uvicorn.error", "apscheduler", "aiosmtplib", "alembic")
    for noisy in (*noisy_loggers, "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _fail(message: str, code: int) -> int:
    print(f"relayd: {message}", file=sys.stderr)
    return code


def _writable_directory(key: str, path: Path) -> None:
    """``path`` is (or can be made) a directory relayd can write in; else ConfigError(key)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(key, f"{str(path)!r} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot create directory {str(path)!r}: {exc.strerror}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(key, f"cannot write in {str(path)!r}: {exc.strerror}") from None


def _check_storage(config: Config) -> None:
    """The directories the database (and, for ``run``, the daemon) will write in."""
    from sqlalchemy.engine import make_url

    if not config.database.url:
        _writable_directory("data_dir", config.data_path)
        return
    url = make_url(config.database.url)
    if url.get_backend_name() == "sqlite" and url.database:
        _writable_directory("database.url", Path(url.database).parent)


def _check(config: Config) -> list[str]:
    """Validation that needs the filesystem: the data dir is writable, the TLS files load,
    providers have their credentials (files read), the admin token is one (never empty).

    Returns warnings: things that do not stop relayd but that an operator should hear
    (a short admin token, a certificate about to expire).
    """
    from daemon.admin_token import check_admin_token
    from daemon.providers.validation import check_credentials
    from daemon.tls import certificate_warnings, ensure_certificate, server_ssl_context

    check_credentials(config)
    _writable_directory("data_dir", config.data_path)
    warnings = check_admin_token(config)
    _check_storage(config)
    cert, key = ensure_certificate(config)
    server_ssl_context(cert, key)
    if config.smtp.tls_cert:
        warnings += certificate_warnings(cert)
    return warnings


def _os_problem(exc: OSError) -> str:
    """An OSError as one line without the ``[Errno N]`` prefix."""
    if not exc.strerror:
        return str(exc)
    return f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror


LOCK_FILE = "relayd.lock"


class DataDirInUse(Exception):
    """Another relayd (a daemon, or ``relayd migrate``) holds the data_dir's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "pid not known"
        super().__init__(f"data_dir {str(data_dir)!r} is in use by another relayd ({holder})")
        self.data_dir = data_dir
        self.pid = pid


class DataDirLock:
    """``data_dir/relayd.lock``, flock'd while this process runs and holding its pid.

    Two daemons on one data_dir would share the queue, the outbox and the generated
    token and certificate, each believing it alone leases and retries. The kernel
    drops an flock with the last descriptor, however the process ends (kill -9
    included), so the file left behind never blocks a restart: only a live holder
    does. The descriptor is not inherited (O_CLOEXEC), so SMTP worker processes
    never hold the lock of a daemon that has died.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise DataDirInUse naming the holder's pid (OSError otherwise)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(self.path.parent, self._holder()) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _holder(self, wait: float = 1.0) -> int | None:
        # The holder writes its pid right after it takes the lock: allow it that moment.
        deadline = time.monotonic() + wait
        while True:
            try:
                text = self.path.read_text().strip()
            except (OSError, UnicodeDecodeError):
                text = ""
            if text.isdigit():
                return int(text)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race a starting relayd)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _exit_quietly(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGINT before the event loop owns the signals: nothing to drain yet."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Everything relayd creates (data_dir, the database and its -wal, the outbox, the
    # lock) holds mail or secrets: private to its user, as the systemd unit's UMask=0077
    # makes it there, and as Postfix keeps its queue.
    os.umask(0o077)
    if args.command == "version":
        print(f"relayd {__version__}")
        return 0
    if args.command == "run":
        # Until Server.run installs its handlers, a stop request has nothing to drain:
        # exit 0 as after a drain, not 143 from the default action (systemd stop, ^C).
        signal.signal(signal.SIGTERM, _exit_quietly)
        signal.signal(signal.SIGINT, _exit_quietly)

    def build() -> Config:
        return load_config(args.config, os.environ, _flags(args))

    try:
        config = build()
        warnings: list[str] = []
        if args.command in ("run", "check-config"):
            warnings = _check(config)
        elif args.command == "migrate":
            _check_storage(config)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    except OSError as exc:
        return _fail(f"configuration error: {_os_problem(exc)}", 2)
    setup_logging(config.log_level)
    for warning in warnings:
        log.warning("%s", warning)

    if args.command == "check-config":
        print(f"configuration ok ({args.config or 'built-in defaults'})")
        return 0
    if args.command == "migrate":
        return _migrate(config)

    from sqlalchemy.exc import SQLAlchemyError

    from daemon.server import Server
    from daemon.store.migrate import MigrationError

    def reload() -> Config:
        """SIGHUP: the file, environment and flags again, checked as at start."""
        config = build()
        for warning in _check(config):
            log.warning("%s", warning)
        return config

    lock = DataDirLock(config.data_path)
    try:
        lock.acquire()
    except DataDirInUse as exc:
        return _fail(f"cannot start: {exc}; stop it first, or give this one its own data_dir", 1)
    except OSError as exc:
        return _fail(f"cannot start: {_os_problem(exc)}", 1)
    # The store's writer thread hands every commit back to the event loop; a short
    # switch interval stops it waiting 5 ms for the GIL each time (+20-27% ingest).
    sys.setswitchinterval(0.001)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(Server(config, reload=reload).run())
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    except (SQLAlchemyError, MigrationError, OSError) as exc:
        return _fail(f"cannot start: {_problem(config, exc)}", 1)
    except KeyboardInterrupt:
        return 0
    finally:
        lock.release()
    return 0


def _migrate(config: Config) -> int:
    """``relayd migrate``: never under a running relayd (new tables under old code).

    It holds the data_dir's lock while it runs, so a relayd starting meanwhile waits
    (exit 1, and systemd tries again) instead of migrating the same database at once.
    No data_dir yet: no relayd has run there, and migrate does not create one.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from daemon.store.engine import make_engine
    from daemon.store.migrate import MigrationError, upgrade

    lock = DataDirLock(config.data_path)
    try:
        if config.data_path.is_dir():
            lock.acquire()
    except DataDirInUse as exc:
        return _fail(f"migration refused: {exc}; stop it first", 1)
    except OSError as exc:
        return _fail(f"migration refused: {_os_problem(exc)}", 1)
    try:
        before, after = upgrade(make_engine(config.database_url))
    except (SQLAlchemyError, MigrationError, OSError) as exc:
        return _fail(f"migration failed: {_problem(config, exc)}", 1)
    finally:
        lock.release()
    print(f"database at {after} (was {before or 'empty'})")
    return 0


def _problem(config: Config, exc: Exception) -> str:
    """A database, migration or system failure of start or migrate as one line."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        return _database_problem(config, exc)
    if isinstance(exc, OSError):
        return _os_problem(exc)
    return str(exc)


def _database_problem(config: Config, exc: Exception) -> str:
    """One line naming the database (password hidden) and the driver's first complaint."""
    from daemon.core.redact import mask_url_password

    url = mask_url_password(config.database_url)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return f"database {url}: {reason}"


def loop_factory() -> Any:
    """uvloop when installed and not disabled (RELAY_LOOP=asyncio), else asyncio's default."""
    if os.environ.get("RELAY_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop

            return uvloop.new_event_loop
        except ImportError:
            pass
    return None


if __name__ == "__main__":
    sys.exit(main())
