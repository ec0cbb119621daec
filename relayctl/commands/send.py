"""``relayctl send``: queue mail through the daemon's HTTP API.

From flags, from an .eml file (``--eml FILE``, ``-`` for stdin), or one personalized
message per row of a CSV file (``--csv FILE``): the ``email`` column is the recipient,
every column is a ``{{ variable }}`` of the subject and bodies, as ``--var`` is.
"""

from __future__ import annotations

import email
import email.policy
import re
import sys
from datetime import UTC, datetime, timedelta
from email import errors
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from relayctl.batch import read_csv
from relayctl.client import Attachment, Client
from relayctl.commands.bulk_send import send_rows
from relayctl.context import ExitCode, current, exit_with

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]
# relayd's RESERVED_HEADERS (daemon/core/compose.py): the API builds these from its own
# fields and the MIME structure and refuses them in "headers", so an .eml's are not passed.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
        "content-description",
        "received",
        "return-path",
    }
)
# The .eml's earlier transit: signatures that no longer verify once relayd composes the
# message anew, authentication results and delivery traces that describe another delivery,
# and mbox bookkeeping.
STALE_HEADERS = frozenset(
    {
        "dkim-signature",
        "domainkey-signature",
        "x-google-dkim-signature",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
        "authentication-results",
        "received-spf",
        "x-received",
        "delivered-to",
        "x-original-to",
        "content-length",
        "lines",
    }
)
# What relayd accepts as a Message-ID header (daemon/core/compose.py, _MSG_ID).
MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>\Z")
# relayd schedules at most this far ahead (daemon/api/send_request.py, MAX_SCHEDULE_AHEAD).
MAX_SCHEDULE_AHEAD = timedelta(days=366)
# Transfer-encoding damage that loses data (a missing "=" pad is harmless and decodes).
_BROKEN_BASE64 = (errors.InvalidBase64CharactersDefect, errors.InvalidBase64LengthDefect)


class EmlError(Exception):
    """An .eml relayctl cannot turn into a send faithfully; the text is the whole diagnostic."""


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


def parse_send_at(value: str, now: datetime | None = None) -> str:
    """An ISO 8601 time with a UTC offset, normalised to UTC ``...Z``; anything else is a
    one-line usage error: no offset, a time UTC cannot hold (9999-12-31T23:59:59-05:00),
    or one further ahead than relayd schedules."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        at_error(f"{value!r} is not an ISO 8601 time, e.g. 2026-01-01T10:00:00Z")
    if moment.tzinfo is None:
        at_error(f"{value!r} has no UTC offset; add Z or +HH:MM, e.g. 2026-01-01T10:00:00Z")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        at_error(f"{value!r} is outside the dates UTC can hold (years 1-9999)")
    if moment > (now or datetime.now(UTC)) + MAX_SCHEDULE_AHEAD:
        at_error(
            f"{value!r} is more than a year ahead "
            f"(relayd schedules up to {MAX_SCHEDULE_AHEAD.days} days ahead)"
        )
    return moment.isoformat().replace("+00:00", "Z")


def at_error(text: str) -> NoReturn:
    """A bad --at: one line on stderr, exit 2."""
    exit_with(f"relayctl: invalid value for --at: {one_line(text)}", ExitCode.USAGE)


def read_eml(source: str, *, keep_message_id: bool = True) -> dict[str, Any]:
    """The send_message fields of an RFC 5322 message (a file, or ``-`` for stdin).

    Anything that cannot be carried over faithfully (no header block, an undecodable body
    or header, a broken base64 part) is a usage error naming the file.
    """
    label = "stdin" if source == "-" else source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        exit_with(f"relayctl: cannot read {label}: {exc.strerror}", ExitCode.USAGE)
    try:
        return eml_fields(data, label, keep_message_id)
    except EmlError as exc:
        exit_with(f"relayctl: {one_line(str(exc), limit=4000)}", ExitCode.USAGE)
    except (
        ValueError,
        LookupError,
        IndexError,
        TypeError,
        AttributeError,
        AssertionError,
        errors.MessageError,
    ) as exc:  # the stdlib parser's own failures on malformed input
        reason = one_line(str(exc)) or type(exc).__name__
        exit_with(f"relayctl: cannot parse {label} as a message: {reason}", ExitCode.USAGE)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def eml_fields(data: bytes, label: str, keep_message_id: bool = True) -> dict[str, Any]:
    """The send_message fields of the message in ``data``; EmlError when it is malformed."""
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    if not parsed.keys() or any(
        isinstance(d, errors.MissingHeaderBodySeparatorDefect) for d in parsed.defects
    ):
        raise EmlError(
            f"{label} is not an RFC 5322 message: it does not start with header fields "
            "(Name: value) followed by a blank line"
        )
    headers = _header_values(parsed, label)

    def addresses(name: str) -> list[str]:
        return [addr for _, addr in getaddresses(parsed.get_all(name, [])) if addr]

    fields: dict[str, Any] = {
        "from_email": headers.get("from", ""),
        "to": addresses("To"),
        "cc": addresses("Cc"),
        "bcc": addresses("Bcc"),
        "subject": headers.get("subject", ""),
    }
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    fields["text"] = _body_text(text, label) if isinstance(text, EmailMessage) else None
    fields["html"] = _body_text(html, label) if isinstance(html, EmailMessage) else None
    if fields["text"] is None and fields["html"] is None and not parsed.is_multipart():
        raise EmlError(
            f"{label} has no text or html body: the message is {parsed.get_content_type()}"
        )
    fields["attachments"] = [_attachment(part, label) for part in parsed.iter_attachments()]
    fields["headers"] = _custom_headers(parsed, label, keep_message_id)
    return fields


def _header_values(parsed: EmailMessage, label: str) -> dict[str, str]:
    """Every header's decoded value by lower-case name (the first of repeats); EmlError for
    bytes that are neither UTF-8 nor an RFC 2047 word in a known charset."""
    values: dict[str, str] = {}
    for (name, raw), (_, value) in zip(parsed.raw_items(), parsed.items(), strict=True):
        text = str(value)
        if "\ufffd" in text and "\ufffd" not in str(raw):
            raise EmlError(f"cannot decode the {name} header of {label}: {one_line(str(raw))!r}")
        values.setdefault(name.lower(), text)
    return values


def _custom_headers(parsed: EmailMessage, label: str, keep_message_id: bool) -> dict[str, str]:
    """The headers the API takes in ``headers``: not built by relayd, not stale."""
    kept: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in parsed.items():
        lower = name.lower()
        if lower in RESERVED_HEADERS or lower in STALE_HEADERS:
            continue
        text = str(value).strip()
        if lower == "message-id":
            if not keep_message_id:
                continue
            if not MESSAGE_ID.match(text):
                note(f"{label}: Message-ID {one_line(text)!r} is not <id@domain>; relayd sets one")
                continue
        if lower in seen:
            note(f"{label}: header {name} appears more than once; only the first is sent")
            continue
        seen.add(lower)
        kept[name] = text
    return kept


def _decoded(part: EmailMessage, label: str) -> bytes:
    """A part's bytes after its transfer encoding; EmlError when that encoding is broken."""
    payload = part.get_payload(decode=True)
    if any(isinstance(d, _BROKEN_BASE64) for d in part.defects):
        raise EmlError(
            f"{label} has a part ({part.get_content_type()}) whose base64 content is damaged"
        )
    return payload if isinstance(payload, bytes) else b""


