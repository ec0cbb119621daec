"""``relayctl campaigns``: a campaign's delivery and engagement figures."""

from __future__ import annotations

from typing import Annotated

import typer

from relayctl.context import current

app = typer.Typer(name="campaigns", help="Campaign statistics.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]


@app.command("stats")
def campaign_stats(
    ctx: typer.Context,
    campaign_id: Annotated[str, typer.Argument(help="Campaign id.", show_default=False)],
    json_flag: JsonFlag = False,
) -> None:
    """Show a campaign's counts, rates and timeline.

    With --json: {"campaign_id", "name", "status", "stats": {...}, "rates": {...},
    "timeline": {...}} as GET /api/campaigns/{id}/stats answers.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"campaign {campaign_id}") as client:
        data = client.campaign_stats(campaign_id)
    if out.json_mode:
        out.json(data)
        return
    out.fields(
        [
            ("campaign", data.get("campaign_id")),
            ("name", data.get("name")),
            ("status", data.get("status")),
        ]
    )
    counts = data.get("stats") or {}
    rates = data.get("rates") or {}
    out.blank()
    out.table(
        ("COUNT", "VALUE"), [(key, value) for key, value in counts.items()], status_column=None
    )
    if rates:
        out.blank()
        out.table(
            ("RATE", "VALUE"),
            [
                (key, f"{value:.2%}" if isinstance(value, int | float) else value)
                for key, value in rates.items()
            ],
            status_column=None,
        )
    out.mapping(data.get("timeline") or {}, title="Timeline")
