"""Writing RFC 5322 / MIME text directly: header folding, encoded-words, body encodings (pure).

The stdlib ``email`` generator parses every header it is given into a token
tree and folds it back: about 2 ms per message, the largest cost of an API
send. :mod:`daemon.core.compose` writes the common shapes with these helpers
instead (:func:`write_draft`) and keeps the stdlib for what they decline
(:class:`Unsupported`).

What they produce: CRLF line ends; header lines folded at whitespace to 78
characters where the content allows and never over 998 (else Unsupported);
non-ASCII, edge-whitespace or ``=?``-looking text as RFC 2047 ``B``
encoded-words of whole UTF-8 characters (at most 75 characters each); RFC 2231
parameters for long or non-ASCII file names; 7bit, quoted-printable or base64
bodies chosen as the stdlib chooses them, so the message needs no 8BITMIME.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from daemon.core.compose import Draft

MAX_LINE = 78  # RFC 5322 "SHOULD"
HARD_LINE = 998  # RFC 5322 "MUST"
_B64_LINE = 57  # raw bytes per 76-character base64 line

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_PHRASE = re.compile(rf"^{_ATEXT}+(?: {_ATEXT}+)*\Z")
_WORDS = re.compile(r"[ \t]*[^ \t]+")
_SPECIALS = frozenset('()<>@,:;.\\"[]')  # email.headerregistry quotes a display name with these
_EW_PREFIX = "=?utf-8?b?"
_RFC2231_SAFE = "!#$&+-.^_`|~"


class Unsupported(Exception):
    """A value these helpers do not write; the caller falls back to the stdlib generator."""


def fold(name: str, pieces: Sequence[str]) -> str:
    """``Name: piece0 piece1...`` with CRLF SP folds before pieces that would pass 78 columns.

    Every piece after the first starts with the whitespace a fold may precede;
    a fold only inserts CRLF, so unfolding restores the value exactly.
    """
    if not pieces:
        return name + ":"
    # The first piece stays beside the name: parsers strip only that line's leading space.
    lines: list[str] = []
    line = f"{name}: {pieces[0]}"
    for piece in pieces[1:]:
        if len(line) + len(piece) > MAX_LINE:
            lines.append(line)
            line = piece
        else:
            line += piece
    lines.append(line)
    if any(len(one) > HARD_LINE for one in lines):
        raise Unsupported(f"{name}: a line would pass {HARD_LINE} octets")
    return "\r\n".join(lines)


def encoded_words(text: str, first_room: int) -> list[str]:
    """``text`` as B encoded-words of whole characters: the first fits ``first_room`` columns."""
    data = text.encode("utf-8")
    words: list[str] = []
    start = 0
    room = first_room
    while start < len(data):
        # 45 bytes make a 72-character word; RFC 2047 allows 75.
        take = min(45, max(0, (room - len(_EW_PREFIX) - 2) // 4 * 3))
        if take < 4:  # not even one character fits here: start on a fresh line
            take = 45
        end = min(len(data), start + take)
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never split a character
            end -= 1
        chunk = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(("" if not words else " ") + _EW_PREFIX + chunk + "?=")
        start = end
        room = MAX_LINE - 1
    return words


def _plain(text: str) -> bool:
    """ASCII that a reader would not mistake for anything else and that unfolds to itself."""
    return text.isascii() and "=?" not in text and text == text.strip(" \t")


def unstructured(name: str, text: str) -> str:
    """An unstructured header line (Subject, X-*): plain words folded, else encoded-words."""
    if not text:
        return name + ":"
    if _plain(text):
        try:
            return fold(name, _WORDS.findall(text))
        except Unsupported:
            pass  # an unbreakable word too long for a line: encoded-words split it
    return fold(name, encoded_words(text, MAX_LINE - len(name) - 2))


def display(address: str, display_name: str) -> str:
    """A mailbox as ``str(email.headerregistry.Address)`` shows it (the decoded header)."""
    if not display_name:
        return address
    if not _SPECIALS.isdisjoint(display_name):
        escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" <{address}>'
    return f"{display_name} <{address}>"


def _mailbox_pieces(address: str, display_name: str, room: int) -> list[str]:
    local, at, domain = address.rpartition("@")
    if not at or not _DOT_ATOM.match(local) or not _DOT_ATOM.match(domain):
        raise Unsupported(f"address {address!r} needs quoting")
    if not display_name:
        return [address]
    angle = f" <{address}>"
    if "=?" not in display_name and "\t" not in display_name and display_name.isascii():
        if _PHRASE.match(display_name):
            return [*_WORDS.findall(display_name), angle]
        escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
        return [f'"{escaped}"', angle]
    if "\t" in display_name or "  " in display_name:
        # Parsers collapse whitespace runs inside encoded-words of a phrase.
        raise Unsupported("display name with a whitespace run")
    words = encoded_words(display_name, room)
    if len(words) > 1:
        # Readers disagree on the space between encoded-words in a phrase (the stdlib keeps it).
        raise Unsupported("display name longer than one encoded-word")
    return [*words, angle]


def address_list(name: str, mailboxes: Sequence[tuple[str, str]]) -> str:
    """``From``/``To``/``Cc`` from (address, display name) pairs, folded after commas."""
    pieces: list[str] = []
    for index, (address, display_name) in enumerate(mailboxes):
        room = MAX_LINE - len(name) - 2 if index == 0 else MAX_LINE - 1
        mine = _mailbox_pieces(address, display_name, room)
        if index:
            pieces[-1] += ","
            mine[0] = " " + mine[0].lstrip(" ")
        pieces.extend(mine)
    return fold(name, pieces)


def text_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, CRLF body) for UTF-8 text, as the stdlib would choose.

    7bit when ASCII with lines of at most 78 octets; otherwise quoted-printable,
    or base64 when that is shorter for the first ten lines.
    """
    lines = text.encode("utf-8").splitlines()
    body = b"\r\n".join(lines) + b"\r\n"
    if body.isascii() and max(map(len, lines), default=0) <= MAX_LINE:
        return "7bit", body
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    if len(binascii.b2a_qp(sniff, istext=True)) > len(binascii.b2a_base64(sniff)):
        return "base64", base64_body(body)
    return "quoted-printable", binascii.b2a_qp(body, istext=True)


