"""The body of ``POST /api/messages``, checked strictly and turned into a typed request.

Every refusal is an ApiError naming the field at fault: unknown fields and wrong
types are INVALID_REQUEST, absent required ones MISSING_REQUIRED_FIELD, bad
addresses INVALID_EMAIL_FORMAT (syntax only, through email-validator).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from daemon.api.errors import ApiError
from daemon.api.fields import (
    check_text,
    invalid,
    mailbox,
    mailboxes_field,
    missing,
    object_field,
    plain_strings,
    reject_unknown_fields,
    string_field,
)
from daemon.core.compose import (
    CONTROL_CHARS,
    Attachment,
    ComposeError,
    Draft,
    check_header,
)
from daemon.core.ids import WORKSPACE_ID, WORKSPACE_ID_RULE
from daemon.core.message import MAX_RETRY_COUNT, PRIORITIES, parse_retry_count

FIELDS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "html_body",
        "text_body",
        "attachments",
        "headers",
        "workspace_id",
        "campaign_id",
        "metadata",
        "personalization",
        "scheduling",
    }
)
ATTACHMENT_FIELDS = frozenset({"filename", "content_type", "content"})
PERSONALIZATION_FIELDS = frozenset({"enabled", "variables"})
SCHEDULING_FIELDS = frozenset({"send_at", "timezone"})

MAX_RECIPIENTS = 1000
MAX_HEADERS = 100
MAX_HEADER_VALUE = 8000
MAX_ATTACHMENTS = 100
MAX_SUBJECT = 998
MAX_SCHEDULE_AHEAD = timedelta(days=366)
ADDRESS_HEADERS = frozenset({"reply-to", "sender"})
_X_PRIORITY_DIGIT = re.compile(r"^([1-5])(\s.*)?\Z")


@dataclass
class SendRequest:
    """A validated send: the draft to compose and what the queue stores beside it."""

    draft: Draft
    mail_from: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    workspace_id: str | None = None
    campaign_id: str | None = None
    user_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    personalization: dict[str, Any] | None = None
    send_at: datetime | None = None
    priority: int = PRIORITIES["normal"]
    max_retries: int | None = None

    @property
    def recipients(self) -> list[str]:
        """Envelope recipients: to + cc + bcc, each address once."""
        seen: set[str] = set()
        unique: list[str] = []
        for address in [*self.to, *self.cc, *self.bcc]:
            if address.lower() not in seen:
                seen.add(address.lower())
                unique.append(address)
        return unique


def _priority(value: str) -> int:
    word = value.strip().lower()
    if word in PRIORITIES:
        return PRIORITIES[word]
    digit = _X_PRIORITY_DIGIT.match(word)
    if digit is None:
        raise invalid("headers.X-Priority", "X-Priority must be high, normal, low or 1-5")
    return {"1": 0, "2": 0, "3": 1, "4": 2, "5": 2}[digit.group(1)]


def _headers(body: dict[str, Any]) -> list[tuple[str, str]]:
    value = object_field(body, "headers", None)
    if len(value) > MAX_HEADERS:
        raise invalid("headers", f"at most {MAX_HEADERS} headers")
    headers: list[tuple[str, str]] = []
    for name, text in value.items():
        if not isinstance(text, str):
            raise invalid(f"headers.{name}", f"header {name} must be a string")
        if len(text) > MAX_HEADER_VALUE:
            raise invalid(f"headers.{name}", f"header {name} is longer than {MAX_HEADER_VALUE}")
        try:
            check_header(name, text)
        except ComposeError as exc:
            raise invalid(exc.field, str(exc)) from None
        if name.lower() in ADDRESS_HEADERS:
            for index, (_, address) in enumerate(getaddresses([text])):
                mailbox(address, f"headers.{name}[{index}]")
        headers.append((name, text))
    return headers


def _scheduling(body: dict[str, Any], now: datetime) -> datetime | None:
    scheduling = object_field(body, "scheduling", SCHEDULING_FIELDS)
    zone_name = scheduling.get("timezone")
    zone: ZoneInfo | None = None
    if zone_name is not None:
        if not isinstance(zone_name, str):
            raise invalid(
                "scheduling.timezone", "timezone must be an IANA name such as Europe/Paris"
            )
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise invalid("scheduling.timezone", f"unknown time zone {zone_name!r}") from None
    send_at = scheduling.get("send_at")
    if send_at is None:
        return None
    if not isinstance(send_at, str):
        raise invalid("scheduling.send_at", "send_at must be an ISO 8601 date-time string")
    try:
        when = datetime.fromisoformat(send_at)
        if when.tzinfo is None:  # no offset: local time in `timezone`, or UTC without one
            when = when.replace(tzinfo=zone or UTC)
        when = when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise invalid("scheduling.send_at", f"send_at is not ISO 8601: {send_at[:64]!r}") from None
    if when > now + MAX_SCHEDULE_AHEAD:
        raise invalid("scheduling.send_at", "send_at is more than a year ahead")
    return when


def _attachments(
    body: dict[str, Any], max_size: int, guess_type: Callable[[str], str]
) -> list[Attachment]:
    items = body.get("attachments")
    if items is None:
        return []
    if not isinstance(items, list):
        raise invalid("attachments", "attachments must be a list of objects")
    if len(items) > MAX_ATTACHMENTS:
        raise invalid("attachments", f"at most {MAX_ATTACHMENTS} attachments")
    attachments: list[Attachment] = []
    total = 0
    for index, item in enumerate(items):
        where = f"attachments[{index}]"
        item = object_field({where: item}, where, ATTACHMENT_FIELDS)
        for key in ("filename", "content"):
            if item.get(key) is None:
                raise ApiError(
                    "MISSING_REQUIRED_FIELD",
                    f"{where}.{key} is required",
                    {"field": f"{where}.{key}"},
                )
        filename = string_field(item, "filename", 255, where)
        content = item["content"]
        content_type = string_field(item, "content_type", 255, where)
        if not isinstance(content, str):
            raise invalid(f"{where}.content", "content must be a base64 string")
        assert filename is not None
        if not filename.strip() or "\t" in filename or CONTROL_CHARS.search(filename):
            raise invalid(
                f"{where}.filename", "filename must be non-empty, without control characters"
            )
        try:
            data = base64.b64decode("".join(content.split()), validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"{where}.content", "content is not valid base64") from None
        total += len(data)
        if total > max_size:
            raise ApiError(
                "MESSAGE_TOO_LARGE",
                f"attachments exceed the {max_size}-byte message limit",
                {"max_size": max_size},
            )
        attachments.append(Attachment(filename, content_type or guess_type(filename), data))
    return attachments


def guess_content_type(filename: str) -> str:
    """A content type from the file name, never a container type."""
    guessed = mimetypes.guess_type(filename, strict=False)[0] or "application/octet-stream"
    if guessed.split("/")[0] in ("multipart", "message"):
        return "application/octet-stream"
    return guessed


def _sending_options(headers: list[tuple[str, str]]) -> tuple[int, int | None]:
    """Priority and this message's retry limit, from X-Priority and X-Retry-Count."""
    priority, max_retries = PRIORITIES["normal"], None
    for name, value in headers:
        if name.lower() == "x-priority":
            priority = _priority(value)
        elif name.lower() == "x-retry-count":
            max_retries = parse_retry_count(value)
            if max_retries is None:
                raise invalid(
                    f"headers.{name}",
                    f"X-Retry-Count must be an integer from 0 to {MAX_RETRY_COUNT}",
                )
    return priority, max_retries


