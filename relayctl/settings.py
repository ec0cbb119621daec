"""Where the client finds the daemon and its token when it is not told explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_DATA_DIR = "relay-data"
TOKEN_FILE = "admin.token"


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


def resolve_token(
    explicit: str | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str | None:
    """The API token: the explicit one, else ``RELAY_TOKEN``, else a local admin token file.

    An unreadable file (another user's daemon, mode 0600) is skipped rather than fatal: the
    daemon's 401 then tells the user what is missing.
    """
    env = os.environ if env is None else env
    if explicit:
        return explicit.strip()
    if env.get("RELAY_TOKEN", "").strip():
        return env["RELAY_TOKEN"].strip()
    for path in token_files(env, cwd):
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if token:
            return token
    return None
