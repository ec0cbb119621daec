"""Bounces: reading RFC 3464 delivery status notifications, hard or soft, and VERP.

Pure (the stdlib ``email`` package parses; nothing here does I/O). A DSN's
``Action: failed`` with a 5.x.x status is a hard bounce, 4.x.x (or
``Action: delayed``) a soft one; ``delivered``, ``relayed`` and ``expanded``
are not bounces. A report without a usable status part (an autoreply, a
non-standard bounce) gives nothing rather than a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message
from email.utils import getaddresses

from daemon.core.retry import enhanced_code

HARD = "hard"
SOFT = "soft"

_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\s*\Z")
_VERP_LOCAL = re.compile(r"^bounces\+(msg-[0-9A-Za-z]{26})\Z", re.IGNORECASE)


@dataclass(frozen=True)
class Bounce:
    """One recipient a DSN reports as not delivered."""

    recipient: str
    kind: str  # hard | soft
    status: str  # enhanced status code, "5.1.1"
    diagnostic: str = ""
    action: str = "failed"


def verp_address(message_id: str, domain: str) -> str:
    """The VERP return path of a message: ``bounces+<message id>@domain``."""
    return f"bounces+{message_id}@{domain}"


def verp_message_id(address: str, domain: str) -> str | None:
    """The message id a VERP address at ``domain`` names (case-insensitively), else None."""
    local, at, host = address.rpartition("@")
    if not at or not domain or host.lower().rstrip(".") != domain.lower().rstrip("."):
        return None
    match = _VERP_LOCAL.match(local)
    if match is None:
        return None
    # ULIDs are upper case; a case-folding MTA on the way back must not hide the message.
    return "msg-" + match.group(1)[4:].upper()


def at_domain(address: str, domain: str) -> bool:
    """True when ``address`` is at the bounce domain."""
    host = address.rpartition("@")[2]
    return bool(domain) and host.lower().rstrip(".") == domain.lower().rstrip(".")


def kind_of(status: str) -> str | None:
    """hard for 5.x.x, soft for 4.x.x, None for anything else."""
    match = _STATUS.match(status)
    if match is None:
        return None
    return {"5": HARD, "4": SOFT}.get(match.group(1))


def _address(value: str | None) -> str:
    """``rfc822; user@example.com`` -> ``user@example.com``."""
    if not value:
        return ""
    _, sep, address = str(value).partition(";")
    return (address if sep else value).strip().strip("<>").strip()


def _status_groups(report: Message) -> list[Message]:
    """The per-recipient field groups of a message/delivery-status part."""
    groups: list[Message] = []
    payload = report.get_payload()
    if isinstance(payload, list):
        # The email package parses the part as a list of header blocks: per-message first.
        groups = [p for p in payload[1:] if isinstance(p, Message)]
    return groups


def parse_dsn(raw: bytes) -> tuple[list[Bounce], str | None]:
    """The bounces a DSN reports, and the Original-Envelope-Id / original message id if given.

    The second value helps find the message when the DSN was not sent to a VERP
    address: the ``X-Relay-Message-ID`` or ``Message-ID`` of the returned headers.
    """
    try:
        message = message_from_bytes(raw, policy=policy.compat32)
    except Exception:
        return [], None
    bounces: list[Bounce] = []
    original: str | None = None
    for part in message.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            for group in _status_groups(part):
                bounce = _bounce(group)
                if bounce is not None:
                    bounces.append(bounce)
        elif ctype in ("message/rfc822", "text/rfc822-headers") and original is None:
            original = _original_id(part)
    return bounces, original


def _bounce(group: Message) -> Bounce | None:
    recipient = _address(group.get("Final-Recipient")) or _address(group.get("Original-Recipient"))
    action = str(group.get("Action") or "").strip().lower()
    status = str(group.get("Status") or "").strip()
    diagnostic = " ".join(str(group.get("Diagnostic-Code") or "").split())
    diagnostic = _address(diagnostic) if diagnostic.lower().startswith("smtp;") else diagnostic
    if not recipient or action not in ("failed", "delayed"):
        return None
    kind = kind_of(status)
    if kind is None:
        status = enhanced_code(diagnostic) or ""
        kind = kind_of(status)
    if kind is None:
        return None
    if action == "delayed":
        kind = SOFT
    return Bounce(recipient, kind, status, diagnostic[:1000], action)


def _original_id(part: Message) -> str | None:
    payload = part.get_payload()
    inner: Message | None = None
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        inner = payload[0]
    elif isinstance(payload, str):
        inner = message_from_bytes(payload.encode("utf-8", "surrogateescape"))
    if inner is None:
        return None
    for name in ("X-Relay-Message-ID", "Message-ID"):
        value = inner.get(name)
        if value:
            return str(value).strip().strip("<>").split("@", 1)[0]
    return None


def over_threshold(soft_bounces_in_window: int, threshold: int) -> bool:
    """Soft bounces past the threshold make the recipient BOUNCED."""
    return threshold > 0 and soft_bounces_in_window >= threshold


def _headers(raw: bytes) -> Message:
    return message_from_bytes(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")


def asks_to_unsubscribe(raw: bytes) -> bool:
    """A List-Unsubscribe mailto: message (its subject says unsubscribe, RFC 2369)."""
    try:
        subject = str(_headers(raw).get("Subject") or "")
    except Exception:  # unreadable headers ask for nothing
        return False
    return "unsubscribe" in subject.lower()


def sender_of(raw: bytes) -> str | None:
    """The lower-cased address in From:, if there is exactly one."""
    try:
        found = getaddresses([str(_headers(raw).get("From") or "")])
    except Exception:  # an unreadable From names no one
        return None
    addresses = [a for _, a in found if "@" in a]
    return addresses[0].lower() if len(addresses) == 1 else None
