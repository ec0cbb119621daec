"""``relayctl queue``: list, inspect, retry and cancel queued messages."""

from __future__ import annotations

import json
import time
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from relayctl.batch import page_hint
from relayctl.context import ExitCode, current, exit_with
from relayctl.output import Output
from relayctl.repair import CONFIRM_ABOVE, QueueFilter, run_bulk

app = typer.Typer(
    name="queue",
    help="Inspect and repair the message queue.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]
MessageId = Annotated[str, typer.Argument(help="Message id (msg-...).", show_default=False)]
NOT_FOUND_HINT = "list message ids with: relayctl queue ls"


class Status(StrEnum):
    """Message statuses, as the API names them."""

    queued = "queued"
    scheduled = "scheduled"
    processing = "processing"
    sent = "sent"
    delivered = "delivered"
    failed = "failed"
    auth_error = "auth_error"
    cancelled = "cancelled"


LIST_COLUMNS = ("ID", "STATUS", "FROM", "TO", "SUBJECT", "QUEUED", "RETRIES", "ERROR")


def parse_time_filter(param: typer.CallbackParam, value: str | None) -> str | None:
    """An ISO 8601 date or time for --since/--until, checked here (the daemon reads it as UTC
    when it has no offset); a typo is a usage error, not a refusal from the daemon."""
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date or time, e.g. 2026-01-01 or 2026-01-01T10:00:00Z"
        ) from None
    return value


@app.command("ls")
def list_messages(
    ctx: typer.Context,
    status: Annotated[
        Status | None, typer.Option("--status", help="Only messages in this status.")
    ] = None,
    sender: Annotated[str | None, typer.Option("--from", help="Only from this sender.")] = None,
    recipient: Annotated[str | None, typer.Option("--to", help="Only to this recipient.")] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            callback=parse_time_filter,
            help="Queued at or after this ISO 8601 date or time (UTC unless it has an offset).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            callback=parse_time_filter,
            help="Queued at or before this ISO 8601 date or time (UTC unless it has an offset).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Messages per page.")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many.")] = 0,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until interrupted (Ctrl-C).")
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.1, max=86400, help="Seconds between refreshes."),
    ] = 2.0,
    iterations: Annotated[
        int, typer.Option("--iterations", min=0, help="With --watch: stop after N (0: never).")
    ] = 0,
    json_flag: JsonFlag = False,
) -> None:
    """List messages, newest first.

    With --json: {"messages": [...], "pagination": {"total", "limit", "offset", "has_more"}}
    (with --watch, one such document per line).
    """
    state = current(ctx)
    out = state.output(json_flag)
    filters = {"from": sender, "to": recipient, "date_from": since, "date_to": until}
    with state.session("list messages") as client:

        def fetch() -> dict[str, Any]:
            return client.list_messages(
                status=status.value if status else None, limit=limit, offset=offset, **filters
            )

        if not watch:
            render_page(out, fetch(), offset)
            return
        shown = 0
        try:
            while iterations == 0 or shown < iterations:
                page = fetch()
                if out.json_mode:
                    out.console.file.write(json.dumps(page, separators=(",", ":")) + "\n")
                    out.console.file.flush()
                else:
                    if out.rich:
                        out.console.clear()
                    out.line(f"{datetime.now().astimezone():%H:%M:%S} every {interval:g}s")
                    render_page(out, page, offset)
                shown += 1
                if iterations == 0 or shown < iterations:
                    time.sleep(interval)
        except KeyboardInterrupt:
            return


def render_page(out: Output, page: dict[str, Any], offset: int) -> None:
    """One page of messages as a table (or the JSON document)."""
    if out.json_mode:
        out.json(page)
        return
    messages: list[dict[str, Any]] = page.get("messages", [])
    rows = [
        (
            m.get("id"),
            m.get("status"),
            m.get("from"),
            [*m.get("to", []), *m.get("cc", []), *m.get("bcc", [])],
            m.get("subject"),
            m.get("queued_at"),
            m.get("retry_count"),
            m.get("error"),
        )
        for m in messages
    ]
    out.table(LIST_COLUMNS, rows)
    if page_hint(out, page, len(messages), offset):
        return
    if messages:
        out.note(f"{len(messages)} of {len(messages)}")
    else:
        out.note("no messages")


