"""The message model shared by ingest, the queue and delivery (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

STATUSES = (
    "queued",
    "scheduled",
    "processing",
    "sent",
    "delivered",
    "failed",
    "auth_error",
    "cancelled",
)
PENDING_STATUSES = ("queued", "scheduled", "processing")
CANCELLABLE_STATUSES = ("queued", "scheduled")
RETRYABLE_STATUSES = ("failed", "auth_error")

PRIORITIES = {"high": 0, "normal": 1, "low": 2}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}
MAX_RETRY_COUNT = 100  # the largest X-Retry-Count (a message's own retry limit)


def parse_retry_count(text: str) -> int | None:
    """An X-Retry-Count value, 0 to MAX_RETRY_COUNT in ASCII digits; None for anything else
    (``str.isdigit`` also takes "²", which ``int`` refuses, and "٣", which it reads as 3)."""
    text = text.strip()
    if not text or len(text) > 3 or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_RETRY_COUNT else None


@dataclass(frozen=True)
class Recipient:
    """An envelope recipient with its RFC 3461 NOTIFY and ORCPT parameters."""

    address: str
    notify: str | None = None
    orcpt: str | None = None


@dataclass
class NewMessage:
    """Everything the queue stores for one accepted message."""

    id: str
    uuid: str
    mail_from: str
    recipients: list[Recipient]
    raw: bytes
    queued_at: datetime
    next_attempt_at: datetime
    workspace_id: str = "default"
    campaign_id: str | None = None
    user_id: str | None = None
    source: str = "smtp"
    from_header: str = ""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    subject: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    priority: int = 1
    status: str = "queued"
    max_retries: int | None = None
    send_at: datetime | None = None
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    personalization: dict[str, Any] | None = None
    from_email_id: str | None = None
    thread_id: str | None = None


@dataclass(frozen=True)
class ClaimedMessage:
    """A message a worker holds a lease on, with what delivery needs."""

    id: str
    mail_from: str
    recipients: list[Recipient]
    raw: bytes
    workspace_id: str
    campaign_id: str | None
    retry_count: int
    max_retries: int | None
    dsn_ret: str | None
    dsn_envid: str | None
    lease_owner: str
    queued_at: datetime
    # The envelope sender providers see (VERP, issue 7); bounces still go to mail_from.
    return_path: str | None = None
    send_at: datetime | None = None
    dsn_delayed: bool = False  # its one delay DSN (NOTIFY=DELAY) is already queued


@dataclass(frozen=True)
class Attempt:
    """One recorded try: which provider, what happened, what it replied."""

    provider: str
    outcome: str  # sent | temporary | permanent | auth_error
    attempted_at: datetime
    code: int | None = None
    reply: str = ""
    duration_ms: int = 0


@dataclass(frozen=True)
class Outcome:
    """The new state of a claimed message after its delivery attempt(s)."""

    message_id: str
    lease_owner: str
    status: str
    processed_at: datetime
    retry_count: int
    next_attempt_at: datetime | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    error: str | None = None
    attempts: tuple[Attempt, ...] = ()
    recipient_status: tuple[tuple[str, str, str | None], ...] = ()  # (address, status, error)
    dsn_delayed: bool = False  # the message's delay DSN is queued with this outcome
