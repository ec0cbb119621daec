"""How stored messages look in API responses (the shapes of reference 2.1)."""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

from daemon.api.errors import iso_utc
from daemon.core.compose import MessageView
from daemon.core.message import PRIORITY_NAMES

# Statuses still waiting for a delivery attempt: their next_attempt_at is an estimate.
_WAITING = ("queued", "scheduled")


def _sender(row: Any) -> str:
    if row.mail_from:
        return str(row.mail_from)
    # A null reverse-path (bounces): show the header's address instead of nothing.
    return parseaddr(row.from_header or "")[1]


def message_summary(row: Any) -> dict[str, Any]:
    """One entry of ``GET /api/messages``."""
    return {
        "id": row.id,
        "from": _sender(row),
        "to": list(row.to_addrs or []),
        "cc": list(row.cc_addrs or []),
        "bcc": list(row.bcc_addrs or []),
        "subject": row.subject,
        "status": row.status,
        "workspace_id": row.workspace_id,
        "campaign_id": row.campaign_id,
        "queued_at": iso_utc(row.queued_at),
        "processed_at": iso_utc(row.processed_at),
        "error": row.error,
        "retry_count": row.retry_count,
        "metadata": row.metadata or {},
        "priority": PRIORITY_NAMES.get(row.priority, "normal"),
        "estimated_send_time": iso_utc(row.next_attempt_at) if row.status in _WAITING else None,
    }


def attempt_view(row: Any) -> dict[str, Any]:
    """One delivery attempt."""
    return {
        "attempted_at": iso_utc(row.attempted_at),
        "provider": row.provider,
        "outcome": row.outcome,
        "code": row.code,
        "reply": row.reply,
        "duration_ms": row.duration_ms,
    }


def recipient_view(row: Any) -> dict[str, Any]:
    """One envelope recipient and how its delivery went."""
    return {"address": row.address, "status": row.status, "error": row.error}


def message_detail(
    row: Any, view: MessageView, recipients: list[Any], attempts: list[Any]
) -> dict[str, Any]:
    """``GET /api/messages/{id}``: the summary plus bodies, headers, attempts, recipients."""
    detail = message_summary(row)
    detail.update(
        {
            "html_body": view.html_body,
            "text_body": view.text_body,
            "headers": view.headers or dict(row.headers or {}),
            "attachments": view.attachments or list(row.attachments or []),
            "user_id": row.user_id,
            "provider": row.provider,
            "provider_message_id": row.provider_message_id,
            "source": row.source,
            "size": row.size,
            "send_at": iso_utc(row.send_at),
            "attempts": [attempt_view(a) for a in attempts],
            "recipients": [recipient_view(r) for r in recipients],
        }
    )
    return detail
