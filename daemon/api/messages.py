"""The message endpoints of reference 2.1: send, list, show, cancel, retry."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api import idempotency
from daemon.api.auth import Principal, requires_auth, service_of
from daemon.api.errors import ApiError, iso_utc
from daemon.api.fields import invalid, parse_json, read_body
from daemon.api.pagination import Page
from daemon.api.responses import Json, by_method, ok
from daemon.api.send_request import MAX_SUBJECT, SendRequest, parse_send_request
from daemon.api.views import message_detail, message_summary
from daemon.config import relay_hostname
from daemon.core.compose import (
    CONTROL_CHARS,
    ComposeError,
    MessageView,
    compose_message,
    read_message,
    top_headers,
)
from daemon.core.ids import WORKSPACE_ID, is_message_id, message_id, uuid4
from daemon.core.message import (
    CANCELLABLE_STATUSES,
    RETRYABLE_STATUSES,
    STATUSES,
    NewMessage,
    Recipient,
)
from daemon.core.personalize import PersonalizationError, personalize
from daemon.service import MaintenanceMode, NotAccepting, RelayService
from daemon.store import queue
from daemon.tenancy import IdempotentReplay, QuotaExceeded

log = logging.getLogger("relayd.api")

# Parsing and composing a large message takes milliseconds: keep it off the event loop.
_OFFLOAD_BYTES = 256 * 1024


# queue.max_depth: the pending count is a COUNT over the queue. A count is trusted
# for DEPTH_CACHE_SECONDS, plus the sends queued here since, while that stays
# below NEAR_FULL of the limit; nearer the limit every send counts again.
DEPTH_CACHE_SECONDS = 1.0
NEAR_FULL = 0.9


@dataclass
class _Depth:
    counted_at: float
    pending: int


_depths: weakref.WeakKeyDictionary[RelayService, _Depth] = weakref.WeakKeyDictionary()


async def _queue_full(service: RelayService, max_depth: int) -> bool:
    """Whether the queue holds ``max_depth`` pending messages (see DEPTH_CACHE_SECONDS)."""
    known = _depths.get(service)
    if (
        known is not None
        and time.monotonic() - known.counted_at < DEPTH_CACHE_SECONDS
        and known.pending < max_depth * NEAR_FULL
    ):
        return False
    pending = await service.reader.run(queue.pending_depth)
    _depths[service] = _Depth(time.monotonic(), pending)
    return pending >= max_depth


def _queued_one(service: RelayService) -> None:
    known = _depths.get(service)
    if known is not None:
        known.pending += 1


def _new_message(
    send: SendRequest,
    raw: bytes,
    queue_id: str,
    workspace_id: str,
    now: datetime,
    headers: dict[str, str] | None = None,
) -> NewMessage:
    """The queue row of a composed send; ``headers`` from compose_message saves a re-parse."""
    scheduled = send.send_at is not None and send.send_at > now
    return NewMessage(
        id=queue_id,
        uuid=uuid4(),
        mail_from=send.mail_from,
        recipients=[Recipient(address) for address in send.recipients],
        raw=raw,
        queued_at=now,
        next_attempt_at=send.send_at if scheduled and send.send_at else now,
        workspace_id=workspace_id,
        campaign_id=send.campaign_id,
        user_id=send.user_id,
        source="api",
        from_header=send.draft.sender.header()[:998],
        to=send.to,
        cc=send.cc,
        bcc=send.bcc,
        subject=send.draft.subject,
        headers=headers if headers is not None else top_headers(raw),
        attachments=[
            {"filename": a.filename, "content_type": a.content_type, "size": len(a.data)}
            for a in send.draft.attachments
        ],
        metadata=send.metadata,
        priority=send.priority,
        status="scheduled" if scheduled else "queued",
        max_retries=send.max_retries,
        send_at=send.send_at,
        personalization=send.personalization,
    )


@requires_auth
async def send_message(request: Request, principal: Principal) -> Response:
    """POST /api/messages: compose, store durably, answer 202 with the queue id."""
    service = service_of(request)
    if not service.accepting:
        raise NotAccepting()
    if service.maintenance.enabled:
        raise MaintenanceMode(service.maintenance)
    max_size = service.config.smtp.max_size
    # JSON and base64 inflate the payload; the composed size is checked exactly below.
    body = await read_body(request, 2 * max_size + 1024 * 1024)
    now = service.clock()
    if len(body) > _OFFLOAD_BYTES:
        document = await asyncio.to_thread(parse_json, body)
    else:
        document = parse_json(body)
    send = parse_send_request(document, now=now, max_size=max_size, raw=body)
    workspace_id = principal.workspace_for(send.workspace_id)
    if principal.user_id is not None:
        bind_user(send, principal.user_id)
    idempotency_key = idempotency.key_of(request)
    digest = idempotency.request_hash(document) if idempotency_key else ""
    if idempotency_key:
        earlier = await idempotency.earlier_use(request, workspace_id, idempotency_key)
        if earlier is not None:
            return idempotency.replay(earlier, digest)
    personalize_send(send, document)
    max_depth = service.config.queue.max_depth
    if max_depth and await _queue_full(service, max_depth):
        raise ApiError("QUEUE_FULL", f"the queue holds {max_depth} pending messages; try later")
    queue_id = message_id(int(now.timestamp() * 1000))
    hostname = relay_hostname(service.config)
    try:
        if len(body) > _OFFLOAD_BYTES:
            composed = await asyncio.to_thread(
                compose_message, send.draft, queue_id=queue_id, hostname=hostname, date=now
            )
        else:
            composed = compose_message(send.draft, queue_id=queue_id, hostname=hostname, date=now)
    except ComposeError as exc:
        raise invalid(exc.field, str(exc)) from None
    raw = composed.raw
    if len(raw) > max_size:
        raise ApiError(
            "MESSAGE_TOO_LARGE",
            f"the message is {len(raw)} bytes; the limit is {max_size}",
            {"size": len(raw), "max_size": max_size},
        )
    message = _new_message(send, raw, queue_id, workspace_id, now, composed.headers)
    data = {
        "message_id": message.id,
        "status": message.status,
        "queued_at": iso_utc(message.queued_at),
        "estimated_send_time": iso_utc(message.next_attempt_at),
    }
    claim = None
    if idempotency_key:
        response = {"success": True, "data": data}
        claim = idempotency.claim(workspace_id, idempotency_key, digest, response, 202)
    try:
        await service.enqueue(message, claim)
    except IdempotentReplay as exc:  # a concurrent request with the same key won
        return idempotency.replay(exc.earlier, digest)
    except QuotaExceeded as exc:
        raise quota_error(exc, workspace_id, now) from None
    if max_depth:
        _queued_one(service)
    if not service.providers_state.can_deliver(workspace_id):
        # Queued all the same: it goes out when a provider is back (issue 5).
        return Json(
            {"success": True, "data": data, "warnings": ["ALL_PROVIDERS_DOWN"]}, status_code=202
        )
    return ok(data, status_code=202)


def bind_user(send: SendRequest, user_id: str) -> None:
    """A per-user key (or JWT) sends as its user, and only as that user.

    ``metadata.user_id`` naming another user is refused, as naming another
    workspace is (403, the reference's INSUFFICIENT_PERMISSIONS: the key's
    workspace is right, its rights stop at its user); absent, it is filled in,
    so the stored message, its user quota and its listing all name the key's user.
    """
    named = send.metadata.get("user_id")
    if named is not None and named != user_id:
        shown = named[:200] if isinstance(named, str) else named
        raise ApiError(
            "INSUFFICIENT_PERMISSIONS",
            f"this credential sends as user {user_id!r}; metadata.user_id names {shown!r}",
            {"field": "metadata.user_id", "user_id": user_id},
        )
    send.user_id = user_id
    send.metadata = {**send.metadata, "user_id": user_id}


def quota_error(exc: QuotaExceeded, workspace_id: str, now: datetime) -> ApiError:
    """429 QUOTA_EXCEEDED with the details block of reference 6.1."""
    scope = {"global": "the relay", "workspace": f"workspace {workspace_id}"}
    return ApiError(
        "QUOTA_EXCEEDED",
        f"Daily quota exceeded for {scope.get(exc.scope, 'this user')}",
        {
            "limit": exc.limit,
            "used": exc.used,
            "reset_at": iso_utc(exc.reset_at),
            "scope": exc.scope,
        },
        {"Retry-After": str(max(1, math.ceil((exc.reset_at - now).total_seconds())))},
    )


def personalize_send(send: SendRequest, document: dict[str, Any]) -> None:
    """Render personalization.variables into the subject and bodies (unless enabled is false)."""
    options = document.get("personalization") or {}
    variables = options.get("variables")
    if not variables or options.get("enabled") is False:
        return
    draft = send.draft
    try:
        subject, text_body, html_body = personalize(
            draft.subject, draft.text_body, draft.html_body, variables
        )
    except PersonalizationError as exc:
        details: dict[str, Any] = {"field": exc.field}
        if exc.variable is not None:
            details["variable"] = exc.variable
        raise ApiError("INVALID_REQUEST", str(exc), details) from None
    if CONTROL_CHARS.search(subject) or len(subject) > MAX_SUBJECT:
        raise invalid("subject", "the personalized subject has CR, LF or is too long")
    send.draft = dataclasses.replace(
        draft, subject=subject, text_body=text_body, html_body=html_body
    )


def _query_text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > 512 or any(ord(c) < 32 for c in value):
        raise ApiError("INVALID_REQUEST", f"{name} is not a valid filter", {"parameter": name})
    return value


def _query_time(request: Request, name: str, whole_day: bool = False) -> datetime | None:
    """An ISO 8601 query time in UTC; ``whole_day``: a bare date means its last instant."""
    value = _query_text(request, name)
    if value is None:
        return None
    for candidate in (value, value.replace(" ", "+")):  # a '+' offset arrives as a space
        try:
            when = datetime.fromisoformat(candidate)
            if whole_day and len(candidate) == 10:  # YYYY-MM-DD: up to the end of that day
                when += timedelta(days=1, microseconds=-1)
            return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        except (ValueError, OverflowError):
            continue
    raise ApiError("INVALID_REQUEST", f"{name} must be an ISO 8601 date", {"parameter": name})


def list_filter(request: Request, principal: Principal) -> queue.ListFilter:
    """The filters of GET /api/messages, confined to the caller's workspace."""
    status = _query_text(request, "status")
    if status is not None and status not in STATUSES:
        raise ApiError(
            "INVALID_REQUEST",
            f"status must be one of {', '.join(STATUSES)}",
            {"parameter": "status"},
        )
    workspace_id = _query_text(request, "workspace_id")
    if workspace_id is not None:
        if not WORKSPACE_ID.match(workspace_id):
            raise ApiError(
                "INVALID_REQUEST", "workspace_id is not valid", {"parameter": "workspace_id"}
            )
        principal.check_workspace(workspace_id)
    return queue.ListFilter(
        status=status,
        workspace_id=workspace_id or principal.workspace_id,
        mail_from=_query_text(request, "from"),
        to=_query_text(request, "to"),
        date_from=_query_time(request, "date_from"),
        date_to=_query_time(request, "date_to", whole_day=True),
    )


