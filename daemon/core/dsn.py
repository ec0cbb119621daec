"""RFC 3464 delivery status notifications for RFC 3461 DSN requests.

One builder for every kind the daemon sends: ``failed`` (a bounce), ``delayed``
(a warning while retries go on) and ``relayed`` (a next hop that may not report
DSNs accepted the message). Each DSN reports one kind; its subject and human
text follow that kind. Pure: the caller passes the time, the DSN's Message-ID
and the reporting host.
ENVID and ORCPT are stored decoded (SMTP ingest undoes their xtext); they are
written into the report as they are, and re-encoded only on the SMTP wire.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import format_datetime

from daemon.core.retry import AUTH_ERROR, PERMANENT, enhanced_code

# Output without folding or refolding, so the returned original keeps its exact header lines.
_OUTPUT = policy.SMTP.clone(max_line_length=0, refold_source="none")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# Keeps every DSN header line well under SMTP's 998-octet limit.
_MAX_FIELD = 500

DEFAULT_NOTIFY = ("FAILURE",)

FAILED = "failed"
DELAYED = "delayed"
RELAYED = "relayed"

_WARNING = "#" * 68
# Per action: the subject, then the human text's paragraph after the greeting.
_WORDING: dict[str, tuple[str, tuple[str, ...]]] = {
    FAILED: (
        "Undelivered Mail Returned to Sender",
        (
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
        ),
    ),
    DELAYED: (
        "Delayed Mail (still being retried)",
        (
            _WARNING,
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            _WARNING,
            "",
            "Your message could not be delivered to one or more recipients yet;",
            "delivery is still being retried.",
        ),
    ),
    RELAYED: (
        "Successful Mail Delivery Report",
        (
            "Your message was relayed to the destinations listed below. The next",
            "system may not report on its delivery, so you may not hear more of it.",
        ),
    ),
}


@dataclass(frozen=True)
class ReportedRecipient:
    """One recipient in a DSN: what happened to it and what the remote side said."""

    address: str
    status: str  # enhanced status code, e.g. "5.1.1"
    diagnostic: str = ""  # the reply text, e.g. "550 5.1.1 No such user"
    orcpt: str | None = None
    action: str = FAILED
    remote_mta: str | None = None
    diagnostic_type: str = "smtp"
    will_retry_until: datetime | None = None  # for "delayed": when retries stop
    # False when no delivery was attempted as it is reported (the message waits for a
    # provider): the report then has no Last-Attempt-Date rather than a made-up one.
    attempted: bool = True


def xtext_encode(value: str) -> str:
    """Encode text as RFC 3461 xtext for the wire ("+" becomes "+2B")."""
    out: list[str] = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (ord("+"), ord("=")):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _text(value: str) -> str:
    """One line of text: a reply may span lines or carry control bytes, and bytes of it
    that were not UTF-8 arrive as lone surrogates, which no encoder takes."""
    if not value.isascii():
        try:
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            value = value.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(" ", value).strip()


def _clean(value: str) -> str:
    """One header-safe line of ASCII: a field of a delivery-status part is ASCII (RFC 3464),
    so other characters are written as RFC 6533's ``\\x{HEX}``."""
    text = _text(value)
    if not text.isascii():
        text = "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in text)
    return text[:_MAX_FIELD]


def wants_report(notify: str | None, event: str = "failure") -> bool:
    """Whether a recipient's NOTIFY asks for a DSN on ``event`` (failure, delay, success).

    No NOTIFY means FAILURE only; NOTIFY=NEVER means none.
    """
    tokens = {t.strip().upper() for t in (notify or "").split(",") if t.strip()}
    if not tokens:
        tokens = set(DEFAULT_NOTIFY)
    if "NEVER" in tokens:
        return False
    return event.upper() in tokens


def may_bounce(mail_from: str) -> bool:
    """A message from the null sender ``<>`` is itself a bounce: never bounce it."""
    return mail_from.strip() not in ("", "<>")


def status_code(code: int | None, reply: str, kind: str) -> str:
    """The enhanced status for a recipient: the reply's own, else derived from the code."""
    enhanced = enhanced_code(reply)
    if enhanced:
        return enhanced
    if code is not None and 400 <= code < 600:
        return f"{code // 100}.0.0"
    if kind == AUTH_ERROR:
        return "4.7.0"
    if kind == PERMANENT:
        return "5.0.0"
    # No reply at all (connection refused, timeout): "no answer from host".
    return "4.4.1"


def _original_recipient(orcpt: str) -> str:
    addr_type, sep, address = orcpt.partition(";")
    if not sep:
        return f"rfc822;{orcpt.strip()}"
    return f"{addr_type.strip()};{address.strip()}"


def _action(recipients: Sequence[ReportedRecipient]) -> str:
    """The kind of report: one action for all, else the gravest (a failure outranks a delay).

    An action without its own wording (e.g. "expanded") is worded as a failure.
    """
    actions = {r.action for r in recipients}
    for action in (FAILED, DELAYED, RELAYED):
        if action in actions:
            return action
    return FAILED


