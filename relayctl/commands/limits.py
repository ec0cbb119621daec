"""``relayctl rate-limit``: today's sending quotas, global, per workspace and per user."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from relayctl.context import current

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]


def rate_limit(
    ctx: typer.Context,
    workspace_id: Annotated[
        str | None, typer.Option("--workspace-id", help="Workspace (default: the caller's).")
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Show quota limits, use and reset times (GET /api/rate-limit).

    With --json: {"global": {...}, "workspace": {...}, "users": {id: {...}}}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("rate-limit") as client:
        data = client.rate_limit(workspace_id)
    if out.json_mode:
        out.json(data)
        return
    rows: list[tuple[Any, ...]] = []
    glob = data.get("global") or {}
    if glob:
        rows.append(
            (
                "global",
                "-",
                glob.get("limit"),
                glob.get("used"),
                glob.get("remaining"),
                glob.get("reset_at"),
            )
        )
    ws = data.get("workspace") or {}
    if ws:
        rows.append(
            (
                "workspace",
                ws.get("workspace_id"),
                ws.get("limit"),
                ws.get("used"),
                ws.get("remaining"),
                ws.get("reset_at"),
            )
        )
    for user, values in (data.get("users") or {}).items():
        rows.append(
            (
                "user",
                user,
                values.get("limit"),
                values.get("used"),
                values.get("remaining"),
                values.get("reset_at"),
            )
        )
    out.table(("SCOPE", "ID", "LIMIT", "USED", "REMAINING", "RESET"), rows, status_column=None)
