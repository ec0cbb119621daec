"""``relayctl version``: the client's version and the daemon's."""

from __future__ import annotations

from typing import Annotated

import typer

from relayctl import __version__
from relayctl.context import current

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the versions as JSON.")]


def version(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Print relayctl's version and the daemon's.

    With --json: {"relayctl": "0.1.0", "relayd": {the daemon's GET /health answer}}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    if not out.json_mode:
        # Printed first so the client version shows even when the daemon is unreachable.
        out.line(f"relayctl {__version__}")
    with state.session("version") as client:
        health = client.health()
    if out.json_mode:
        out.json({"relayctl": __version__, "relayd": health})
        return
    daemon_version = health.get("version") or "unknown"
    status = health.get("status")
    suffix = f" ({status})" if status else ""
    out.line(f"relayd {daemon_version} at {client.display_url}{suffix}")
