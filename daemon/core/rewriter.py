"""Rewriting accepted mail once before delivery: tracking in HTML parts, added headers.

Pure. Only what tracking needs changes: the ``href`` of http(s) links in
``<a>``/``<area>`` tags of ``text/html`` parts, one pixel image before
``</body>``, and header lines put in front of the header block. Text parts,
attachments, ``mailto:``/``tel:``/``#anchor`` links and every other byte
stay as accepted (the top-level header block is never re-serialised).
"""

from __future__ import annotations

import base64
import html
import quopri
import re
from collections.abc import Callable, Sequence
from email import message_from_bytes
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32
from io import BytesIO

from daemon.core.tracking import is_web_url

# An <a ...> or <area ...> start tag, then its href attribute inside.
_LINK_TAG = re.compile(r"<(?:a|area)\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_POLICY = compat32.clone(linesep="\r\n", max_line_length=0)

LinkRewriter = Callable[[str], str]


def _rewrite_tag(tag: str, link: LinkRewriter) -> str:
    match = _HREF.search(tag)
    if match is None:
        return tag
    raw = next((g for g in match.groups()[1:] if g is not None), "")
    target = html.unescape(raw).strip()
    if not is_web_url(target):
        return tag  # mailto:, tel:, #anchor, relative or malformed: left alone
    new = f'{match.group(1)}"{html.escape(link(target), quote=True)}"'
    return tag[: match.start()] + new + tag[match.end() :]


def rewrite_html(text: str, pixel_url: str | None = None, link: LinkRewriter | None = None) -> str:
    """Rewrite http(s) links through ``link`` and add the open pixel."""
    if link is not None:
        text = _LINK_TAG.sub(lambda m: _rewrite_tag(m.group(0), link), text)
    if pixel_url is not None:
        img = (
            f'<img src="{html.escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
            'style="border:0;width:1px;height:1px" />'
        )
        ends = list(_BODY_END.finditer(text))
        if ends:
            at = ends[-1].start()
            text = text[:at] + img + text[at:]
        else:
            text = text + img
    return text


def _html_parts(message: Message) -> list[Message]:
    found = []
    for part in message.walk():
        if part.is_multipart() or part.get_content_type() != "text/html":
            continue
        if (part.get("Content-Disposition") or "").strip().lower().startswith("attachment"):
            continue
        found.append(part)
    return found


def _encode(part: Message, text: str, charset: str) -> None:
    data = text.encode(charset, "xmlcharrefreplace")
    cte = (part.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if cte == "base64":
        part.set_payload(base64.encodebytes(data).decode("ascii"))
    elif cte == "quoted-printable":
        part.set_payload(quopri.encodestring(data).decode("ascii"))
    elif cte == "7bit" and not data.isascii():
        del part["Content-Transfer-Encoding"]
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(quopri.encodestring(data).decode("ascii"))
    else:
        part.set_payload(data.decode("ascii", "surrogateescape"))


def _split_head(raw: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(sep)
        if at >= 0:
            return raw[: at + len(sep)], raw[at + len(sep) :]
    return raw, b""


def rewrite_message(
    raw: bytes,
    *,
    pixel_url: str | None = None,
    link: LinkRewriter | None = None,
    add_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The message with its HTML parts rewritten and ``add_headers`` in front."""
    head, body = _split_head(raw)
    if pixel_url is not None or link is not None:
        message = message_from_bytes(raw, policy=_POLICY)
        parts = _html_parts(message)
        changed = False
        for part in parts:
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            charset = part.get_content_charset() or "us-ascii"
            try:
                text = payload.decode(charset)
            except (LookupError, UnicodeDecodeError):
                continue  # an HTML part we cannot read is delivered untouched
            new = rewrite_html(text, pixel_url, link)
            if new != text:
                _encode(part, new, charset)
                changed = True
        if changed:
            out = BytesIO()
            BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(message)
            _, body = _split_head(out.getvalue())
    lines = b"".join(f"{name}: {value}\r\n".encode("ascii") for name, value in add_headers)
    return lines + head + body
