"""What every command shares: the global options, the client they build, and how a failure
becomes one line on stderr and a documented exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import NoReturn

import typer

from relayctl.client import Client
from relayctl.errors import (
    AuthError,
    ConfigurationError,
    EndpointNotFoundError,
    InvalidRequestError,
    NotFoundError,
    RelayError,
    UnreachableError,
)
from relayctl.output import Output
from relayctl.profiles import Profile, ProfileError, ProfileStore
from relayctl.settings import (
    Source,
    TokenFileError,
    is_loopback,
    local_token,
    redact_url,
    resolve_sources,
)


class ExitCode(IntEnum):
    """relayctl's exit codes; scripts and cron rely on them."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    AUTH = 4
    UNREACHABLE = 5
    PARTIAL = 6
    # 128 + SIGPIPE, what a shell reports for a tool killed by writing to a closed pipe.
    BROKEN_PIPE = 141


EXIT_CODES_HELP = "\n".join(
    [
        "Exit codes:",
        "0  ok",
        "1  the operation failed (e.g. the message is in the wrong state)",
        "2  usage error (also input relayd refuses as invalid, a bad config file)",
        "3  not found",
        "4  authentication refused (check --token / RELAY_TOKEN)",
        "5  relayd unreachable (check --url / RELAY_URL)",
        "6  partial success of a bulk operation",
        "141  output closed early by the reader (e.g. | head); nothing more is printed",
    ]
)

# What to fix for each way the client can be misconfigured.
_CONFIGURATION_HINTS = {
    "INVALID_URL": "set --url or RELAY_URL",
    "INVALID_TOKEN": "check --token or RELAY_TOKEN",
    "INVALID_WORKSPACE": "check --workspace",
    "INVALID_TOKEN_FILE": "set --token or RELAY_TOKEN, or remove the file",
}


@dataclass(frozen=True)
class CliContext:
    """The global options, resolved once by the root callback and read by every command.

    ``url``, ``token`` and ``workspace`` are the flags only (RELAY_URL and RELAY_TOKEN are
    read by :meth:`client`); ``profile_explicit`` says ``--profile`` was on the command line
    (a name from RELAY_PROFILE selects the profile in place of the current one).
    """

    url: str | None = None
    token: str | None = None
    workspace: str | None = None
    json_output: bool = False
    profile: str | None = None
    profile_explicit: bool = False

    def sources(
        self, env: Mapping[str, str] | None = None, store: ProfileStore | None = None
    ) -> list[Source]:
        """Where the connection settings come from, highest precedence first.

        The flags (--url, --token, --workspace), then ``--profile NAME``, then RELAY_URL and
        RELAY_TOKEN, then the profile RELAY_PROFILE names or else the current one. A profile
        comes as a whole: its token is only ever sent to its own URL (see resolve_sources).
        A profile that cannot be read is a ProfileError.
        """
        env = os.environ if env is None else env
        store = store or ProfileStore()
        flags = Source(self.url, self.token, self.workspace)
        environment = Source(
            env.get("RELAY_URL", "").strip() or None, env.get("RELAY_TOKEN", "").strip() or None
        )
        selected: Profile | None
        if self.profile:
            selected = store.get(self.profile)
        else:
            name = store.current()
            selected = store.profiles().get(name) if name else None
        profile = Source(selected.url, selected.token, selected.workspace) if selected else Source()
        if self.profile_explicit:
            return [flags, profile, environment]
        return [flags, environment, profile]

    def client(self) -> Client:
        """A client for the selected daemon; a malformed URL or profile is a usage error.

        Without a token from any source, the admin token relayd wrote on this host is used
        for a loopback URL (never sent anywhere else).
        """
        try:
            resolved = resolve_sources(self.sources())
        except ProfileError as exc:
            exit_with(f"relayctl: {exc}", ExitCode.USAGE)
        token = resolved.token
        try:
            if token is None and is_loopback(resolved.url or ""):
                token = local_token()  # a local daemon's admin token never leaves this host
            return Client(
                api_key=token,
                workspace_id=resolved.workspace,
                base_url=resolved.url,
                discover=False,
            )
        except TokenFileError as exc:
            hint = _CONFIGURATION_HINTS["INVALID_TOKEN_FILE"]
            exit_with(f"relayctl: {exc} ({hint})", ExitCode.USAGE)
        except ConfigurationError as exc:
            hint = _CONFIGURATION_HINTS.get(exc.code, "set --url or RELAY_URL")
            exit_with(f"relayctl: {exc.message} ({hint})", ExitCode.USAGE)

    def output(self, json_flag: bool = False) -> Output:
        """The output for a command; ``--json`` works before or after the command name."""
        return Output(json_mode=self.json_output or json_flag)

    @contextmanager
    def session(self, action: str, hint: str = "") -> Iterator[Client]:
        """A client for the block; a client error inside it becomes one line and an exit code.

        ``action`` names what failed ("cancel msg-1"); ``hint`` says what to do on not-found.
        """
        client = self.client()
        try:
            yield client
        except RelayError as exc:
            line, code = describe(exc, action, client.display_url, hint)
            exit_with(line, code)
        finally:
            client.close()


