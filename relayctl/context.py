"""What every command shares: the global options, the client they build, and how a failure
becomes one line on stderr and a documented exit code."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import NoReturn

import typer

from relayctl.client import Client
from relayctl.errors import (
    AuthError,
    ConfigurationError,
    NotFoundError,
    RelayError,
    UnreachableError,
)
from relayctl.output import Output
from relayctl.profiles import ProfileError, active_profile


class ExitCode(IntEnum):
    """relayctl's exit codes; scripts and cron rely on them."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    AUTH = 4
    UNREACHABLE = 5
    PARTIAL = 6


EXIT_CODES_HELP = "\n".join(
    [
        "Exit codes:",
        "0  ok",
        "1  the operation failed (e.g. the message is in the wrong state)",
        "2  usage error",
        "3  not found",
        "4  authentication refused (check --token / RELAY_TOKEN)",
        "5  relayd unreachable (check --url / RELAY_URL)",
        "6  partial success of a bulk operation",
    ]
)

# What to fix for each way the client can be misconfigured.
_CONFIGURATION_HINTS = {
    "INVALID_URL": "set --url or RELAY_URL",
    "INVALID_TOKEN": "check --token or RELAY_TOKEN",
    "INVALID_WORKSPACE": "check --workspace",
}


@dataclass(frozen=True)
class CliContext:
    """The global options, resolved once by the root callback and read by every command."""

    url: str | None = None
    token: str | None = None
    workspace: str | None = None
    json_output: bool = False
    profile: str | None = None

    def client(self) -> Client:
        """A client for the selected daemon; a malformed URL is a usage error.

        Flags and RELAY_URL/RELAY_TOKEN win over the profile (``--profile``, else the
        current one), which wins over the defaults.
        """
        url, token, workspace = self.url, self.token, self.workspace
        try:
            profile = active_profile(self.profile)
        except ProfileError as exc:
            exit_with(f"relayctl: {exc}", ExitCode.USAGE)
        if profile is not None:
            url = url or profile.url
            token = token or profile.token
            workspace = workspace or profile.workspace
        try:
            return Client(api_key=token, workspace_id=workspace, base_url=url)
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
            line, code = describe(exc, action, client.base_url, hint)
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
    """The one-line message and exit code for a client error."""
    where = f"relayd at {url}"
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
                "RELAY_TOKEN, or run where relayd's data_dir/admin.token is readable)",
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
    if isinstance(exc, ConfigurationError):
        return f"relayctl: {action}: {exc.message}", ExitCode.USAGE
    suffix = ""
    if "X-Workspace-ID" in exc.message:  # the header is relayctl's --workspace (or --account)
        suffix = " (in relayctl: --account, or the global --workspace)"
    return f"relayctl: {action} failed: {exc.message} ({exc.code}){suffix}", ExitCode.FAILED