def _body_text(part: EmailMessage, label: str) -> str:
    """A text part decoded strictly in its declared charset (UTF-8 when it declares none)."""
    content = _decoded(part, label)
    charset = part.get_content_charset() or "utf-8"
    try:
        return content.decode(charset)
    except UnicodeDecodeError as exc:
        raise EmlError(
            f"cannot decode the body of {label}: it is not valid {charset} "
            f"(byte {exc.start}: {exc.reason})"
        ) from None
    except (LookupError, ValueError):  # unknown, or not a text encoding, or garbage
        raise EmlError(
            f"cannot decode the body of {label}: unknown charset {charset[:60]!r}"
        ) from None


def _attachment(part: EmailMessage, label: str) -> Attachment:
    """One attachment of the .eml, with its decoded bytes."""
    content_type = part.get_content_type()
    if part.is_multipart() or part.get_content_maintype() == "message":
        raise EmlError(
            f"{label} attaches a {content_type} part, which relayd cannot attach as a file"
        )
    return Attachment(part.get_filename() or "attachment", _decoded(part, label), content_type)


def note(text: str) -> None:
    """A warning about the input that does not stop the command."""
    sys.stderr.write(f"relayctl: {text}\n")


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
            help="One personalized message per row; column 'email' is the recipient "
            "(not with --to/--cc/--bcc).",
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
    if csv_file is not None:
        given = [flag for flag, value in (("--to", to), ("--cc", cc), ("--bcc", bcc)) if value]
        if given:
            # Each row's email column is the one recipient of its message; a recipient given
            # once for all rows would be ignored, or get every row's mail.
            exit_with(
                f"relayctl: --csv sends each row to its 'email' column; "
                f"{'/'.join(given)} cannot be combined with it",
                ExitCode.USAGE,
            )
    # With --csv every row is its own message, so the .eml's Message-ID cannot be reused.
    fields: dict[str, Any] = read_eml(eml, keep_message_id=csv_file is None) if eml else {}
    if csv_file is not None and (fields.get("cc") or fields.get("bcc")):
        note(f"--csv: the Cc/Bcc of {eml} are not used; each row's email is its one recipient")
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
    custom: dict[str, str] = fields.setdefault("headers", {})
    for name, value in (parse_header(item) for item in header or []):
        # A flag overrides the .eml's header of that name, whatever its case.
        for existing in [key for key in custom if key.lower() == name.lower()]:
            del custom[existing]
        custom[name] = value
    for path in attach or []:
        try:
            fields.setdefault("attachments", []).append(Attachment.from_path(path))
        except OSError as exc:
            exit_with(f"relayctl: cannot read attachment {path}: {exc.strerror}", ExitCode.USAGE)
    variables = dict(parse_var(item) for item in var or [])
    if at is not None:
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
