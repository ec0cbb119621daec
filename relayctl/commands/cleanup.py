"""``relayctl cleanup``: delete old finished mail; made for cron (quiet unless it fails).

# /etc/cron.d/relay: every night, mail the operator only when something went wrong
15 3 * * *  relay  relayctl cleanup --older-than 90d
"""

from __future__ import annotations

import math
import re
from typing import Annotated

import typer

from relayctl.context import current

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(h|d|w)?\s*$")
_DAYS = {"h": 1 / 24, "d": 1.0, "w": 7.0}
MAX_DAYS = 36500  # the API's bound: a century


def parse_age(value: str) -> int:
    """ "90d", "12w", "48h" or a bare number of days -> whole days (rounded up)."""
    match = _AGE.match(value)
    if match is None:
        raise typer.BadParameter(
            f"{value!r} is not an age such as 90d, 12w or 48h", param_hint="--older-than"
        )
    days = float(match.group(1)) * _DAYS[match.group(2) or "d"]
    if days > MAX_DAYS:  # also an overflowing number, read as infinity
        raise typer.BadParameter(
            f"{value!r} is more than {MAX_DAYS} days", param_hint="--older-than"
        )
    return math.ceil(days)


def cleanup(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of mail to delete: 90d, 12w, 48h.")
    ] = "90d",
    include_sent: Annotated[
        bool, typer.Option("--include-sent/--no-include-sent", help="Sent and delivered mail.")
    ] = True,
    include_failed: Annotated[
        bool,
        typer.Option("--include-failed/--no-include-failed", help="Failed and cancelled mail."),
    ] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only, delete nothing.")] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Delete finished messages (and their events) older than --older-than.

    Pending mail is never deleted. Prints a summary on a terminal, nothing when piped
    (cron) unless it fails. With --json: {"deleted": {"messages", "webhook_events",
    "recipient_events"}, "space_freed_mb", "dry_run", "older_than"}.
    """
    days = parse_age(older_than)
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("cleanup") as client:
        data = client.cleanup(days, include_sent, include_failed, dry_run)
    if out.json_mode:
        out.json(data)
        return
    if not out.rich and not dry_run:
        return  # cron: silence means success
    deleted = data.get("deleted") or {}
    verb = "would delete" if dry_run else "deleted"
    counts = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in deleted.items())
    out.line(f"{verb} {counts}; {data.get('space_freed_mb', 0)} MB")