def subject(recipients: Sequence[ReportedRecipient]) -> str:
    """The Subject of the DSN reporting ``recipients``."""
    return _WORDING[_action(recipients)][0]


def _human_text(hostname: str, recipients: Sequence[ReportedRecipient]) -> str:
    lines = [f"This is the mail system at host {hostname}.", ""]
    lines.extend(_WORDING[_action(recipients)][1])
    lines.append("")
    for r in recipients:
        detail = _text(r.diagnostic)[:_MAX_FIELD] or f"status {r.status}"
        lines.append(f"<{r.address}>: {detail}")
    until = [r.will_retry_until for r in recipients if r.will_retry_until is not None]
    if until:
        lines.extend(["", f"Delivery will be retried until {format_datetime(max(until))}."])
    return "\n".join(lines) + "\n"


def _status_part(
    hostname: str,
    envid: str | None,
    arrival: datetime,
    now: datetime,
    recipients: Sequence[ReportedRecipient],
) -> EmailMessage:
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    if envid:
        per_message["Original-Envelope-Id"] = _clean(envid)
    per_message["Arrival-Date"] = format_datetime(arrival)
    blocks: list[Message | str] = [per_message]
    for r in recipients:
        block = Message()
        if r.orcpt:
            block["Original-Recipient"] = _clean(_original_recipient(r.orcpt))
        block["Final-Recipient"] = f"rfc822; {_clean(r.address)}"
        block["Action"] = r.action
        block["Status"] = r.status
        if r.remote_mta:
            block["Remote-MTA"] = f"dns; {_clean(r.remote_mta)}"
        if r.diagnostic:
            block["Diagnostic-Code"] = f"{r.diagnostic_type}; {_clean(r.diagnostic)}"
        if r.attempted:
            block["Last-Attempt-Date"] = format_datetime(now)
        if r.will_retry_until is not None:
            block["Will-Retry-Until"] = format_datetime(r.will_retry_until)
        blocks.append(block)
    part = EmailMessage(policy=policy.SMTP)
    part.set_type("message/delivery-status")
    part.set_payload(blocks)
    del part["MIME-Version"]
    return part


def _returned_part(original: bytes, ret: str | None) -> EmailMessage:
    part = EmailMessage(policy=policy.SMTP)
    eight_bit = any(b > 127 for b in original)
    if (ret or "").upper() == "FULL":
        part.set_type("message/rfc822")
        part.set_payload([message_from_bytes(original, policy=policy.compat32)])
    else:
        head = original.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        eight_bit = any(b > 127 for b in head)
        text = head.decode("ascii", "surrogateescape").replace("\r\n", "\n") + "\n"
        part.set_type("text/rfc822-headers")
        part.set_payload(text)
    del part["MIME-Version"]
    if eight_bit:
        part["Content-Transfer-Encoding"] = "8bit"
    return part


def _boundary(token: str, original: bytes) -> str:
    boundary = f"=_relay-dsn-{token}"
    counter = 0
    while boundary.encode() in original:
        counter += 1
        boundary = f"=_relay-dsn-{token}-{counter}"
    return boundary


def build_dsn(
    *,
    original: bytes,
    mail_from: str,
    recipients: Sequence[ReportedRecipient],
    hostname: str,
    arrival: datetime,
    now: datetime,
    message_id: str,
    envid: str | None = None,
    ret: str | None = None,
) -> bytes:
    """The DSN for ``recipients`` of ``original``, addressed to ``mail_from``, CRLF bytes.

    The recipients' actions say what it reports (all ``failed``, all
    ``delayed`` or all ``relayed`` for the daemon's own DSNs). ``ret`` is the
    RET parameter: FULL returns the whole message, HDRS (the default) only its
    header section. ``message_id`` is the bare id part
    (without angle brackets or domain) and also seeds the MIME boundary.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient to report")
    outer = EmailMessage(policy=policy.SMTP)
    outer["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    outer["To"] = mail_from
    outer["Subject"] = subject(recipients)
    outer["Date"] = format_datetime(now)
    outer["Message-ID"] = f"<{message_id}@{hostname}>"
    outer["Auto-Submitted"] = "auto-replied"
    human = _human_text(hostname, recipients)
    # A reply text may be UTF-8: quoted-printable keeps the report 7-bit for any next hop.
    outer.set_content(human, cte="7bit" if human.isascii() else "quoted-printable")
    outer.make_mixed()
    outer.set_type("multipart/report")
    outer.set_param("report-type", "delivery-status")
    outer.set_boundary(_boundary(message_id, original))
    outer.attach(_status_part(hostname, envid, arrival, now, recipients))
    outer.attach(_returned_part(original, ret))
    return outer.as_bytes(policy=_OUTPUT)
