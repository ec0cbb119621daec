"""Applying one engagement event in one transaction: the event row, the counters, the
recipient's status, the message's status and the outbound webhook deliveries.

Every source (tracking pixel and links, unsubscribe, Mandrill, DSNs, provider
refusals) ends here, so an event has the same effect whichever way it came.
An event whose dedupe key was seen before changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from daemon.core.bounces import over_threshold
from daemon.core.ids import ulid
from daemon.store import audience, counters, deliveries
from daemon.store import engagement as tables

# Our event type -> the counters.record_event event it feeds.
_COUNTER_EVENT = {
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
    "bounced": "bounced",
    "soft_bounced": "bounced",
    "rejected": "bounced",
}
_BOUNCE_TYPE = {"bounced": "hard", "soft_bounced": "soft", "rejected": "reject"}
_SUPPRESSING = ("unsubscribed", "complained", "bounced")
_ONCE_PER_MESSAGE = ("opened", "clicked", "unsubscribed", "complained")


@dataclass(frozen=True)
class EngagementEvent:
    """Something a recipient (or their mail server) did with a message."""

    type: str
    workspace_id: str
    email: str | None
    at: datetime
    source: str
    message_id: str | None = None
    campaign_id: str | None = None
    url: str | None = None
    reason: str | None = None
    dedupe_key: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    message_status: str | None = None
    count_campaign: bool = True  # False when delivery already counted it (provider refusals)


@dataclass(frozen=True)
class BounceRules:
    soft_threshold: int
    soft_window_days: int


@dataclass(frozen=True)
class Applied:
    """What applying did: new (not a replay), first of its kind for the message and recipient."""

    new: bool
    unique: bool = False
    status: str | None = None  # the recipient's status afterwards, when it changed


def _ensure_recipient(conn: Connection, workspace_id: str, email: str, at: datetime) -> None:
    """Suppression must hold for later sends, so an unknown address gets a row."""
    if audience.get_recipient(conn, workspace_id, email) is None:
        with contextlib.suppress(audience.RecipientExists):  # another daemon added it
            audience.insert_recipient(
                conn,
                {
                    "workspace_id": workspace_id,
                    "email": email,
                    "status": "ACTIVE",
                    "metadata": {"source": "engagement"},
                    "created_at": at,
                    "updated_at": at,
                },
            )


def _soft_threshold(
    conn: Connection, ev: EngagementEvent, email: str, rules: BounceRules
) -> str | None:
    since = ev.at - timedelta(days=rules.soft_window_days)
    count = tables.count_events(conn, ev.workspace_id, email, "soft_bounced", since)
    if not over_threshold(count, rules.soft_threshold):
        return None
    row = audience.get_recipient(conn, ev.workspace_id, email)
    if row is not None and row.status != "ACTIVE":
        return None
    _ensure_recipient(conn, ev.workspace_id, email, ev.at)
    reason = f"{count} soft bounces within {rules.soft_window_days} days"
    audience.update_recipient(
        conn,
        ev.workspace_id,
        email,
        {
            "status": "BOUNCED",
            "bounce_type": "soft",
            "suppression_reason": reason,
            "suppressed_at": ev.at,
            "updated_at": ev.at,
        },
    )
    return "BOUNCED"


def apply_event(conn: Connection, ev: EngagementEvent, rules: BounceRules) -> Applied:
    """Apply one event (see the module doc); replays return ``Applied(new=False)``."""
    email = audience.normalize(ev.email) if ev.email else None
    unique = True
    if ev.message_id is not None and ev.type in _ONCE_PER_MESSAGE:
        unique = not tables.seen_before(conn, ev.message_id, email, ev.type)
    inserted = tables.insert_event(
        conn,
        {
            "workspace_id": ev.workspace_id,
            "message_id": ev.message_id,
            "recipient": email,
            "campaign_id": ev.campaign_id,
            "type": ev.type,
            "source": ev.source,
            "url": ev.url,
            "reason": ev.reason,
            "data": ev.data,
            "occurred_at": ev.at,
            "dedupe_key": ev.dedupe_key,
        },
    )
    if not inserted:
        return Applied(new=False)
    status: str | None = None
    counter_event = _COUNTER_EVENT.get(ev.type)
    if email is not None and counter_event is not None:
        hard = ev.type in _SUPPRESSING
        if hard:
            _ensure_recipient(conn, ev.workspace_id, email, ev.at)
        counts_campaign = ev.count_campaign and ev.type != "soft_bounced"
        counters.record_event(
            conn,
            workspace_id=ev.workspace_id,
            email=email,
            event=counter_event,
            at=ev.at,
            campaign_id=ev.campaign_id if counts_campaign else None,
            unique=unique,
            bounce_type=_BOUNCE_TYPE.get(ev.type, "hard"),
            reason=ev.reason,
        )
        if hard:
            status = {"unsubscribed": "UNSUBSCRIBED", "complained": "COMPLAINED"}.get(
                ev.type, "BOUNCED"
            )
        elif ev.type == "soft_bounced":
            status = _soft_threshold(conn, ev, email, rules)
    if ev.message_id is not None and email is not None and ev.type in ("bounced", "rejected"):
        tables.set_recipient_outcome(conn, ev.message_id, email, "failed", ev.reason)
    # A message fails only when none of its recipients is still delivered.
    if (
        ev.message_id is not None
        and ev.message_status is not None
        and (ev.message_status != "failed" or not tables.delivered_recipients(conn, ev.message_id))
    ):
        tables.set_message_status(conn, ev.message_id, ev.message_status, ev.at, ev.reason)
    _fan_out(conn, ev, email)
    return Applied(new=True, unique=unique, status=status)


def event_body(ev: EngagementEvent, email: str | None, event_id: str) -> dict[str, Any]:
    """The JSON an outbound webhook carries for one event."""
    data: dict[str, Any] = {
        "message_id": ev.message_id,
        "email": email,
        "campaign_id": ev.campaign_id,
        "source": ev.source,
    }
    if ev.url is not None:
        data["url"] = ev.url
    if ev.reason is not None:
        data["reason"] = ev.reason
    data.update({k: v for k, v in ev.data.items() if k in ("bounce_type", "status", "user_agent")})
    return {
        "id": event_id,
        "type": ev.type,
        "workspace_id": ev.workspace_id,
        "created_at": ev.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": data,
    }


def delivery_row(
    webhook_id: str, workspace_id: str, event_type: str, body: str, now: datetime
) -> dict[str, Any]:
    return {
        "id": "dlv_" + ulid(int(now.timestamp() * 1000)).lower(),
        "webhook_id": webhook_id,
        "workspace_id": workspace_id,
        "event_type": event_type,
        "body": body,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def _fan_out(conn: Connection, ev: EngagementEvent, email: str | None) -> None:
    hooks = deliveries.subscribers(conn, ev.workspace_id, ev.type)
    if not hooks:
        return
    event_id = "evt_" + secrets.token_hex(12)
    body = json.dumps(event_body(ev, email, event_id), separators=(",", ":"), sort_keys=True)
    deliveries.enqueue(
        conn, [delivery_row(h.id, ev.workspace_id, ev.type, body, ev.at) for h in hooks]
    )