@app.command("show")
def show_message(ctx: typer.Context, message_id: MessageId, json_flag: JsonFlag = False) -> None:
    """Show one message: envelope, status, headers, recipients, attempts and error.

    With --json: the API's message object.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"show {message_id}", NOT_FOUND_HINT) as client:
        message = client.get_message(message_id)
    if out.json_mode:
        out.json(message)
        return
    render_message(out, message)


def render_message(out: Output, m: dict[str, Any]) -> None:
    """A message's details as text: fields, headers, recipients, attachments, attempts."""
    out.fields(
        [
            ("id", m.get("id")),
            ("status", m.get("status")),
            ("from", m.get("from")),
            ("to", m.get("to")),
            ("cc", m.get("cc")),
            ("bcc", m.get("bcc")),
            ("subject", m.get("subject")),
            ("workspace", m.get("workspace_id")),
            ("campaign", m.get("campaign_id")),
            ("priority", m.get("priority")),
            ("queued_at", m.get("queued_at")),
            ("send_at", m.get("send_at")),
            ("processed_at", m.get("processed_at")),
            ("provider", m.get("provider")),
            ("provider_message_id", m.get("provider_message_id")),
            ("retry_count", m.get("retry_count")),
            ("error", m.get("error")),
        ]
    )
    out.mapping(m.get("headers") or {}, title="Headers")
    if m.get("metadata"):
        out.mapping(m["metadata"], title="Metadata")
    recipients = m.get("recipients") or []
    if recipients:
        out.blank()
        out.table(
            ("ADDRESS", "STATUS", "ERROR"),
            [(r.get("address"), r.get("status"), r.get("error")) for r in recipients],
            title="Recipients",
        )
    attachments = m.get("attachments") or []
    if attachments:
        out.blank()
        out.table(
            ("FILENAME", "TYPE", "SIZE"),
            [(a.get("filename"), a.get("content_type"), a.get("size")) for a in attachments],
            title="Attachments",
            status_column=None,
        )
    attempts = m.get("attempts") or []
    out.blank()
    if attempts:
        out.table(
            ("AT", "PROVIDER", "OUTCOME", "CODE", "MS", "REPLY"),
            [
                (
                    a.get("attempted_at"),
                    a.get("provider"),
                    a.get("outcome"),
                    a.get("code"),
                    a.get("duration_ms"),
                    a.get("reply"),
                )
                for a in attempts
            ],
            title="Attempts",
            status_column="OUTCOME",
        )
    else:
        out.line("Attempts: none yet")