def _personalization(body: dict[str, Any], raw_size: int | None) -> dict[str, Any] | None:
    value = object_field(body, "personalization", PERSONALIZATION_FIELDS)
    if not value:
        return None
    enabled = value.get("enabled", False)
    if not isinstance(enabled, bool):
        raise invalid("personalization.enabled", "enabled must be true or false")
    variables = object_field(
        {"personalization.variables": value.get("variables")},
        "personalization.variables",
        None,
        raw_size,
    )
    return {"enabled": enabled, "variables": variables}


def parse_send_request(
    body: Any,
    *,
    now: datetime,
    max_size: int,
    guess_type: Callable[[str], str] = guess_content_type,
    raw: bytes | None = None,
) -> SendRequest:
    """Check a decoded JSON body field by field; raises ApiError naming the first problem.

    ``raw``, the JSON text ``body`` was decoded from, lets byte checks stand in
    for walks of the document where they give the same answer.
    """
    if not isinstance(body, dict):
        raise ApiError("INVALID_REQUEST", "The body must be a JSON object")
    reject_unknown_fields(body, FIELDS)
    if raw is None or not plain_strings(raw):
        check_text(body)
    raw_size = None if raw is None else len(raw)
    for key in ("from", "to", "subject"):
        if body.get(key) is None or body.get(key) == []:
            raise missing(key)
    if body.get("text_body") is None and body.get("html_body") is None:
        raise missing("text_body", "text_body or html_body is required")

    sender_text = string_field(body, "from", 998)
    assert sender_text is not None
    sender = mailbox(sender_text, "from")
    to = mailboxes_field(body, "to")
    cc = mailboxes_field(body, "cc")
    bcc = mailboxes_field(body, "bcc")
    if len(to) + len(cc) + len(bcc) > MAX_RECIPIENTS:
        raise invalid("to", f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together")
    subject = string_field(body, "subject", MAX_SUBJECT) or ""
    if CONTROL_CHARS.search(subject):
        raise invalid("subject", "subject must not contain CR, LF or control characters")
    headers = _headers(body)
    priority, max_retries = _sending_options(headers)

    workspace_id = string_field(body, "workspace_id", 200)
    if workspace_id is not None and not WORKSPACE_ID.match(workspace_id):
        raise invalid("workspace_id", f"workspace_id must be {WORKSPACE_ID_RULE}")
    campaign_id = string_field(body, "campaign_id", 200)
    if campaign_id is not None and (not campaign_id or CONTROL_CHARS.search(campaign_id)):
        raise invalid("campaign_id", "campaign_id must be non-empty, without control characters")
    metadata = object_field(body, "metadata", None, raw_size)
    user_id = metadata.get("user_id")
    if not isinstance(user_id, str) or len(user_id) > 200 or CONTROL_CHARS.search(user_id):
        user_id = None

    draft = Draft(
        sender=sender,
        to=to,
        cc=cc,
        subject=subject,
        text_body=string_field(body, "text_body"),
        html_body=string_field(body, "html_body"),
        attachments=_attachments(body, max_size, guess_type),
        headers=headers,
    )
    return SendRequest(
        draft=draft,
        mail_from=sender.address,
        to=[m.address for m in to],
        cc=[m.address for m in cc],
        bcc=[m.address for m in bcc],
        workspace_id=workspace_id,
        campaign_id=campaign_id,
        user_id=user_id,
        metadata=metadata,
        personalization=_personalization(body, raw_size),
        send_at=_scheduling(body, now),
        priority=priority,
        max_retries=max_retries,
    )
