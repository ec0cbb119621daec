"""Turn an accepted SMTP DATA payload and its envelope into a NewMessage (pure).

This runs once per message on the ingest hot path, so it reads only the header
section, with a small hand-rolled splitter (several times cheaper than the
stdlib parser), and touches the body only for the byte-level safety checks:
bare CR/LF (the SMTP smuggling class, CVE-2023-51764), NUL, and line length.

The changes made to the accepted bytes: a prepended ``Received:`` trace header
(RFC 5321 section 4.4), and no ``Bcc:`` or ``Resent-Bcc:`` field, so that no
recipient sees the blind copies (Postfix's cleanup drops them too, by default:
``message_drop_headers``); with ``bare_newline = "normalize"`` lone CR and LF
also become CRLF.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import decode_header, make_header
from email.policy import default as default_policy
from email.utils import getaddresses
from typing import Any

from daemon.core import jsondoc
from daemon.core.compose import CONTROL_CHARS
from daemon.core.ids import WORKSPACE_ID, WORKSPACE_ID_RULE
from daemon.core.message import (
    MAX_RETRY_COUNT,
    PRIORITIES,
    NewMessage,
    Recipient,
    parse_retry_count,
)
from daemon.core.mime import rfc5322_date
from daemon.core.relay import SmtpRejection

MAX_LINE = 1000  # octets, CRLF included (RFC 5321 4.5.3.1.6)
MAX_ID_LENGTH = 200  # the width of the workspace/campaign/user id columns
MAX_DISPLAY = 998  # the width of the subject and from_header columns
# Decoding RFC 2047 words takes time quadratic in the field's length (the stdlib's
# decode_header), and only MAX_DISPLAY characters are kept: decode a bounded prefix.
MAX_DECODED = 16 * MAX_DISPLAY

# Headers copied into the message's summary ``headers`` field, in display form.
SUMMARY_HEADERS = (
    "Message-ID",
    "Date",
    "Subject",
    "From",
    "Sender",
    "To",
    "Cc",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
)
_SUMMARY_BY_KEY = {name.lower(): name for name in SUMMARY_HEADERS}
_FIELD_HEADERS = frozenset(
    {
        "x-workspace-id",
        "x-campaign-id",
        "x-user-id",
        "x-priority",
        "x-retry-count",
        "x-metadata",
        "x-enable-personalization",
        "x-llm-model",
        "x-personalization-context",
    }
)
_WANTED = frozenset(_SUMMARY_BY_KEY) | _FIELD_HEADERS

# X-Priority also arrives in the numeric convention of mail clients: "1 (Highest)" .. "5".
_NUMERIC_PRIORITY = {"1": 0, "2": 0, "3": 1, "4": 2, "5": 2}
# One plain address and nothing else (no name, comment, quote, group or list).
_BARE_ADDRESS = re.compile(r"^[ \t]*[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+[ \t]*\Z")
# The same address in angle brackets and nothing else ("To: <a@b>"), as smtp-source and
# many scripts write it: the stdlib parser gives exactly the address inside.
_ANGLE_ADDRESS = re.compile(
    r"^[ \t]*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*$"
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class IngestRejected(SmtpRejection):
    """The message cannot be accepted; ``reply`` is the SMTP answer to DATA."""


@dataclass(frozen=True)
class Submission:
    """What the SMTP session knows about a message besides its bytes."""

    mail_from: str
    recipients: Sequence[Recipient]
    peer_ip: str
    helo: str
    tls: bool = False
    authenticated: bool = False
    auth_workspace: str | None = None  # set when the AUTH identity owns a workspace
    auth_user: str | None = None  # set when it is a per-user key: X-User-ID cannot move it
    dsn_ret: str | None = None
    dsn_envid: str | None = None


def check_bytes(data: bytes, bare_newline: str = "reject") -> bytes:
    """Refuse NUL, bare CR/LF (or normalize them) and over-long lines; return the bytes to keep."""
    if b"\x00" in data:
        raise IngestRejected(550, "5.6.0", "Message contains NUL characters")
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        if bare_newline != "normalize":
            raise IngestRejected(
                550,
                "5.6.0",
                "Message contains a bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)",
            )
        # Lone CR and LF are taken as line ends, as Postfix's "normalize" does.
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if len(data) > MAX_LINE - 2 and max(map(len, data.split(b"\r\n"))) > MAX_LINE - 2:
        raise IngestRejected(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.6)")
    return data


def parse_headers(data: bytes) -> dict[str, str]:
    """The header fields relay cares about (lower-cased name -> unfolded value; first wins)."""
    end = data.find(b"\r\n\r\n")
    block = data if end < 0 else data[:end]
    # Each field's lines are joined once at the end: appending to a str held in the dict
    # copies it every time, quadratic in a field folded over many lines.
    fields: dict[str, list[bytes]] = {}
    current: list[bytes] | None = None
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")  # obsolete syntax allows blanks before the colon
        if not colon or not name or b" " in name or b"\t" in name:
            break  # not a header line: the header section ended without a blank line
        key = name.decode("ascii", "replace").lower()
        if key in _WANTED and key not in fields:
            current = fields[key] = [value]
        else:
            current = None
    return {
        key: b"".join(lines).decode("utf-8", "replace").strip() for key, lines in fields.items()
    }


_BLIND_FIELD = re.compile(rb"^(?:resent-)?bcc[ \t]*:", re.IGNORECASE | re.MULTILINE)


def drop_blind_copies(data: bytes) -> bytes:
    """``data`` without its ``Bcc:`` and ``Resent-Bcc:`` fields (continuation lines too).

    The envelope carries the blind copies; the header would show them to everyone.
    """
    end = data.find(b"\r\n\r\n")
    head_end = len(data) if end < 0 else end + 2
    if _BLIND_FIELD.search(data, 0, head_end) is None:
        return data  # nearly all mail: one scan of the header section
    lines = data[:head_end].split(b"\r\n")
    kept: list[bytes] = []
    dropping = False
    for index, line in enumerate(lines):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name, colon, _ = line.partition(b":")
        if not colon or not name.strip():
            kept.extend(lines[index:])  # the header section ended here (as parse_headers)
            break
        dropping = _BLIND_FIELD.match(line) is not None
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + data[head_end:]


def _decoded(value: str) -> str:
    """Decode RFC 2047 encoded words (``=?utf-8?q?...?=``) for display fields.

    A word whose charset yields what cannot be stored (``=00``, or a lone surrogate
    from charsets such as utf-7) leaves the field as it was sent.
    """
    if "=?" not in value:
        return value
    text = value
    if len(text) > MAX_DECODED:
        cut = max(text.rfind(" ", 0, MAX_DECODED), text.rfind("\t", 0, MAX_DECODED))
        text = text[: cut if cut > 0 else MAX_DECODED]
    try:
        decoded = str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return value
    return decoded if jsondoc.unstorable_text(decoded) is None else value


def _addresses(value: str | None) -> list[str]:
    if not value:
        return []
    if _BARE_ADDRESS.match(value):  # the common "To: a@b" without the stdlib parser
        return [value.strip()]
    angle = _ANGLE_ADDRESS.match(value)
    if angle is not None:  # "To: <a@b>", likewise
        return [angle.group(1)]
    return [addr for _, addr in getaddresses([value]) if addr]


# Address fields that delivery parses (providers, bounces): the stdlib's parsers recurse
# once per nested comment or group, and a few hundred levels exhaust the interpreter's
# recursion. Only a field with that many brackets or colons can get there, so only such a
# field is parsed here to find out; nearly all mail pays two counts.
_ADDRESS_FIELDS = ("from", "sender", "reply-to", "to", "cc")
_NESTING_SUSPECT = 100


def _check_nesting(fields: dict[str, str]) -> None:
    for key in _ADDRESS_FIELDS:
        value = fields.get(key)
        if value is None or value.count("(") + value.count(":") < _NESTING_SUSPECT:
            continue
        try:
            getaddresses([value])
            str(default_policy.header_factory(key, value))
        except RecursionError:
            raise IngestRejected(
                550,
                "5.6.0",
                f"Invalid {_SUMMARY_BY_KEY[key]} header: comments or groups nested too deep",
            ) from None


def _bounded_id(fields: dict[str, str], key: str, header: str) -> str | None:
    """A campaign or user id header: what the API takes for one (no control characters)."""
    value = fields.get(key)
    if not value:
        return None
    if len(value) > MAX_ID_LENGTH:
        raise IngestRejected(550, "5.6.0", f"{header} is longer than {MAX_ID_LENGTH} characters")
    if CONTROL_CHARS.search(value) or "\ufffd" in value:  # U+FFFD: bytes that were no UTF-8
        raise IngestRejected(
            550, "5.6.0", f"Invalid {header} header: UTF-8 text without control characters"
        )
    return value


def _workspace_id(fields: dict[str, str]) -> str | None:
    """X-Workspace-ID, held to the rule the API names workspaces by (else unreachable there)."""
    value = fields.get("x-workspace-id")
    if not value:
        return None
    if not WORKSPACE_ID.match(value):
        raise IngestRejected(
            550, "5.6.0", f"Invalid X-Workspace-ID header: must be {WORKSPACE_ID_RULE}"
        )
    return value


def _json_object(value: str, header: str) -> dict[str, Any]:
    try:
        parsed = jsondoc.loads(value)
    except jsondoc.JsonRefused as exc:
        raise IngestRejected(550, "5.6.0", f"Invalid {header} header: {exc}") from None
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise IngestRejected(
            550, "5.6.0", f"Invalid {header} header: not JSON ({reason})"
        ) from None
    if not isinstance(parsed, dict):
        raise IngestRejected(550, "5.6.0", f"Invalid {header} header: expected a JSON object")
    # NUL and lone surrogates only arrive as \u escapes (NUL octets are refused earlier).
    if "\\u" in value and jsondoc.unstorable_text(parsed) is not None:
        raise IngestRejected(
            550, "5.6.0", f"Invalid {header} header: strings must be Unicode text without NUL"
        )
    return parsed


def parse_priority(value: str | None) -> int:
    """X-Priority: high/normal/low or the 1-5 client convention; anything else is normal."""
    if not value:
        return PRIORITIES["normal"]
    word = value.strip().split(None, 1)[0].lower() if value.strip() else ""
    if word in PRIORITIES:
        return PRIORITIES[word]
    return _NUMERIC_PRIORITY.get(word, PRIORITIES["normal"])


def _retry_limit(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    count = parse_retry_count(value)
    if count is None:
        raise IngestRejected(
            550, "5.6.0", f"Invalid X-Retry-Count header: expected 0-{MAX_RETRY_COUNT}"
        )
    return count


def _personalization(fields: dict[str, str]) -> dict[str, Any] | None:
    keys = ("x-enable-personalization", "x-llm-model", "x-personalization-context")
    if not any(key in fields for key in keys):
        return None
    flag = fields.get("x-enable-personalization", "").lower()
    if flag not in _TRUE and flag not in _FALSE:
        raise IngestRejected(
            550, "5.6.0", "Invalid X-Enable-Personalization header: expected true or false"
        )
    context_text = fields.get("x-personalization-context")
    return {
        "enabled": flag in _TRUE,
        "model": fields.get("x-llm-model") or None,
        "context": (
            _json_object(context_text, "X-Personalization-Context") if context_text else {}
        ),
    }


_PROTOCOLS = {
    (tls, auth): "ESMTP" + ("S" if tls else "") + ("A" if auth else "")
    for tls in (False, True)
    for auth in (False, True)
}


@functools.lru_cache(maxsize=1024)
def _helo_text(helo: str) -> str:
    # Cached: the same few client names arrive over and over.
    return "".join(c for c in helo if c.isprintable() and c not in "()") or "unknown"


def received_header(sub: Submission, message_id: str, hostname: str, now: datetime) -> bytes:
    """The RFC 5321 trace header we prepend (``with`` per RFC 3848: ESMTP, ESMTPS, ESMTPSA)."""
    protocol = _PROTOCOLS[bool(sub.tls), bool(sub.authenticated)]
    helo = _helo_text(sub.helo)
    # Name the recipient only when there is one, so a Bcc list is not disclosed.
    for_clause = f"\r\n\tfor <{sub.recipients[0].address}>" if len(sub.recipients) == 1 else ""
    literal = f"IPv6:{sub.peer_ip}" if ":" in sub.peer_ip else sub.peer_ip  # RFC 5321 4.1.3
    text = (
        f"Received: from {helo} ([{literal}])\r\n"
        f"\tby {hostname} (relayd) with {protocol} id {message_id}{for_clause};\r\n"
        f"\t{rfc5322_date(now)}\r\n"
    )
    return text.encode("ascii", "replace")


def build_message(
    data: bytes,
    sub: Submission,
    *,
    message_id: str,
    uuid: str,
    now: datetime,
    hostname: str,
    bare_newline: str = "reject",
) -> NewMessage:
    """Check the accepted bytes and extract the message fields, or raise IngestRejected."""
    data = drop_blind_copies(check_bytes(data, bare_newline))
    fields = parse_headers(data)
    _check_nesting(fields)
    metadata_text = fields.get("x-metadata")
    metadata = _json_object(metadata_text, "X-Metadata") if metadata_text else {}
    to = _addresses(fields.get("to"))
    cc = _addresses(fields.get("cc"))
    if "to" in fields or "cc" in fields:
        # Envelope recipients the headers do not name were blind copies.
        listed = {addr.lower() for addr in to + cc}
        bcc = [r.address for r in sub.recipients if r.address.lower() not in listed]
    else:
        # No address headers at all (a bare script, a bounce): the envelope is the To list.
        to, bcc = [r.address for r in sub.recipients], []
    headers = {
        _SUMMARY_BY_KEY[key]: value for key, value in fields.items() if key in _SUMMARY_BY_KEY
    }
    if "Subject" in headers:
        headers["Subject"] = _decoded(headers["Subject"])
    workspace = sub.auth_workspace or _workspace_id(fields)
    return NewMessage(
        id=message_id,
        uuid=uuid,
        mail_from=sub.mail_from,
        recipients=list(sub.recipients),
        raw=received_header(sub, message_id, hostname, now) + data,
        queued_at=now,
        next_attempt_at=now,
        workspace_id=workspace or "default",
        campaign_id=_bounded_id(fields, "x-campaign-id", "X-Campaign-ID"),
        user_id=sub.auth_user or _bounded_id(fields, "x-user-id", "X-User-ID"),
        source="smtp",
        from_header=_decoded(fields.get("from", ""))[:MAX_DISPLAY],
        to=to,
        cc=cc,
        bcc=bcc,
        subject=headers.get("Subject", "")[:MAX_DISPLAY],
        headers=headers,
        metadata=metadata,
        priority=parse_priority(fields.get("x-priority")),
        max_retries=_retry_limit(fields.get("x-retry-count")),
        dsn_ret=sub.dsn_ret,
        dsn_envid=sub.dsn_envid,
        personalization=_personalization(fields),
    )