def current(ctx: typer.Context) -> CliContext:
    """The CliContext the root callback stored (a default one when a command runs alone)."""
    found = ctx.find_object(CliContext)
    return found if found is not None else CliContext()


def exit_with(line: str, code: ExitCode) -> NoReturn:
    """Print one diagnostic line on stderr and exit with ``code``."""
    sys.stderr.write(line.rstrip() + "\n")
    raise typer.Exit(int(code))


def describe(exc: RelayError, action: str, url: str, hint: str = "") -> tuple[str, ExitCode]:
    """The one-line message and exit code for a client error.

    Exit 3 is for a missing resource only; a missing endpoint (ROUTE_NOT_FOUND, or a 404 that
    is not relayd's) is 1, and input relayd refuses as invalid is 2, like bad input relayctl
    catches itself.
    """
    where = f"relayd at {redact_url(url)}"
    if isinstance(exc, UnreachableError):
        return (
            f"relayctl: {exc.message} (is relayd running? set --url or RELAY_URL)",
            ExitCode.UNREACHABLE,
        )
    if isinstance(exc, AuthError):
        if exc.status == 403:
            return (
                f"relayctl: {action}: {where} refused: {exc.message} ({exc.code}) "
                "(use a token with access to this workspace)",
                ExitCode.AUTH,
            )
        if exc.code == "AUTH_REQUIRED":
            return (
                f"relayctl: {action}: {where} requires a token ({exc.code}) (set --token or "
                "RELAY_TOKEN, or, for a relayd on this host, run where its data_dir/admin.token "
                "is readable)",
                ExitCode.AUTH,
            )
        return (
            f"relayctl: {action}: token rejected by {where}: {exc.message} ({exc.code}) "
            "(check --token or RELAY_TOKEN)",
            ExitCode.AUTH,
        )
    if isinstance(exc, NotFoundError):
        suffix = f" ({hint})" if hint else ""
        return f"relayctl: {action}: {exc.message} ({exc.code}){suffix}", ExitCode.NOT_FOUND
    if isinstance(exc, EndpointNotFoundError):
        return (
            f"relayctl: {action}: {where} has no such endpoint ({exc.code}) "
            "(is --url pointing at relayd, and is relayd up to date?)",
            ExitCode.FAILED,
        )
    if isinstance(exc, ConfigurationError):
        return f"relayctl: {action}: {exc.message}", ExitCode.USAGE
    suffix = ""
    if "X-Workspace-ID" in exc.message:  # the header is relayctl's --workspace (or --account)
        suffix = " (in relayctl: --account, or the global --workspace)"
    code = ExitCode.USAGE if isinstance(exc, InvalidRequestError) else ExitCode.FAILED
    return f"relayctl: {action} failed: {exc.message} ({exc.code}){suffix}", code
