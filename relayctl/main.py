"""relayctl's root: global options and the wiring of command groups (nothing else)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

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
from relayctl.context import EXIT_CODES_HELP, CliContext

app = typer.Typer(
    name="relayctl",
    help="Operate a Relay daemon (relayd) over its HTTP API.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
            help="Profile from ~/.config/relayctl/config.toml (default: the current one).",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON output on stdout.")
    ] = False,
) -> None:
    """Operate a Relay daemon (relayd) over its HTTP API."""
    ctx.obj = CliContext(
        url=url,
        token=token,
        workspace=workspace,
        json_output=json_output,
        profile=profile_name,
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


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="relayctl")
    except BrokenPipeError:
        # `relayctl queue ls | head`: the reader left; exit quietly, without a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