OptionalId = Annotated[
    str | None,
    typer.Argument(help="Message id (msg-...); or use the filter flags.", show_default=False),
]
FilterStatus = Annotated[
    list[Status] | None,
    typer.Option("--status", help="Bulk: only messages in this status; repeatable."),
]
FilterWorkspace = Annotated[
    str | None, typer.Option("--workspace-id", help="Bulk: only this workspace.")
]
FilterCampaign = Annotated[str | None, typer.Option("--campaign", help="Bulk: only this campaign.")]
FilterSender = Annotated[str | None, typer.Option("--sender", help="Bulk: only this sender.")]
FilterDomain = Annotated[
    str | None, typer.Option("--recipient-domain", help="Bulk: a recipient in this domain.")
]
FilterOlder = Annotated[
    str | None, typer.Option("--older-than", help="Bulk: queued before (2h, 7d, or ISO time).")
]
FilterNewer = Annotated[
    str | None, typer.Option("--newer-than", help="Bulk: queued after (2h, 7d, or ISO time).")
]
FilterProvider = Annotated[
    str | None, typer.Option("--provider", help="Bulk: last tried with this provider.")
]
FilterError = Annotated[
    str | None, typer.Option("--error-contains", help="Bulk: error text contains this.")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Bulk: list the matches, change nothing.")]
Yes = Annotated[
    bool,
    typer.Option("--yes", "-y", help=f"Bulk: no confirmation above {CONFIRM_ABOVE} messages."),
]


def _repair(
    ctx: typer.Context,
    action: str,
    message_id: str | None,
    flt: QueueFilter,
    dry_run: bool,
    yes: bool,
    json_flag: bool,
) -> None:
    state = current(ctx)
    out = state.output(json_flag)
    if message_id is not None:
        if flt.given() or dry_run:
            exit_with(
                f"relayctl: give a message id or filter flags to {action}, not both",
                ExitCode.USAGE,
            )
        with state.session(f"{action} {message_id}", NOT_FOUND_HINT) as client:
            if action == "retry":
                data = client.retry_message(message_id)
            else:
                data = client.cancel_message(message_id)
        if out.json_mode:
            out.json(data)
        else:
            done = "queued" if action == "retry" else "cancelled"
            out.line(f"{data.get('message_id', message_id)} {data.get('status', done)}")
        return
    if not flt.given():
        exit_with(
            f"relayctl: {action} needs a message id or at least one filter "
            f"(e.g. --status {'failed' if action == 'retry' else 'queued'})",
            ExitCode.USAGE,
        )
    with state.session(f"bulk {action}") as client:
        run_bulk(client, out, action, flt, dry_run, yes)


@app.command("retry")
def retry_message(
    ctx: typer.Context,
    message_id: OptionalId = None,
    status: FilterStatus = None,
    workspace_id: FilterWorkspace = None,
    campaign: FilterCampaign = None,
    sender: FilterSender = None,
    recipient_domain: FilterDomain = None,
    older_than: FilterOlder = None,
    newer_than: FilterNewer = None,
    provider: FilterProvider = None,
    error_contains: FilterError = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    json_flag: JsonFlag = False,
) -> None:
    """Queue a failed (or auth_error) message again, or every message the filters match.

    A partly delivered (sent) message given by ID is retried for the recipients that
    did not get it, never the others. Bulk retry acts on failed and auth_error
    messages, on deferred queued ones with --status queued, and on partly delivered
    ones, for the recipients that did not get it, with --status sent. With --json:
    {"message_id", "status", "retry_count"}, or in bulk {"action", "dry_run", "matched",
    "count", "ids", "skipped"}.
    """
    flt = QueueFilter(
        [s.value for s in status or []],
        workspace_id,
        campaign,
        sender,
        recipient_domain,
        older_than,
        newer_than,
        provider,
        error_contains,
    )
    _repair(ctx, "retry", message_id, flt, dry_run, yes, json_flag)


@app.command("cancel")
def cancel_message(
    ctx: typer.Context,
    message_id: OptionalId = None,
    status: FilterStatus = None,
    workspace_id: FilterWorkspace = None,
    campaign: FilterCampaign = None,
    sender: FilterSender = None,
    recipient_domain: FilterDomain = None,
    older_than: FilterOlder = None,
    newer_than: FilterNewer = None,
    provider: FilterProvider = None,
    error_contains: FilterError = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    json_flag: JsonFlag = False,
) -> None:
    """Cancel a queued or scheduled message, or every one the filters match.

    With --json: the API's answer, or in bulk {"action", "dry_run", "matched", "count",
    "ids", "skipped"}.
    """
    flt = QueueFilter(
        [s.value for s in status or []],
        workspace_id,
        campaign,
        sender,
        recipient_domain,
        older_than,
        newer_than,
        provider,
        error_contains,
    )
    _repair(ctx, "cancel", message_id, flt, dry_run, yes, json_flag)
