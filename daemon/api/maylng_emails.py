"""Maylng emails: ``POST /v1/emails/send``, ``GET /v1/emails``, ``/v1/emails/{id}[/status]``.

An email is a queued message: its Maylng ``id`` is the message's ``uuid`` (the
``msg-`` id serves ``/api``, where a scheduled email can be cancelled). A send
is translated into the body of ``POST /api/messages`` and checked by the same
code, so custom headers follow the same injection rules. Each email counts once
in the plan's hourly, daily and monthly email windows, taken in the same
transaction that stores it (past one: 429 ``Rate limit exceeded``).

``attachments`` is metadata only (``{"name": {...}}``), stored with the message
and returned. ``thread_id`` groups emails: the email whose id it is and every
email sent with it; a new one gets ``In-Reply-To``/``References`` from them.

Statuses map as :func:`daemon.core.accounts.email_status` says: processing is
queued, auth_error and cancelled are failed (``failure_reason`` tells which).
Bodies are read back from the stored MIME, so line ends come back as ``\\n``
and the final newline MIME adds is dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.api.auth import service_of
from daemon.api.fields import (
    check_text,
    invalid,
    mailboxes_field,
    object_field,
    parse_json,
    read_body,
)
from daemon.api.maylng_addresses import parse_time
from daemon.api.maylng_common import (
    RATE_LIMITED,
    Account,
    MaylngError,
    bad_request,
    iso,
    not_found,
    requires_account,
)
from daemon.api.messages import _new_message
from daemon.api.send_request import MAX_RECIPIENTS, MAX_SCHEDULE_AHEAD, parse_send_request
from daemon.config import relay_hostname
from daemon.core.accounts import effective_status, email_status, sending_windows
from daemon.core.compose import CONTROL_CHARS, ComposeError, compose, read_message
from daemon.core.ids import is_message_id, message_id
from daemon.service import MaintenanceMode, NotAccepting
from daemon.store import accounts as store
from daemon.store.tenancy import Bucket
from daemon.tenancy import QuotaExceeded

log = logging.getLogger("relayd.api")

SEND_FIELDS = frozenset(
    {
        "from_email_id",
        "to_recipients",
        "cc_recipients",
        "bcc_recipients",
        "subject",
        "text_content",
        "html_content",
        "attachments",
        "headers",
        "thread_id",
        "scheduled_at",
        "metadata",
    }
)
NO_CONTENT = "At least one of text_content or html_content must be provided"
NO_SENDER = "from email address not found or not active"
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_REFERENCES = 20


def _body_text(text: str | None) -> str | None:
    return text[:-1] if text is not None and text.endswith("\n") else text


def _attachments(row: Any) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for item in row.attachments or []:
        if "metadata" in item:
            shown[str(item.get("filename"))] = item["metadata"]
        else:  # a file sent through /api: its type and size
            shown[str(item.get("filename"))] = {
                "type": item.get("content_type"),
                "size": item.get("size"),
            }
    return shown


def status_view(row: Any) -> dict[str, Any]:
    """``GET /v1/emails/{id}/status``."""
    status, reason = email_status(row.status, row.error)
    return {
        "id": row.uuid,
        "status": status,
        "sent_at": iso(row.processed_at) if status in ("sent", "delivered") else None,
        "provider_message_id": row.provider_message_id,
        "failure_reason": reason,
    }


def email_view(row: Any, raw: bytes | None) -> dict[str, Any]:
    """An email as the reference shows it, plus its attachments and metadata."""
    text = html = None
    if raw is not None:
        try:
            view = read_message(raw)
            text, html = _body_text(view.text_body), _body_text(view.html_body)
        except Exception as exc:  # stored bytes may come from SMTP clients: never fail the view
            log.warning("cannot parse stored message %s: %s", row.id, exc)
    state = status_view(row)
    return {
        "id": row.uuid,
        "from_email_id": row.from_email_id,
        "to_recipients": list(row.to_addrs or []),
        "cc_recipients": list(row.cc_addrs or []),
        "bcc_recipients": list(row.bcc_addrs or []),
        "subject": row.subject,
        "text_content": text,
        "html_content": html,
        "thread_id": row.thread_id,
        "scheduled_at": iso(row.send_at),
        "sent_at": state["sent_at"],
        "status": state["status"],
        "provider_message_id": row.provider_message_id,
        "failure_reason": state["failure_reason"],
        "attachments": _attachments(row),
        "metadata": row.metadata or {},
        "created_at": iso(row.queued_at),
        "updated_at": iso(row.updated_at or row.queued_at),
    }


def _required(body: dict[str, Any]) -> None:
    for name in ("from_email_id", "to_recipients", "subject"):
        if body.get(name) is None or body.get(name) == []:
            raise bad_request(f"{name} is required")
    if not body.get("text_content") and not body.get("html_content"):
        raise MaylngError(400, NO_CONTENT)
    for name in ("from_email_id", "subject", "text_content", "html_content", "thread_id"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad_request(f"{name} must be a string")
    thread_id = body.get("thread_id")
    if thread_id is not None and (
        not thread_id or len(thread_id) > 200 or CONTROL_CHARS.search(thread_id)
    ):
        raise bad_request("thread_id must be 1-200 characters without control characters")


def _attachment_meta(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = object_field(body, "attachments", None)
    meta: list[dict[str, Any]] = []
    for name, value in items.items():
        if not name or CONTROL_CHARS.search(name):
            raise bad_request("attachment names must be non-empty, without control characters")
        if not isinstance(value, dict):
            raise bad_request(f"attachments.{name} must be an object (its metadata)")
        meta.append({"filename": name, "metadata": value})
    return meta


def _schedule(body: dict[str, Any], now: datetime) -> datetime | None:
    if body.get("scheduled_at") is None:
        return None
    when = parse_time(body["scheduled_at"], "scheduled_at")
    if when > now + MAX_SCHEDULE_AHEAD:
        raise bad_request("scheduled_at is more than a year ahead")
    return when


def _thread_headers(earlier: list[dict[str, Any]], given: dict[str, Any]) -> dict[str, str]:
    """In-Reply-To and References for a reply to ``earlier`` (unless the caller set them)."""
    ids: list[str] = []
    for headers in earlier:
        found = next((v for k, v in headers.items() if k.lower() == "message-id"), None)
        if isinstance(found, str) and found.strip():
            ids.append(found.strip())
    if not ids:
        return {}
    names = {name.lower() for name in given}
    extra: dict[str, str] = {}
    if "in-reply-to" not in names:
        extra["In-Reply-To"] = ids[-1]
    if "references" not in names:
        # The first message and the most recent ones, as RFC 5322 3.6.4 suggests trimming.
        chain = ids if len(ids) <= MAX_REFERENCES else [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
        extra["References"] = " ".join(chain)
    return extra


def _quota_buckets(account: Account, now: datetime) -> list[tuple[str, Bucket]]:
    return [
        (
            f"maylng:{window.name}",
            Bucket(
                f"maylng:mail:{account.workspace_id}:{window.name}",
                window.start,
                window.end + timedelta(days=1),
                limit,
            ),
        )
        for window, limit in sending_windows(account.limits, now)
    ]


def _rate_limited(exc: QuotaExceeded, account: Account, now: datetime) -> MaylngError:
    reset = exc.reset_at
    for window, _ in sending_windows(account.limits, now):
        if exc.scope == f"maylng:{window.name}":
            reset = window.end
    return MaylngError(
        429,
        RATE_LIMITED,
        {"Retry-After": str(max(1, int((reset - now).total_seconds())))},
    )


@requires_account
async def send_email(request: Request, account: Account) -> Response:
    """POST /v1/emails/send: 201 with the email, queued or scheduled."""
    service = service_of(request)
    if not service.accepting:
        raise NotAccepting()
    if service.maintenance.enabled:
        raise MaintenanceMode(service.maintenance)
    max_size = service.config.smtp.max_size
    raw_body = await read_body(request, 2 * max_size + 1024 * 1024)
    body = parse_json(raw_body) if raw_body.strip() else {}
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    unknown = sorted(set(body) - SEND_FIELDS)
    if unknown:
        raise bad_request(f"unknown field(s): {', '.join(unknown)}")
    check_text(body)
    _required(body)
    to, cc, bcc = (
        [m.header() for m in mailboxes_field(body, name)]
        for name in ("to_recipients", "cc_recipients", "bcc_recipients")
    )
    if len(to) + len(cc) + len(bcc) > MAX_RECIPIENTS:
        raise bad_request(f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together")
    now = service.clock()
    send_at = _schedule(body, now)
    attachments = _attachment_meta(body)
    metadata = object_field(body, "metadata", None)
    headers = object_field(body, "headers", None)
    thread_id: str | None = body.get("thread_id")
    address_key = str(body["from_email_id"])
    workspace_id = account.workspace_id

    def load(conn: Any) -> tuple[Any, list[dict[str, Any]]]:
        try:
            wanted = str(uuid.UUID(address_key))
        except ValueError:
            return None, []
        address = store.get_address(conn, workspace_id, wanted)
        earlier = store.thread_message_ids(conn, workspace_id, thread_id) if thread_id else []
        return address, list(earlier)

    address, earlier = await service.reader.run(load)
    if address is None or effective_status(address.status, address.expires_at, now) != "active":
        raise MaylngError(404, NO_SENDER)
    document: dict[str, Any] = {
        "from": address.email,
        "to": to,
        "cc": cc,
        "bcc": bcc,
        "subject": body["subject"],
        "text_body": body.get("text_content") or None,
        "html_body": body.get("html_content") or None,
        "headers": {**headers, **_thread_headers(earlier, headers)},
        "metadata": metadata,
    }
    if send_at is not None:
        document["scheduling"] = {"send_at": send_at.isoformat()}
    send = parse_send_request(document, now=now, max_size=max_size)
    queue_id = message_id(int(now.timestamp() * 1000))
    try:
        raw = compose(
            send.draft, queue_id=queue_id, hostname=relay_hostname(service.config), date=now
        )
    except ComposeError as exc:
        raise invalid(exc.field, str(exc)) from None
    if len(raw) > max_size:
        raise MaylngError(413, f"the message is {len(raw)} bytes; the limit is {max_size}")
    message = dataclasses.replace(
        _new_message(send, raw, queue_id, workspace_id, now),
        attachments=attachments,
        from_email_id=address.id,
        thread_id=thread_id,
    )
    try:
        await service.enqueue(message, None, _quota_buckets(account, now))
    except QuotaExceeded as exc:
        raise _rate_limited(exc, account, now) from None
    row = await service.reader.run(lambda c: store.get_email_row(c, workspace_id, message.uuid))
    view = email_view(row, None)
    view["text_content"] = body.get("text_content")
    view["html_content"] = body.get("html_content")
    return JSONResponse(view, status_code=201)


def _page_number(request: Request, name: str, default: int, low: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    # ASCII digits only ("²".isdigit() is true, int("²") fails), and few enough of them
    # for a database integer.
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or int(text) < low:
        raise bad_request(f"{name} must be an integer from {low} to 999999999999")
    return int(text)


@requires_account
async def list_emails(request: Request, account: Account) -> Response:
    """GET /v1/emails?limit&offset: newest first; limit defaults to 50, at most 100."""
    service = service_of(request)
    limit = min(_page_number(request, "limit", DEFAULT_LIMIT, 1), MAX_LIMIT)
    offset = _page_number(request, "offset", 0, 0)
    pairs = await service.reader.run(
        lambda c: store.list_emails(c, account.workspace_id, limit, offset)
    )
    emails = await asyncio.to_thread(lambda: [email_view(row, raw) for row, raw in pairs])
    return JSONResponse({"emails": emails, "pagination": {"limit": limit, "offset": offset}})


def _email_id(request: Request) -> str:
    value: str = request.path_params["email_id"]
    if is_message_id(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise not_found("Email") from None


@requires_account
async def get_email(request: Request, account: Account) -> Response:
    """GET /v1/emails/{id}: by the Maylng id (or the msg- id)."""
    service = service_of(request)
    wanted = _email_id(request)
    row, raw = await service.reader.run(lambda c: store.get_email(c, account.workspace_id, wanted))
    if row is None:
        raise not_found("Email")
    return JSONResponse(await asyncio.to_thread(email_view, row, raw))


@requires_account
async def get_email_status(request: Request, account: Account) -> Response:
    """GET /v1/emails/{id}/status."""
    service = service_of(request)
    wanted = _email_id(request)
    row = await service.reader.run(lambda c: store.get_email_row(c, account.workspace_id, wanted))
    if row is None:
        raise not_found("Email")
    return JSONResponse(status_view(row))


def routes() -> list[Route]:
    """The email routes, relative to /v1."""
    return [
        Route("/emails/send", send_email, methods=["POST"]),
        Route("/emails", list_emails, methods=["GET"]),
        Route("/emails/{email_id:id}", get_email, methods=["GET"]),
        Route("/emails/{email_id:id}/status", get_email_status, methods=["GET"]),
    ]
