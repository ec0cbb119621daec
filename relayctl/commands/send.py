"""``relayctl send``: queue one message through the daemon's HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from relayctl.client import Attachment
from relayctl.context import ExitCode, current, exit_with

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]


def parse_header(value: str) -> tuple[str, str]:
    """``"Name: value"`` -> ("Name", "value"); anything else is a usage error."""
    name, sep, text = value.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() or ord(c) < 33 for c in name):
        raise typer.BadParameter(f"{value!r} is not 'Name: value'", param_hint="--header")
    return name, text.strip()


def parse_send_at(value: str) -> str:
    """An ISO 8601 time with a UTC offset, normalised to UTC ``...Z``."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 time, e.g. 2026-01-01T10:00:00Z", param_hint="--at"
        ) from None
    if moment.tzinfo is None:
        raise typer.BadParameter(
            f"{value!r} has no UTC offset; add Z or +HH:MM, e.g. 2026-01-01T10:00:00Z",
            param_hint="--at",
        )
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def send(
    ctx: typer.Context,
    sender: Annotated[str, typer.Option("--from", help="Envelope and From: address.")],
    to: Annotated[list[str], typer.Option("--to", help="Recipient; repeat for more.")],
    subject: Annotated[str, typer.Option("--subject", help="Subject line.")] = "",
    text: Annotated[str | None, typer.Option("--text", help="Plain-text body.")] = None,
    html: Annotated[str | None, typer.Option("--html", help="HTML body.")] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc", help="Cc recipient; repeatable.")] = None,
    bcc: Annotated[
        list[str] | None, typer.Option("--bcc", help="Bcc recipient; repeatable.")
    ] = None,
    attach: Annotated[
        list[Path] | None,
        typer.Option(
            "--attach",
            help="File to attach; repeatable.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", help="Extra header 'Name: value'; repeatable.")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Send later, at this ISO 8601 time (2026-01-01T10:00:00Z)."),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Queue a message and print its id.

    With --json: {"message_id", "status", "queued_at", "estimated_send_time"}.
    """
    headers = dict(parse_header(item) for item in header or [])
    send_at = parse_send_at(at) if at else None
    attachments: list[Attachment] = []
    for path in attach or []:
        try:
            attachments.append(Attachment.from_path(path))
        except OSError as exc:
            exit_with(f"relayctl: cannot read attachment {path}: {exc.strerror}", ExitCode.USAGE)
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("send") as client:
        result = client.send_message(
            from_email=sender,
            to=to,
            subject=subject,
            html=html,
            text=text,
            cc=cc,
            bcc=bcc,
            attachments=attachments,
            headers=headers,
            send_at=send_at,
        )
    if out.json_mode:
        out.json(result.data)
    else:
        out.line(result.message_id)
        if result.status == "scheduled":
            out.note(f"scheduled for {result.estimated_send_time}")