def base64_body(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines."""
    return b"".join(
        binascii.b2a_base64(data[i : i + _B64_LINE], newline=False) + b"\r\n"
        for i in range(0, len(data), _B64_LINE)
    )


def attachment_disposition(filename: str) -> str:
    """The ``Content-Disposition: attachment`` line naming the file (RFC 2231 when needed)."""
    if filename.isascii() and "\t" not in filename and "=?" not in filename:
        escaped = filename.replace("\\", "\\\\").replace('"', '\\"')
        line = f'Content-Disposition: attachment; filename="{escaped}"'
        if len(line) <= MAX_LINE:
            return line
    charset = "us-ascii" if filename.isascii() else "utf-8"
    encoded = quote(filename, safe=_RFC2231_SAFE, encoding="utf-8")
    lines = ["Content-Disposition: attachment;"]
    start, number = 0, 0
    while start < len(encoded) or number == 0:
        head = f" filename*{number}*=" + (f"{charset}''" if number == 0 else "")
        end = min(len(encoded), start + max(8, MAX_LINE - len(head) - 1))
        if "%" in encoded[end - 2 : end] and end < len(encoded):  # keep %XX together
            end = encoded.rindex("%", end - 2, end)
        lines.append(head + encoded[start:end] + ";")
        start, number = end, number + 1
    lines[-1] = lines[-1][:-1]
    return "\r\n".join(lines)


def multipart(subtype: str, boundary: str, parts: Sequence[bytes]) -> tuple[str, bytes]:
    """(Content-Type line, body) of a multipart whose ``parts`` are header block + body each."""
    line = f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"'
    delimiter = b"--" + boundary.encode("ascii")
    body = delimiter + b"\r\n" + (b"\r\n" + delimiter + b"\r\n").join(parts)
    return line, body + b"\r\n" + delimiter + b"--\r\n"


# Headers the stdlib parses as structured (addresses, dates): it re-renders and
# checks them, so a draft naming one goes through the stdlib writer.
_STRUCTURED = frozenset(
    {"sender", "reply-to", "orig-date"}
    | {f"resent-{n}" for n in ("date", "sender", "from", "to", "cc", "bcc")}
)
_PLAIN_MSG_ID = re.compile(
    r"^<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+>\Z"
)


def _leaf(text: str, subtype: str) -> tuple[list[str], bytes]:
    cte, body = text_body(text)
    return _TEXT_HEADERS[subtype, cte], body  # shared: never changed


@functools.lru_cache(maxsize=4096)
def _address_header(name: str, pairs: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    """(folded header line, decoded value) of an address header (pure, so cached: senders
    and recipients repeat). Unsupported is not cached."""
    return address_list(name, pairs), ", ".join(display(a, d) for a, d in pairs)


@functools.lru_cache(maxsize=1024)
def _short_unstructured(name: str, text: str) -> str:
    return unstructured(name, text)


def _unstructured(name: str, text: str) -> str:
    """:func:`unstructured`, cached for short values (subjects and custom headers repeat)."""
    if len(text) <= 256:
        return _short_unstructured(name, text)
    return unstructured(name, text)


_TEXT_HEADERS = {
    (subtype, cte): [
        f'Content-Type: text/{subtype}; charset="utf-8"',
        f"Content-Transfer-Encoding: {cte}",
    ]
    for subtype in ("plain", "html")
    for cte in ("7bit", "quoted-printable", "base64")
}


def write_draft(draft: Draft, message_id: str, date: str) -> tuple[bytes, dict[str, str]]:
    """A checked draft (:func:`daemon.core.compose.compose_message`) as (bytes, top headers).

    Raises Unsupported for what it leaves to the stdlib writer.
    """
    lines: list[str] = []
    headers: dict[str, str] = {}
    for name, boxes in (("From", (draft.sender,)), ("To", draft.to), ("Cc", draft.cc)):
        if boxes:
            line, shown = _address_header(name, tuple((m.address, m.display_name) for m in boxes))
            lines.append(line)
            headers[name] = shown
    lines.append(_unstructured("Subject", draft.subject))
    headers["Subject"] = draft.subject
    lines.append("Date: " + date)
    headers["Date"] = date
    custom = list(draft.headers)
    if not custom or "message-id" not in {name.lower() for name, _ in custom}:
        custom.insert(0, ("Message-ID", message_id))
    for name, value in custom:
        lower = name.lower()
        if lower in _STRUCTURED:
            raise Unsupported(name)
        if lower == "message-id":
            if not _PLAIN_MSG_ID.match(value) or len(name) + len(value) > HARD_LINE - 2:
                raise Unsupported(name)
            lines.append(f"{name}: {value}")
        else:
            lines.append(_unstructured(name, value))
        headers[name] = value
    lines.append("MIME-Version: 1.0")
    headers["MIME-Version"] = "1.0"

    # Leaves in document order: (header lines, body); multiparts get their boundary below.
    leaves: list[tuple[list[str], bytes]] = []
    if draft.text_body is not None or draft.html_body is None:
        leaves.append(_leaf(draft.text_body or "", "plain"))
    if draft.html_body is not None:
        leaves.append(_leaf(draft.html_body, "html"))
    texts = len(leaves)
    if texts == 1 and not draft.attachments:  # one text part: no boundary to derive
        content = leaves[0]
    else:
        for attachment in draft.attachments:
            part_lines = [
                f"Content-Type: {attachment.content_type.lower()}",  # checked: type/subtype
                "Content-Transfer-Encoding: base64",
                attachment_disposition(attachment.filename),
            ]
            leaves.append((part_lines, base64_body(attachment.data)))
        content = _multiparts(leaves, texts, bool(draft.attachments))
    for line in content[0]:
        name, _, value = line.partition(": ")
        headers[name] = value.replace("\r\n", "")
    try:
        head = "\r\n".join([*lines, *content[0]]).encode("ascii")
    except UnicodeEncodeError:
        raise Unsupported("non-ASCII header text") from None
    return head + b"\r\n\r\n" + content[1], headers


def _multiparts(
    leaves: list[tuple[list[str], bytes]], texts: int, attachments: bool
) -> tuple[list[str], bytes]:
    """The alternative (two texts) and mixed (attachments) structure around ``leaves``."""
    digest = hashlib.sha256()
    for _, body in leaves:
        digest.update(body)
    seed = digest.hexdigest()[:40]

    def block(part: tuple[list[str], bytes]) -> bytes:
        return "\r\n".join(part[0]).encode("ascii") + b"\r\n\r\n" + part[1]

    if texts == 2:
        boundary = f"=_{seed}_{1 if attachments else 0}"
        line, body = multipart("alternative", boundary, [block(p) for p in leaves[:2]])
        content: tuple[list[str], bytes] = ([line], body)
    else:
        content = leaves[0]
    if attachments:
        parts = [block(content), *(block(p) for p in leaves[texts:])]
        line, body = multipart("mixed", f"=_{seed}_0", parts)
        content = ([line], body)
    return content


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322_date(date: datetime) -> str:
    """``email.utils.format_datetime(date)``, without its cost for the usual UTC clock."""
    if date.utcoffset() != timedelta(0):
        return format_datetime(date)
    return (
        f"{_DAYS[date.weekday()]}, {date.day:02d} {_MONTHS[date.month - 1]} {date.year:04d} "
        f"{date.hour:02d}:{date.minute:02d}:{date.second:02d} +0000"
    )
