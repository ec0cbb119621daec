"""Building the MIME message of an API send, and reading one back for display (pure).

Everything needed is passed in: the queue id and hostname make the Message-ID,
the caller's clock gives the Date, and multipart boundaries are derived from a
hash of the content, so the same draft always yields the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.parser import BytesHeaderParser, BytesParser
from email.utils import format_datetime
from typing import Any

from daemon.core import mime
from daemon.core.mime import Unsupported

# 7bit: non-ASCII bodies go out quoted-printable or base64, so the message
# needs no 8BITMIME from whichever upstream server relays it.
SMTP_7BIT = policy.SMTP.clone(cte_type="7bit")

# Headers the draft's own fields or the MIME structure produce; a caller may not set them.
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
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}\Z")  # RFC 5322 ftext: printable ASCII but ':'
# Control characters, and what str.splitlines() also treats as a line break (NEL, LS, PS).
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_MSG_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>\Z")
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE = re.compile(rf"^({_TOKEN})/({_TOKEN})\Z")


class ComposeError(ValueError):
    """A draft that cannot become a well-formed message; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Attachment:
    """A file to attach, already decoded."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Mailbox:
    """An address (ASCII, IDNA domain) with an optional display name."""

    address: str
    display_name: str = ""

    def header(self) -> str:
        return _mailbox_header(self.address, self.display_name)


@functools.lru_cache(maxsize=4096)
def _mailbox_header(address: str, display_name: str) -> str:
    """How email.headerregistry.Address shows a mailbox (pure, so cached: senders repeat)."""
    local, _, domain = address.rpartition("@")
    return str(Address(display_name=display_name, username=local, domain=domain))


@dataclass(frozen=True)
class Draft:
    """What an API client asked to send. Bcc recipients never reach the headers."""

    sender: Mailbox
    to: Sequence[Mailbox]
    subject: str
    text_body: str | None = None
    html_body: str | None = None
    cc: Sequence[Mailbox] = ()
    attachments: Sequence[Attachment] = ()
    headers: Sequence[tuple[str, str]] = ()


def check_header(name: str, value: str) -> None:
    """Refuse header names and values that could inject headers or replace structure."""
    if not _HEADER_NAME.match(name):
        raise ComposeError(f"headers.{name}", f"invalid header name {name!r}")
    if name.lower() in RESERVED_HEADERS:
        raise ComposeError(f"headers.{name}", f"header {name} is set by the relay, not by headers")
    if CONTROL_CHARS.search(value):
        raise ComposeError(
            f"headers.{name}", f"header {name} contains CR, LF or control characters"
        )
    if name.lower() == "message-id" and not _MSG_ID.match(value):
        raise ComposeError(f"headers.{name}", "Message-ID must look like <unique@domain>")


def split_content_type(value: str) -> tuple[str, str]:
    """``type/subtype`` of an attachment, refusing containers the body builder owns."""
    match = _CONTENT_TYPE.match(value)
    if match is None:
        raise ValueError(f"invalid content type {value!r}; expected type/subtype")
    maintype, subtype = match.group(1).lower(), match.group(2).lower()
    if maintype in ("multipart", "message"):
        raise ValueError(f"content type {maintype}/* cannot be attached as a file")
    return maintype, subtype


def _text_part(body: str, subtype: str) -> MIMEPart:
    part = MIMEPart(policy=SMTP_7BIT)
    part.set_content(body, subtype=subtype, charset="utf-8")
    return part


def _body(draft: Draft) -> MIMEPart:
    """The text, html, or multipart/alternative of both."""
    if draft.text_body is not None and draft.html_body is not None:
        alternative = MIMEPart(policy=SMTP_7BIT)
        alternative["Content-Type"] = "multipart/alternative"
        alternative.attach(_text_part(draft.text_body, "plain"))
        alternative.attach(_text_part(draft.html_body, "html"))
        return alternative
    if draft.html_body is not None:
        return _text_part(draft.html_body, "html")
    return _text_part(draft.text_body or "", "plain")


def _attachment_part(attachment: Attachment) -> MIMEPart:
    maintype, subtype = split_content_type(attachment.content_type)
    part = MIMEPart(policy=SMTP_7BIT)
    part.set_content(
        attachment.data,
        maintype=maintype,
        subtype=subtype,
        disposition="attachment",
        filename=attachment.filename,
    )
    return part


def _set_boundaries(root: MIMEPart, seed: str) -> None:
    """Deterministic boundaries: a content hash cannot occur in the content it hashes."""
    for depth, part in enumerate(p for p in root.walk() if p.is_multipart()):
        part.set_boundary(f"=_{seed}_{depth}")


@dataclass(frozen=True)
class Composed:
    """The message bytes and its top-level headers as :func:`top_headers` would read them."""

    raw: bytes
    headers: dict[str, str]


def _check(draft: Draft) -> None:
    """Every refusal of a bad draft, in field order, before either writer runs."""
    if CONTROL_CHARS.search(draft.subject):
        raise ComposeError("subject", "subject contains CR, LF or control characters")
    for name, boxes in (("From", (draft.sender,)), ("To", draft.to), ("Cc", draft.cc)):
        for box in boxes:
            if box.display_name and CONTROL_CHARS.search(box.display_name):
                raise ComposeError(name.lower(), f"a display name in {name} has control characters")
    seen: set[str] = set()
    for name, value in draft.headers:
        check_header(name, value)
        if name.lower() in seen:
            raise ComposeError(f"headers.{name}", f"header {name} given twice")
        seen.add(name.lower())
    for index, attachment in enumerate(draft.attachments):
        try:
            split_content_type(attachment.content_type)
        except ValueError as exc:
            raise ComposeError(f"attachments[{index}].content_type", str(exc)) from None
        if CONTROL_CHARS.search(attachment.filename):
            raise ComposeError(
                f"attachments[{index}].filename", "filename contains control characters"
            )


def compose_message(draft: Draft, *, queue_id: str, hostname: str, date: datetime) -> Composed:
    """The message as CRLF bytes ready for SMTP, with its headers; ComposeError for a bad draft.

    Common shapes are written directly (:func:`write_direct`, with :mod:`daemon.core.mime`);
    what that declines goes through the stdlib generator, ten times slower.
    """
    _check(draft)
    message_id = f"<{queue_id}@{hostname}>"
    try:
        return write_direct(draft, message_id, mime.rfc5322_date(date))
    except Unsupported:
        pass
    raw = write_stdlib(draft, message_id, date)
    # The stdlib folder can emit an empty continuation line for a very long word in
    # an address list, which would end the header block early: refuse, never send it.
    if b"\r\nMIME-Version: 1.0\r\n" not in raw.split(b"\r\n\r\n", 1)[0] + b"\r\n":
        raise ComposeError("headers", "the message cannot be serialised: a header folds badly")
    return Composed(raw, top_headers(raw))


def compose(draft: Draft, *, queue_id: str, hostname: str, date: datetime) -> bytes:
    """The message as CRLF bytes ready for SMTP; raises ComposeError for a bad draft."""
    return compose_message(draft, queue_id=queue_id, hostname=hostname, date=date).raw


def write_direct(draft: Draft, message_id: str, date: str) -> Composed:
    """The direct writer of a checked draft; Unsupported for what it leaves to the stdlib."""
    return Composed(*mime.write_draft(draft, message_id, date))


def write_stdlib(draft: Draft, message_id: str, date: datetime) -> bytes:
    """The stdlib ``email`` generator's rendering of a checked draft."""
    root = MIMEPart(policy=SMTP_7BIT)
    for name, boxes in (("From", [draft.sender]), ("To", draft.to), ("Cc", draft.cc)):
        if boxes:
            root[name] = ", ".join(m.header() for m in boxes)
    root["Subject"] = draft.subject
    root["Date"] = format_datetime(date)
    if "message-id" not in {name.lower() for name, _ in draft.headers}:
        root["Message-ID"] = message_id
    for name, value in draft.headers:
        try:
            root[name] = value
        except (ValueError, TypeError, IndexError) as exc:
            raise ComposeError(f"headers.{name}", f"invalid value for {name}: {exc}") from None
    root["MIME-Version"] = "1.0"

    body = _body(draft)
    if draft.attachments:
        mixed = MIMEPart(policy=SMTP_7BIT)
        mixed["Content-Type"] = "multipart/mixed"
        mixed.attach(body)
        for attachment in draft.attachments:
            mixed.attach(_attachment_part(attachment))
        body = mixed
    for name, value in body.items():
        root[name] = value
    if body.is_multipart():
        for sub in body.iter_parts():
            root.attach(sub)
    else:
        root.set_payload(body.get_payload())
    digest = hashlib.sha256()
    for part in root.walk():
        if not part.is_multipart():
            digest.update(str(part.get_payload()).encode("utf-8", "surrogateescape"))
    _set_boundaries(root, digest.hexdigest()[:40])
    try:
        return root.as_bytes(policy=SMTP_7BIT)
    except (ValueError, TypeError, IndexError, UnicodeError) as exc:
        raise ComposeError("headers", f"the message cannot be serialised: {exc}") from None


