"""``relayctl queue``: list, inspect, retry and cancel queued messages."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from relayctl.context import current
from relayctl.output import Output

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


@app.command("ls")
def list_messages(
    ctx: typer.Context,
    status: Annotated[
        Status | None, typer.Option("--status", help="Only messages in this status.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Messages per page.")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many.")] = 0,
    json_flag: JsonFlag = False,
) -> None:
    """List messages.

    With --json: {"messages": [...], "pagination": {"total", "limit", "offset", "has_more"}}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("list messages") as client:
        page = client.list_messages(
            status=status.value if status else None, limit=limit, offset=offset
        )
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
    pagination = page.get("pagination", {})
    total = pagination.get("total", len(messages))
    if messages:
        first = offset + 1
        out.note(f"{first}-{offset + len(messages)} of {total}")
        if pagination.get("has_more"):
            out.note(f"more: relayctl queue ls --offset {offset + len(messages)}")
    else:
        out.note(f"no messages (of {total})")


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


@app.command("retry")
def retry_message(ctx: typer.Context, message_id: MessageId, json_flag: JsonFlag = False) -> None:
    """Queue a failed (or auth_error) message again.

    With --json: {"message_id", "status", "retry_count"}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"retry {message_id}", NOT_FOUND_HINT) as client:
        data = client.retry_message(message_id)
    if out.json_mode:
        out.json(data)
    else:
        out.line(f"{data.get('message_id', message_id)} {data.get('status', 'queued')}")


@app.command("cancel")
def cancel_message(ctx: typer.Context, message_id: MessageId, json_flag: JsonFlag = False) -> None:
    """Cancel a queued or scheduled message.

    With --json: the API's answer.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"cancel {message_id}", NOT_FOUND_HINT) as client:
        data = client.cancel_message(message_id)
    if out.json_mode:
        out.json(data)
    else:
        out.line(f"{data.get('message_id', message_id)} {data.get('status', 'cancelled')}")
