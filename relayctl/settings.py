"""Where the client finds the daemon and its token when it is not told explicitly."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_DATA_DIR = "relay-data"
TOKEN_FILE = "admin.token"

# The password of ``scheme://user:password@host``, also in a string that is not a valid URL.
_USERINFO_PASSWORD = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?([^/?#@:]*):[^/?#]*@")


class TokenFileError(Exception):
    """An admin token file exists but is not a token (not UTF-8 text)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = path
        self.reason = reason


def redact_url(url: str) -> str:
    """``url`` as messages may show it: a password in it replaced by ``***``.

    ``http://ops:secret@relay:8080`` becomes ``http://ops:***@relay:8080``; a URL without a
    password is unchanged.
    """
    return _USERINFO_PASSWORD.sub(r"\1\2:***@", url, count=1)


def resolve_url(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The daemon's base URL: the explicit one, else ``RELAY_URL``, else the default."""
    env = os.environ if env is None else env
    url = explicit or env.get("RELAY_URL") or DEFAULT_URL
    return url.rstrip("/")


def token_files(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> list[Path]:
    """Admin token files a daemon on this host may have written, in the order they are tried.

    relayd writes ``data_dir/admin.token`` on first start when no token is configured;
    ``RELAY_DATA_DIR`` is the same variable relayd reads, and ``./relay-data`` its default.
    """
    env = os.environ if env is None else env
    base = Path.cwd() if cwd is None else cwd
    candidates: list[Path] = []
    if env.get("RELAY_DATA_DIR"):
        candidates.append(base / env["RELAY_DATA_DIR"] / TOKEN_FILE)
    candidates.append(base / DEFAULT_DATA_DIR / TOKEN_FILE)
    return list(dict.fromkeys(candidates))


def local_token(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str | None:
    """The admin token a daemon on this host wrote, from the first readable token file.

    An unreadable file (another user's daemon, mode 0600) is skipped rather than fatal: the
    daemon's 401 then tells the user what is missing. A file that is readable but not UTF-8
    text raises :class:`TokenFileError` naming it: it is not a token, and silently trying
    the next one would hide that.
    """
    for path in token_files(env, cwd):
        try:
            token = path.read_bytes().decode("utf-8").strip()
        except OSError:
            continue
        except UnicodeDecodeError as exc:
            raise TokenFileError(path, f"not UTF-8 text (byte {exc.start})") from None
        if token:
            return token
    return None


def is_loopback(url: str) -> bool:
    """Whether ``url`` names a daemon on this host (localhost or a loopback address): the
    only kind the admin token a local daemon wrote may be sent to."""
    try:
        host = (urlsplit(url.strip()).hostname or "").rstrip(".").lower()
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(
    explicit: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    url: str | None = None,
) -> str | None:
    """The API token: the explicit one, else ``RELAY_TOKEN``, else a local admin token file
    when ``url`` (if given) is a loopback one: that token never leaves this host."""
    env = os.environ if env is None else env
    if explicit:
        return explicit.strip()
    if env.get("RELAY_TOKEN", "").strip():
        return env["RELAY_TOKEN"].strip()
    if url is not None and not is_loopback(url):
        return None
    return local_token(env, cwd)


@dataclass(frozen=True)
class Source:
    """Connection settings from one place (the flags, the environment, a profile)."""

    url: str | None = None
    token: str | None = None
    workspace: str | None = None


def same_daemon(a: str, b: str) -> bool:
    """Whether two base URLs name the same daemon (scheme, host and port; case-insensitive)."""

    def origin(url: str) -> tuple[str, str, int | None] | str:
        try:
            parts = urlsplit(url.strip())
            default = {"http": 80, "https": 443}.get(parts.scheme.lower())
            return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default
        except ValueError:
            return url.strip().rstrip("/")

    return origin(a) == origin(b)


def resolve_sources(sources: Sequence[Source]) -> Source:
    """URL, token and workspace from ``sources``, highest precedence first.

    The URL is the first one given (else the default). A source that names a *different*
    URL contributes nothing: its token was stored for another daemon and must not be sent to
    this one (``--url B`` never sends the token of a profile whose URL is A). A source
    without a URL (``--token`` alone, ``RELAY_TOKEN`` alone, a profile holding only a
    token) goes with whatever URL is in use.
    """
    url = next((s.url for s in sources if s.url), DEFAULT_URL).rstrip("/")
    usable = [s for s in sources if not s.url or same_daemon(s.url, url)]
    token = next((s.token for s in usable if s.token), None)
    workspace = next((s.workspace for s in usable if s.workspace), None)
    return Source(url, token, workspace)
