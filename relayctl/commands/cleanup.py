"""``relayctl cleanup``: delete old finished mail; made for cron (quiet unless it fails).

# /etc/cron.d/relay: every night, mail the operator only when something went wrong
15 3 * * *  relay  relayctl cleanup --older-than 90d
"""

from __future__ import annotations

import re
from typing import Annotated, NoReturn

import typer

from relayctl.context import ExitCode, current, exit_with

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]
_AGE = re.compile(r"^\s*([0-9]+)\s*([smhdw]?)\s*\Z", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DAYS = 36500  # the API's bound: a century
# The cleanup API takes whole days (older_than_days), so finer ages are refused, not rounded.
ACCEPTED = "whole days: 90d, 12w, or hours that make whole days (48h)"


def parse_age(value: str) -> int:
    """ "90d", "12w", "48h" or a bare number of days -> whole days. An age that is not a whole
    number of days (1h, 1.5d) is a one-line usage error, never rounded: the API takes days."""
    match = _AGE.match(value)
    if match is None:
        age_error(f"{value!r} is not an age in {ACCEPTED}")
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > 12:  # past any bound in any unit (and past what int() reads)
        age_error(f"{value[:40]!r}... is more than {MAX_DAYS} days")
    seconds = int(digits) * _SECONDS[(match.group(2) or "d").lower()]
    days, rest = divmod(seconds, _SECONDS["d"])
    if rest:
        age_error(f"{value!r} is not a whole number of days; cleanup takes {ACCEPTED}")
    if days > MAX_DAYS:
        age_error(f"{value!r} is more than {MAX_DAYS} days")
    return days


def age_error(text: str) -> NoReturn:
    """A bad --older-than: one line on stderr, exit 2."""
    exit_with(f"relayctl: invalid value for --older-than: {text}", ExitCode.USAGE)


def cleanup(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option("--older-than", help="Age of mail to delete, in whole days: 90d, 12w, 48h."),
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
