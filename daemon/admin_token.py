"""The admin token: where relayd finds it, and what it refuses to run with.

Sources, the first one set wins: ``[auth] admin_token``, ``[auth] admin_token_file``,
else ``data_dir/admin.token``, generated once (mode 0600) and kept across restarts.

An empty token never becomes the admin token. An operator-set one that is blank,
and a token file that is missing, unreadable, not UTF-8 text or empty, is a
configuration error naming the key: relayd (and ``relayd check-config``) exits 2,
as for any other bad setting. One shorter than :data:`MIN_LENGTH` characters is
only warned about (at start, SIGHUP and check-config): refusing it would keep an
upgraded relayd from starting on a token that worked the day before, and the
HTTP API throttles guessing (daemon.api.auth_lockout).

The generated file is relayd's own: found readable by others (restored from a
backup) it is made 0600 again with a warning (daemon.private); found empty or
blank (truncated by a full disk, or a crash mid-write) it is generated anew with
a warning, since a client holding the old token holds nothing it could still
use. One that is not UTF-8 text is refused rather than replaced: it was not
written by relayd, and relayctl refuses it too.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

from daemon.config import BLANK_ADMIN_TOKEN, Config, ConfigError, read_secret_file
from daemon.private import read_private

log = logging.getLogger("relayd")

TOKEN_FILE = "admin.token"
PREFIX = "rly_admin_"
# Characters an operator-set token should have at least: a guesser that gets ten
# tries per ten minutes (the default lockout) needs far longer than relayd lives.
MIN_LENGTH = 16


def token_path(config: Config) -> Path:
    """Where relayd keeps the admin token it generates: ``data_dir/admin.token``."""
    return config.data_path / TOKEN_FILE


def configured_admin_token(config: Config) -> tuple[str, str] | None:
    """The operator's token and the key it came from, or None when neither is set.

    Raises ConfigError naming ``auth.admin_token`` (blank) or ``auth.admin_token_file``
    (missing, unreadable, not text, empty).
    """
    auth = config.auth
    if auth.admin_token:
        token = auth.admin_token.strip()
        if not token:
            raise ConfigError("auth.admin_token", BLANK_ADMIN_TOKEN)
        return token, "auth.admin_token"
    if auth.admin_token_file:
        try:
            return read_secret_file(auth.admin_token_file), "auth.admin_token_file"
        except ValueError as exc:
            raise ConfigError("auth.admin_token_file", str(exc)) from None
    return None


def _read_generated(path: Path, reader: Callable[[Path], str]) -> str:
    """``reader(path)``, with a ConfigError naming ``data_dir`` when the file is not text
    relayd could have written there, or cannot be read."""
    try:
        return reader(path)
    except UnicodeDecodeError as exc:
        problem = f"is not an admin token (not UTF-8 text, byte {exc.start})"
    except IsADirectoryError:
        problem = "is a directory, not the admin token file"
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    raise ConfigError(
        "data_dir", f"{str(path)!r} {problem}; remove it and relayd generates a new one"
    )


def _write_generated(path: Path) -> str:
    """A new token written to ``path`` (0600) in one step: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = PREFIX + secrets.token_urlsafe(32)
    fd, temporary = tempfile.mkstemp(prefix=f".{TOKEN_FILE}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:  # mkstemp creates it 0600
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return token


def generated_admin_token(config: Config) -> str:
    """``data_dir/admin.token``: read (made 0600 if it was not), or generated once; an
    empty one is generated anew, with a warning."""
    path = token_path(config)
    if path.exists():
        token = _read_generated(path, read_private)
        if token:
            return token
        log.warning(
            "%s was empty (truncated: a full disk, or a crash while it was written);"
            " generated a new admin token in it",
            path,
        )
        return _write_generated(path)
    token = _write_generated(path)
    log.info("generated admin token in %s", path)
    return token


def check_admin_token(config: Config) -> list[str]:
    """What ``relayd check-config``, start-up and SIGHUP say about the admin token.

    Raises ConfigError for a token relayd cannot run with; returns warnings (a short
    operator-set token). Nothing is generated or changed here: an absent or empty
    generated token is written when relayd starts.
    """
    configured = configured_admin_token(config)
    if configured is None:
        path = token_path(config)
        if path.exists():
            _read_generated(path, lambda p: p.read_bytes().decode("utf-8"))
        return []
    token, key = configured
    if len(token) < MIN_LENGTH:
        return [
            f"{key}: the admin token is only {len(token)} characters long; use at least"
            f" {MIN_LENGTH} random ones (or leave auth.admin_token and"
            " auth.admin_token_file empty to have relayd generate one)"
        ]
    return []
