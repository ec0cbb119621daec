"""MAIL FROM and RCPT TO parameters: SIZE, BODY and the RFC 3461 DSN extension.

aiosmtpd upper-cases every parameter and refuses those it does not know; ENVID
and ORCPT are case-sensitive xtext, so relay parses them itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ENVID = 100  # RFC 3461 4.4
MAX_ORCPT = 500  # RFC 3461 4.2
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})


@dataclass(frozen=True)
class MailParams:
    """Parameters of MAIL FROM, already checked for syntax."""

    size: int | None = None
    body: str | None = None
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RcptParams:
    """RFC 3461 parameters of RCPT TO, already checked for syntax."""

    notify: str | None = None
    orcpt: str | None = None


class ParamError(ValueError):
    """A MAIL/RCPT parameter is malformed; the message is the SMTP reply."""


def decode_xtext(value: str) -> str:
    """Decode RFC 3461 xtext (``+XX`` hex escapes); raise ParamError when malformed."""
    out: list[str] = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "+":
            pair = value[index + 1 : index + 3]
            if len(pair) != 2 or not all(c in "0123456789ABCDEFabcdef" for c in pair):
                raise ParamError("501 5.5.4 Malformed xtext encoding")
            out.append(chr(int(pair, 16)))
            index += 3
            continue
        if not 33 <= ord(char) <= 126 or char == "=":
            raise ParamError("501 5.5.4 Malformed xtext encoding")
        out.append(char)
        index += 1
    return "".join(out)


def parse_params(text: str) -> dict[str, str | None]:
    """``KEY[=VALUE] ...`` into a dict with upper-cased keys; values keep their case."""
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not value):
            raise ParamError(f"501 5.5.4 Malformed parameter {item[:40]!r}")
        key = key.upper()
        if key in params:
            raise ParamError(f"501 5.5.4 Duplicate parameter {key}")
        params[key] = value if eq else None
    return params


def mail_params(params: dict[str, str | None], size_limit: int | None) -> MailParams:
    """Check SIZE, BODY, RET and ENVID; anything else is 555."""
    size = params.pop("SIZE", None)
    if size is not None and not size.isdigit():
        raise ParamError("501 5.5.4 SIZE takes a number of octets")
    if size is not None and size_limit and int(size) > size_limit:
        raise ParamError("552 5.3.4 Message size exceeds fixed maximum message size")
    body = params.pop("BODY", None)
    if body is not None and body.upper() not in ("7BIT", "8BITMIME"):
        raise ParamError("501 5.5.4 BODY can only be 7BIT or 8BITMIME")
    ret = params.pop("RET", None)
    if ret is not None and ret.upper() not in ("FULL", "HDRS"):
        raise ParamError("501 5.5.4 RET can only be FULL or HDRS")
    envid = params.pop("ENVID", None)
    if envid is not None:
        if len(envid) > MAX_ENVID:
            raise ParamError(f"501 5.5.4 ENVID is longer than {MAX_ENVID} characters")
        envid = decode_xtext(envid)
    if params:
        raise ParamError(f"555 5.5.4 Unsupported MAIL parameter {', '.join(params)}")
    return MailParams(
        size=int(size) if size is not None else None,
        body=body.upper() if body else None,
        ret=ret.upper() if ret else None,
        envid=envid,
    )


def rcpt_params(params: dict[str, str | None]) -> RcptParams:
    """Check NOTIFY and ORCPT; anything else is 555."""
    notify = params.pop("NOTIFY", None)
    if notify is not None:
        words = notify.upper().split(",")
        if words != ["NEVER"] and (
            not set(words) <= _NOTIFY_WORDS or len(set(words)) != len(words)
        ):
            raise ParamError("501 5.5.4 NOTIFY takes NEVER or SUCCESS, FAILURE, DELAY")
        notify = ",".join(words)
    orcpt = params.pop("ORCPT", None)
    if orcpt is not None:
        addr_type, semicolon, address = orcpt.partition(";")
        if not semicolon or not _KEYWORD.match(addr_type) or not address:
            raise ParamError("501 5.5.4 ORCPT takes addr-type;address")
        if len(orcpt) > MAX_ORCPT:
            raise ParamError(f"501 5.5.4 ORCPT is longer than {MAX_ORCPT} characters")
        orcpt = f"{addr_type.lower()};{decode_xtext(address)}"
    if params:
        raise ParamError(f"555 5.5.4 Unsupported RCPT parameter {', '.join(params)}")
    return RcptParams(notify=notify, orcpt=orcpt)
