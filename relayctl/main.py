"""relayctl's root: global options, the wiring of command groups, and the entry point.

The entry point and the root group also keep relayctl's promise for the streams: output
that stdout's encoding cannot carry is escaped, not a crash; a closed pipe (``| head``) ends
relayctl quietly with 141; any other failed write of the output (``> /dev/full``) is one
line on stderr and exit 1; usage errors are plain lines unless stderr is a terminal.
"""

from __future__ import annotations

import codecs
import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from relayctl import __version__
from relayctl.commands import (
    accounts,
    addresses,
    campaigns,
    cleanup,
    config,
    keys,
    limits,
    maintenance,
    profile,
    providers,
    queue,
    recipients,
    send,
    stats,
    top,
    version,
    webhooks,
)
from relayctl.context import EXIT_CODES_HELP, CliContext, ExitCode
from relayctl.output import GuardedStream, OutputError


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _say(line: str) -> None:
    """A diagnostic line on stderr, if stderr still takes one."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _discard_stdout() -> None:
    """Point stdout's descriptor at /dev/null, so what is still buffered cannot fail again
    when Python flushes it on exit (an "Exception ignored" message and exit 120)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # a test runner's in-memory stdout
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def output_failed(exc: OSError) -> ExitCode | None:
    """The exit code for a failed write of relayctl's output; None when ``exc`` is not one.

    A closed pipe is how a reader says it has seen enough (``relayctl queue ls | head``):
    nothing more is printed and relayctl exits 141, the status a shell gives a tool that
    SIGPIPE ended. Any other failure to write the output is one line on stderr and exit 1.
    """
    if exc.errno == errno.EPIPE:  # relayctl writes no pipe but stdout and stderr
        _discard_stdout()
        return ExitCode.BROKEN_PIPE
    if not isinstance(exc, OutputError):
        return None
    _discard_stdout()
    _say(f"relayctl: cannot write output: {exc.strerror or exc}")
    return ExitCode.FAILED


@contextmanager
def _plain_usage_errors() -> Iterator[None]:
    """Usage errors as Click's plain lines when stderr is not a terminal (cron, CI logs).

    On a terminal Typer's boxed panel is kept: the error is re-raised for Typer to show.
    """
    try:
        yield
    except typer.TyperException as exc:
        # The help for a bare `relayctl queue` is already printed; Typer knows what to do.
        if _is_terminal(sys.stderr) or type(exc).__name__ == "NoArgsIsHelpError":
            raise
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            _say(f"Error: {exc.format_message()}")
        raise typer.Exit(exc.exit_code) from None


@contextmanager
def _output_errors() -> Iterator[None]:
    """A failed write of the output becomes :func:`output_failed`'s exit code."""
    try:
        yield
    except OSError as exc:
        code = output_failed(exc)
        if code is None:
            raise
        raise typer.Exit(int(code)) from None


class RelayGroup(TyperGroup):
    """The root group: plain usage errors off a terminal, and failed output handled before
    Typer's own handler (which exits 1 on a closed pipe)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Any = None,
        **extra: Any,
    ) -> Any:
        with _plain_usage_errors(), _output_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _plain_usage_errors(), _output_errors():
            return super().invoke(ctx)


app = typer.Typer(
    name="relayctl",
    cls=RelayGroup,
    help="Operate a Relay daemon (relayd) over its HTTP API.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    """``--version``: the client's version, as ``relayctl version`` prints it; no request."""
    if value:
        typer.echo(f"relayctl {__version__}")
        raise typer.Exit(int(ExitCode.OK))


def _from_command_line(ctx: typer.Context, name: str, value: str | None) -> str | None:
    """``value`` if it was given as a flag; None if it came from the environment."""
    source = ctx.get_parameter_source(name)
    return value if source is not None and source.name == "COMMANDLINE" else None


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="RELAY_URL",
            help="relayd's HTTP URL.",
            show_default="http://127.0.0.1:8080",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="RELAY_TOKEN",
            help="API token (default: the admin.token relayd wrote in $RELAY_DATA_DIR or "
            "./relay-data on this host).",
            show_default=False,
        ),
    ] = None,
    workspace: Annotated[
        str | None, typer.Option("--workspace", help="Workspace id sent as X-Workspace-ID.")
    ] = None,
    profile_name: Annotated[
        str | None,
        typer.Option(
            "--profile",
            envvar="RELAY_PROFILE",
            help="Profile from ~/.config/relayctl/config.toml (default: the current one). "
            "Precedence: --url/--token/--workspace, then --profile, then RELAY_URL and "
            "RELAY_TOKEN, then RELAY_PROFILE or the current profile. A profile's token is "
            "only sent to its own URL.",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON output on stdout.")
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print relayctl's version and exit (relayd is not contacted).",
        ),
    ] = False,
) -> None:
    """Operate a Relay daemon (relayd) over its HTTP API."""
    del show_version  # handled by its eager callback
    ctx.obj = CliContext(
        url=_from_command_line(ctx, "url", url),
        token=_from_command_line(ctx, "token", token),
        workspace=workspace,
        json_output=json_output,
        profile=profile_name,
        profile_explicit=_from_command_line(ctx, "profile_name", profile_name) is not None,
    )


app.command("send")(send.send)
app.add_typer(queue.app)
app.add_typer(recipients.app)
app.add_typer(campaigns.app)
app.add_typer(webhooks.app)
app.command("stats")(stats.stats)
app.command("top")(top.top)
app.command("rate-limit")(limits.rate_limit)
app.add_typer(providers.app)
app.add_typer(config.app)
app.add_typer(maintenance.app)
app.command("cleanup")(cleanup.cleanup)
app.add_typer(keys.app)
app.add_typer(accounts.app)
app.add_typer(addresses.app)
app.add_typer(profile.app)
app.command("version")(version.version)


def tolerate_unencodable_output() -> None:
    """Escape (``\\xe9``) what stdout's or stderr's encoding cannot carry instead of
    raising UnicodeEncodeError (``PYTHONIOENCODING=ascii``, a C locale)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None:
            continue
        try:
            utf8 = codecs.lookup(stream.encoding).name == "utf-8"
        except (LookupError, TypeError):
            utf8 = False
        if utf8 and stream.errors != "strict":
            continue  # UTF-8 carries any text; keep e.g. surrogateescape's round trip
        reconfigure(errors="backslashreplace")


def main() -> None:
    """Console-script entry point."""
    tolerate_unencodable_output()
    sys.stdout = GuardedStream(sys.stdout)
    sys.stderr = GuardedStream(sys.stderr)
    code: int | str | None = int(ExitCode.OK)
    try:
        app(prog_name="relayctl")
    except SystemExit as exc:
        code = exc.code
    except OSError as exc:
        failed = output_failed(exc)
        if failed is None:
            raise
        code = int(failed)
    # What is still buffered is written now, so that a failure is reported like any other
    # (Python's own flush on exit would print "Exception ignored" and exit 120).
    try:
        sys.stdout.flush()
    except OSError as exc:
        code = int(output_failed(exc) or ExitCode.FAILED)
    sys.exit(code)