@requires_auth
async def list_messages(request: Request, principal: Principal) -> Response:
    """GET /api/messages: a page of messages, newest first, with 6.4 pagination headers."""
    service = service_of(request)
    page = Page.from_query(request.query_params)
    filters = list_filter(request, principal)
    rows, total = await service.reader.run(
        lambda c: queue.list_messages(c, filters, page.limit, page.offset)
    )
    data = {"messages": [message_summary(r) for r in rows], "pagination": page.body(total)}
    return ok(data, headers=page.headers(request, total))


def _message_id(request: Request) -> str:
    value: str = request.path_params["message_id"]
    if not is_message_id(value):
        raise ApiError("MESSAGE_NOT_FOUND", f"no message {value[:64]!r}", {"id": value[:64]})
    return value


def _load(conn: Connection, queue_id: str) -> tuple[Any, bytes | None, list[Any], list[Any]]:
    row = queue.get_message(conn, queue_id)
    if row is None:
        return None, None, [], []
    return (
        row,
        queue.get_raw(conn, queue_id),
        queue.get_recipients(conn, queue_id),
        queue.get_attempts(conn, queue_id),
    )


def _view(queue_id: str, raw: bytes | None) -> MessageView:
    if raw is None:
        return MessageView()
    try:
        return read_message(raw)
    except Exception as exc:  # stored bytes come from anyone; never let them break the view
        log.warning("cannot parse stored message %s: %s", queue_id, exc)
        return MessageView()


