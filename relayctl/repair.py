"""Bulk queue repair for ``relayctl queue retry|cancel`` with filter flags.

The run is: a dry run to count the matches; above ``CONFIRM_ABOVE`` messages a
confirmation (``--yes`` skips it; without a terminal and without ``--yes`` the
command refuses, exit 2); then the real call. Exit 6 when some matches changed state
before they could be acted on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import Any

import typer

from relayctl.client import Client
from relayctl.context import ExitCode, exit_with
from relayctl.output import Output

CONFIRM_ABOVE = 10
PAST = {"retry": "retried", "cancel": "cancelled"}


@dataclass(frozen=True)
class QueueFilter:
    """The filter flags, named as the API's fields."""

    status: list[str] | None = None
    workspace_id: str | None = None
    campaign_id: str | None = None
    sender: str | None = None
    recipient_domain: str | None = None
    older_than: str | None = None
    newer_than: str | None = None
    provider: str | None = None
    error_contains: str | None = None

    def given(self) -> dict[str, Any]:
        """The conditions actually set."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {key: value for key, value in values.items() if value not in (None, "", [])}


def interactive() -> bool:
    """Whether a human can answer a question (stdin and stdout are terminals)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def run_bulk(
    client: Client,
    out: Output,
    action: str,
    flt: QueueFilter,
    dry_run: bool,
    assume_yes: bool,
) -> None:
    """Preview, confirm when needed, act, report; exits with the documented code."""
    call = client.bulk_retry if action == "retry" else client.bulk_cancel
    conditions = flt.given()
    preview = call(dry_run=True, **conditions)
    matched = int(preview.get("matched", 0))
    if dry_run:
        report(out, preview, action)
        return
    if matched == 0:
        # Nothing to act on, so no real call; the answer is still that of a real run.
        report(out, {**preview, "dry_run": False, "count": 0, "ids": []}, action)
        return
    if matched > CONFIRM_ABOVE and not assume_yes:
        if not interactive():
            exit_with(
                f"relayctl: {action} of {matched} messages needs confirmation: "
                "add --yes (or preview with --dry-run)",
                ExitCode.USAGE,
            )
        if not typer.confirm(f"{action.capitalize()} {matched} messages?", default=False):
            exit_with("relayctl: nothing done", ExitCode.FAILED)
    result = call(dry_run=False, **conditions)
    report(out, result, action)
    if result.get("skipped"):
        raise typer.Exit(int(ExitCode.PARTIAL if result.get("count") else ExitCode.FAILED))


def report(out: Output, data: dict[str, Any], action: str) -> None:
    """The ids acted on, one per line (the API's answer with --json)."""
    if out.json_mode:
        out.json(data)
        return
    for message_id in data.get("ids", []):
        out.line(str(message_id))
    verb = f"would {action}" if data.get("dry_run") else PAST[action]
    summary = f"{verb} {data.get('count', 0)} of {data.get('matched', 0)} matching messages"
    skipped = data.get("skipped") or []
    if skipped:
        summary += f"; {len(skipped)} changed state first: {', '.join(skipped[:5])}"
        out.err_console.print(summary)
    else:
        out.note(summary)
