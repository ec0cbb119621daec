"""Reading JSON request bodies field by field, with errors that name the field.

Shared by every resource that takes a JSON body: unknown fields and wrong types
are INVALID_REQUEST, absent required ones MISSING_REQUIRED_FIELD, bad addresses
INVALID_EMAIL_FORMAT (syntax only, through email-validator; no DNS).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from typing import Any

from email_validator import EmailNotValidError, validate_email
from starlette.requests import ClientDisconnect, Request

from daemon.api.errors import ApiError
from daemon.api.middleware import header
from daemon.core import jsondoc
from daemon.core.compose import Mailbox

MAX_JSON_FIELD = 65536  # serialised bytes of a free-form object (metadata, variables)


def invalid(field_name: str, message: str) -> ApiError:
    return ApiError("INVALID_REQUEST", message, {"field": field_name})


def missing(field_name: str, message: str | None = None) -> ApiError:
    return ApiError(
        "MISSING_REQUIRED_FIELD", message or f"{field_name} is required", {"field": field_name}
    )


def parse_json(body: bytes) -> Any:
    """Decode a JSON body; bad UTF-8 and what :func:`jsondoc.loads` refuses are INVALID_REQUEST."""
    try:
        # What json.loads does with bytes before decoding.
        text = body.decode(json.detect_encoding(body), "surrogatepass")
        return jsondoc.loads(text)
    except (ValueError, RecursionError) as exc:
        message = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ApiError("INVALID_REQUEST", f"Malformed JSON body: {message}") from None


def reject_unknown_fields(body: dict[str, Any], allowed: Collection[str]) -> None:
    """400 INVALID_REQUEST naming every field of ``body`` outside ``allowed``."""
    extra = body.keys() - (allowed if isinstance(allowed, (set, frozenset)) else set(allowed))
    if extra:
        unknown = sorted(extra)
        raise ApiError(
            "INVALID_REQUEST",
            f"unknown field(s): {', '.join(unknown)}",
            {"field": unknown[0], "unknown_fields": unknown},
        )


def plain_strings(raw: bytes) -> bool:
    """True when no string decoded from the JSON ``raw`` can hold NUL or a lone surrogate.

    So :func:`check_text` of its document would pass. A decoded string gets a
    NUL or a surrogate only from a ``\\u`` escape or from UTF-8 bytes of a
    surrogate (lead byte 0xED), and json.loads reads ``raw`` as UTF-8 when it has
    no NUL byte and no UTF-16 byte-order mark.
    """
    return (
        b"\\u" not in raw
        and b"\x00" not in raw
        and b"\xed" not in raw
        and not raw.startswith((b"\xff\xfe", b"\xfe\xff"))
    )


# A value serialises (json.dumps) to at most this many characters per byte of the
# JSON text it was decoded from: a non-ASCII character becomes a \uXXXX escape (6
# characters from 2 or more bytes; 12 from 4), "1e15" (4 bytes) "1000000000000000.0".
MAX_DUMPS_GROWTH = 6


def check_text(value: Any, path: str = "") -> None:
    """Refuse NUL and lone surrogates anywhere: neither survives email nor PostgreSQL."""
    found = jsondoc.unstorable_text(value, path)
    if found is not None:
        where, why = found
        raise invalid(where or "body", why)


@functools.lru_cache(maxsize=8192)
def _validated(value: str) -> Mailbox | str:
    """The mailbox ``value`` names, or why it is invalid (pure, so cached: senders repeat)."""
    try:
        result = validate_email(
            value,
            check_deliverability=False,
            allow_display_name=True,
            allow_smtputf8=False,
            test_environment=True,
        )
    except EmailNotValidError as exc:
        return str(exc)
    return Mailbox(
        address=result.ascii_email or result.normalized, display_name=result.display_name or ""
    )


def mailbox(value: str, field_name: str) -> Mailbox:
    """One address, optionally ``Name <addr>``; syntax checks only, no DNS."""
    result = _validated(value) if len(value) <= 1024 else _validated.__wrapped__(value)
    if isinstance(result, str):
        raise _bad_address(value, field_name, result)
    return result


def _bad_address(value: str, field_name: str, reason: str) -> ApiError:
    return ApiError(
        "INVALID_EMAIL_FORMAT",
        f"{field_name}: {reason}",
        {"field": field_name, "value": value[:320]},
    )


def string_field(
    body: dict[str, Any], key: str, max_length: int | None = None, path: str = ""
) -> str | None:
    where = f"{path}.{key}" if path else key
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(where, f"{where} must be a string")
    if max_length is not None and len(value) > max_length:
        raise invalid(where, f"{where} must be at most {max_length} characters")
    return value


def mailboxes_field(body: dict[str, Any], key: str) -> list[Mailbox]:
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]  # a single address is accepted as a one-item list
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(key, f"{key} must be a list of email addresses")
    boxes: list[Mailbox] = []
    for index, address in enumerate(value):
        result = _validated(address) if len(address) <= 1024 else _validated.__wrapped__(address)
        if isinstance(result, str):  # the field is named only when it is at fault
            raise _bad_address(address, f"{key}[{index}]", result)
        boxes.append(result)
    return boxes


def object_field(
    body: dict[str, Any], key: str, allowed: frozenset[str] | None, raw_size: int | None = None
) -> dict[str, Any]:
    """The object ``body[key]`` ({} when absent). With ``allowed``, no other keys; without,
    free-form but at most MAX_JSON_FIELD serialised bytes. ``raw_size``: the size of
    the JSON text ``body`` was decoded from, when known (a small one needs no measure)."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(key, f"{key} must be an object")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ApiError(
                "INVALID_REQUEST",
                f"unknown field(s) in {key}: {', '.join(unknown)}",
                {"field": key, "unknown_fields": unknown},
            )
    elif (raw_size is None or raw_size * MAX_DUMPS_GROWTH > MAX_JSON_FIELD) and len(
        json.dumps(value)
    ) > MAX_JSON_FIELD:
        raise invalid(key, f"{key} must serialise to at most {MAX_JSON_FIELD} bytes")
    return value


def _too_large(limit: int) -> ApiError:
    return ApiError(
        "MESSAGE_TOO_LARGE", f"the request body exceeds {limit} bytes", {"max_body": limit}
    )


def parse_object(raw: bytes, allowed: Collection[str], *, empty: bool = False) -> dict[str, Any]:
    """A JSON object body with only ``allowed`` fields and clean text (``empty``: b"" is {})."""
    document = parse_json(raw) if raw.strip() or not empty else {}
    if not isinstance(document, dict):
        raise ApiError("INVALID_REQUEST", "the request body must be a JSON object")
    reject_unknown_fields(document, allowed)
    check_text(document)
    return document


async def object_body(
    request: Request, limit: int, allowed: Collection[str], *, empty: bool = False
) -> dict[str, Any]:
    """:func:`parse_object` of the request body, read through :func:`read_body`."""
    return parse_object(await read_body(request, limit), allowed, empty=empty)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes.

    Reads the ASGI messages itself (as ``request.stream()`` does, without its
    generator): the body cannot be read again through ``request``.
    """
    declared = header(request, b"content-length") or ""
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