@requires_auth
async def get_message(request: Request, principal: Principal) -> Response:
    """GET /api/messages/{id}: the message, its bodies as stored, attempts and recipients."""
    service = service_of(request)
    queue_id = _message_id(request)
    row, raw, recipients, attempts = await service.reader.run(lambda c: _load(c, queue_id))
    if row is None or (
        principal.workspace_id is not None and row.workspace_id != principal.workspace_id
    ):
        raise ApiError("MESSAGE_NOT_FOUND", f"no message {queue_id}", {"id": queue_id})
    if raw is not None and len(raw) > _OFFLOAD_BYTES:
        view = await asyncio.to_thread(_view, queue_id, raw)
    else:
        view = _view(queue_id, raw)
    data = message_detail(row, view, recipients, attempts)
    return ok(data)


def _invalid_state(
    queue_id: str, status: str, action: str, allowed: tuple[str, ...], also: str = ""
) -> ApiError:
    return ApiError(
        "INVALID_STATE",
        f"Message {queue_id} is {status}; only {' or '.join(allowed)} messages{also}"
        f" can be {action}",
        {"id": queue_id, "status": status, "allowed_statuses": list(allowed)},
    )


def _all_suppressed(queue_id: str, exc: queue.AllSuppressed) -> ApiError:
    """409: a retry would deliver to nobody, and why, recipient by recipient."""
    why = "; ".join(f"{address}: {reason}" for address, reason in exc.suppressed)[:1000]
    return ApiError(
        "INVALID_STATE",
        f"Message {queue_id} cannot be retried: every recipient is suppressed ({why}); "
        "set a recipient's status back to ACTIVE (PUT /api/recipients/{email}) to send to it",
        {
            "id": queue_id,
            "status": exc.status,
            "suppressed": [{"address": a, "reason": r} for a, r in exc.suppressed[:100]],
        },
    )