@dataclass
class MessageView:
    """What the API shows of stored bytes: bodies, top-level headers, attachment list."""

    text_body: str | None = None
    html_body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    attachments: list[dict[str, Any]] = field(default_factory=list)


def _decoded_text(part: MIMEPart) -> str:
    try:
        content = part.get_content()
        if isinstance(content, str):
            return content.replace("\r\n", "\n")
    except (LookupError, ValueError, KeyError, AssertionError):
        pass  # unknown charset or broken encoding: show what the bytes say
    payload = part.get_payload(decode=True)
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return text.replace("\r\n", "\n")


def read_message(raw: bytes) -> MessageView:
    """Parse stored bytes (policy default) into what ``GET /api/messages/{id}`` shows."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    view = MessageView()
    for name, value in message.items():
        view.headers.setdefault(name, str(value))
    for kind in ("plain", "html"):
        part = message.get_body(preferencelist=(kind,))
        if part is not None and part.get_content_type() == f"text/{kind}":
            text = _decoded_text(part)
            if kind == "plain":
                view.text_body = text
            else:
                view.html_body = text
    for attachment in message.iter_attachments():
        payload = attachment.get_payload(decode=True)
        view.attachments.append(
            {
                "filename": attachment.get_filename(),
                "content_type": attachment.get_content_type(),
                "size": len(payload) if isinstance(payload, bytes) else 0,
            }
        )
    return view


def top_headers(raw: bytes) -> dict[str, str]:
    """The top-level headers of stored bytes (first value of a repeated name), bodies unread."""
    message = BytesHeaderParser(policy=policy.default).parsebytes(raw)
    headers: dict[str, str] = {}
    for name, value in message.items():
        headers.setdefault(name, str(value))
    return headers
