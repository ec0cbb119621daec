"""``relayctl send``: queue mail through the daemon's HTTP API.

From flags, from an .eml file (``--eml FILE``, ``-`` for stdin), or one personalized
message per row of a CSV file (``--csv FILE``): the ``email`` column is the recipient,
every column is a ``{{ variable }}`` of the subject and bodies, as ``--var`` is.
"""

from __future__ import annotations

import email
import email.policy
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Annotated, Any

import typer

from relayctl.batch import read_csv
from relayctl.client import Attachment, Client
from relayctl.commands.bulk_send import send_rows
from relayctl.context import ExitCode, current, exit_with

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]
# Headers the API builds itself from its fields; the rest of an .eml's headers are kept.
_BUILT_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}


def parse_header(value: str) -> tuple[str, str]:
    """``"Name: value"`` -> ("Name", "value"); anything else is a usage error."""
    name, sep, text = value.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() or ord(c) < 33 for c in name):
        raise typer.BadParameter(f"{value!r} is not 'Name: value'", param_hint="--header")
    return name, text.strip()


def parse_var(value: str) -> tuple[str, str]:
    """``"name=value"`` -> ("name", "value")."""
    name, sep, text = value.partition("=")
    if not sep or not name.strip():
        raise typer.BadParameter(f"{value!r} is not 'name=value'", param_hint="--var")
    return name.strip(), text


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


def read_eml(source: str) -> dict[str, Any]:
    """The send_message fields of an RFC 5322 message (a file, or ``-`` for stdin)."""
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        exit_with(f"relayctl: cannot read {source}: {exc.strerror}", ExitCode.USAGE)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)

    def addresses(name: str) -> list[str]:
        return [addr for _, addr in getaddresses(parsed.get_all(name, [])) if addr]

    fields: dict[str, Any] = {
        "from_email": str(parsed.get("From", "")),
        "to": addresses("To"),
        "cc": addresses("Cc"),
        "bcc": addresses("Bcc"),
        "subject": str(parsed.get("Subject", "")),
    }
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    try:
        fields["text"] = text.get_content() if isinstance(text, EmailMessage) else None
        fields["html"] = html.get_content() if isinstance(html, EmailMessage) else None
    except LookupError as exc:  # a charset Python does not know
        exit_with(f"relayctl: cannot decode the body of {source}: {exc}", ExitCode.USAGE)
    fields["attachments"] = []
    for part in parsed.iter_attachments():
        content = part.get_payload(decode=True)
        fields["attachments"].append(
            Attachment(
                part.get_filename() or "attachment",
                content if isinstance(content, bytes) else b"",
                part.get_content_type(),
            )
        )
    fields["headers"] = {
        name: str(value) for name, value in parsed.items() if name.lower() not in _BUILT_HEADERS
    }
    return fields


def send(
    ctx: typer.Context,
    sender: Annotated[
        str | None, typer.Option("--from", help="Envelope and From: address.")
    ] = None,
    to: Annotated[
        list[str] | None, typer.Option("--to", help="Recipient; repeat for more.")
    ] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="Subject line.")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Plain-text body.")] = None,
    html: Annotated[str | None, typer.Option("--html", help="HTML body.")] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc", help="Cc recipient; repeatable.")] = None,
    bcc: Annotated[
        list[str] | None, typer.Option("--bcc", help="Bcc recipient; repeatable.")
    ] = None,
    attach: Annotated[
        list[Path] | None,
        typer.Option("--attach", help="File to attach; repeatable.", exists=True, dir_okay=False),
    ] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", help="Extra header 'Name: value'; repeatable.")
    ] = None,
    var: Annotated[
        list[str] | None,
        typer.Option("--var", help="Template variable 'name=value' for {{ name }}; repeatable."),
    ] = None,
    eml: Annotated[
        str | None,
        typer.Option(
            "--eml", help="Send this .eml file ('-': read it from stdin); flags override."
        ),
    ] = None,
    csv_file: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="One personalized message per row; column 'email' is the recipient.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    campaign: Annotated[str | None, typer.Option("--campaign", help="Campaign id.")] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Send later, at this ISO 8601 time (2026-01-01T10:00:00Z)."),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Queue a message and print its id (with --csv: one per row, then a summary).

    With --json: {"message_id", "status", "queued_at", "estimated_send_time"}; with --csv
    {"accepted": n, "refused": n, "results": [{"row", "email", "message_id"|"error", "code"}]}.
    """
    fields: dict[str, Any] = read_eml(eml) if eml else {}
    overrides = {
        "from_email": sender,
        "to": to or None,
        "cc": cc or None,
        "bcc": bcc or None,
        "subject": subject,
        "text": text,
        "html": html,
    }
    fields.update({key: value for key, value in overrides.items() if value is not None})
    fields.setdefault("subject", "")
    fields.setdefault("headers", {}).update(dict(parse_header(item) for item in header or []))
    for path in attach or []:
        try:
            fields.setdefault("attachments", []).append(Attachment.from_path(path))
        except OSError as exc:
            exit_with(f"relayctl: cannot read attachment {path}: {exc.strerror}", ExitCode.USAGE)
    variables = dict(parse_var(item) for item in var or [])
    if at:
        fields["send_at"] = parse_send_at(at)
    if campaign:
        fields["campaign_id"] = campaign
    if not fields.get("from_email"):
        exit_with("relayctl: send needs --from (or an --eml with a From: header)", ExitCode.USAGE)
    state = current(ctx)
    out = state.output(json_flag)
    if csv_file is not None:
        rows = read_csv(csv_file)
        with state.session("send --csv") as client:
            code = send_rows(client, out, fields, variables, rows)
        raise typer.Exit(int(code))
    if not fields.get("to"):
        exit_with("relayctl: send needs --to (or an --eml with a To: header)", ExitCode.USAGE)
    with state.session("send") as client:
        result = send_one(client, fields, variables)
    if out.json_mode:
        out.json(result.data)
    else:
        out.line(result.message_id)
        if result.status == "scheduled":
            out.note(f"scheduled for {result.estimated_send_time}")


def send_one(client: Client, fields: dict[str, Any], variables: dict[str, Any]) -> Any:
    """One send_message call, with personalization when there are variables."""
    extra: dict[str, Any] = {}
    if variables:
        extra["personalization"] = {"enabled": True, "variables": variables}
    return client.send_message(**fields, **extra)