@requires_auth
async def cancel_message(request: Request, principal: Principal) -> Response:
    """DELETE /api/messages/{id}: cancel a queued or scheduled message."""
    service = service_of(request)
    queue_id = _message_id(request)
    try:
        found = await service.cancel(queue_id, principal.workspace_id)
    except queue.InvalidState as exc:
        raise _invalid_state(queue_id, exc.status, "cancelled", CANCELLABLE_STATUSES) from None
    if not found:
        raise ApiError("MESSAGE_NOT_FOUND", f"no message {queue_id}", {"id": queue_id})
    return ok(message="Message cancelled successfully")


@requires_auth
async def retry_message(request: Request, principal: Principal) -> Response:
    """PUT /api/messages/{id}/retry: requeue a failed or auth_error message now, or a
    sent one for the recipients that did not get it."""
    service = service_of(request)
    queue_id = _message_id(request)
    try:
        result = await service.retry(queue_id, principal.workspace_id)
    except queue.AllSuppressed as exc:
        raise _all_suppressed(queue_id, exc) from None
    except queue.InvalidState as exc:
        also = " (or sent ones with recipients that did not get them)"
        raise _invalid_state(queue_id, exc.status, "retried", RETRYABLE_STATUSES, also) from None
    if result is None:
        raise ApiError("MESSAGE_NOT_FOUND", f"no message {queue_id}", {"id": queue_id})
    return ok(result)


def routes() -> list[Route]:
    """The message routes, relative to the mount point (/api or /v1)."""
    return [
        Route(
            "/messages", by_method(GET=list_messages, POST=send_message), methods=["GET", "POST"]
        ),
        Route(
            "/messages/{message_id:id}",
            by_method(GET=get_message, DELETE=cancel_message),
            methods=["GET", "DELETE"],
        ),
        Route("/messages/{message_id:id}/retry", retry_message, methods=["PUT"]),
    ]
