"""``relayctl maintenance on|off|status``: maintenance mode (no new mail while on)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from relayctl.context import current
from relayctl.output import Output

app = typer.Typer(
    name="maintenance",
    help="Maintenance mode: SMTP answers 421 4.3.2 and the API 503 while it is on.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]
MAX_MINUTES = 525600  # the API's bound: a year


def render(out: Output, data: dict[str, Any]) -> None:
    """The mode as ``key: value`` lines (the API's object with --json)."""
    if out.json_mode:
        out.json(data)
        return
    on = data.get("maintenance_mode")
    pairs: list[tuple[str, Any]] = [("maintenance_mode", "on" if on else "off")]
    if on:
        pairs += [
            ("message", data.get("message")),
            ("started_at", data.get("started_at")),
            ("expected_end", data.get("expected_end")),
            ("delivery", "paused" if data.get("pause_delivery") else "running"),
        ]
    out.fields(pairs)


@app.command("on")
def turn_on(
    ctx: typer.Context,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Told to SMTP and API clients.")
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", min=0, max=MAX_MINUTES, help="Expected duration."),
    ] = None,
    pause_delivery: Annotated[
        bool, typer.Option("--pause-delivery", help="Also stop delivering queued mail.")
    ] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Turn maintenance mode on.

    With --json: {"maintenance_mode", "started_at", "expected_end", "message",
    "pause_delivery"}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("maintenance on") as client:
        data = client.set_maintenance(True, message, minutes, pause_delivery)
    render(out, data)


@app.command("off")
def turn_off(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Turn maintenance mode off; delivery resumes. With --json: as for on."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("maintenance off") as client:
        data = client.set_maintenance(False)
    render(out, data)


@app.command("status")
def status(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Whether maintenance mode is on. With --json: as for on."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("maintenance status") as client:
        data = client.maintenance_status()
    render(out, data)
