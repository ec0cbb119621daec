"""Mandrill-compatible webhook events: the signature, and what each event means here.

Pure. Mandrill signs a webhook as base64(HMAC-SHA1(key, url + each POST
parameter's key and value, sorted by key)). Each event maps to one
engagement event of ours (see ``EVENT_MAP``) and a message status change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Mandrill event -> (our event type, message status it implies or None).
EVENT_MAP: dict[str, tuple[str, str | None]] = {
    "send": ("delivered", "delivered"),
    "deferral": ("soft_bounced", None),
    "soft_bounce": ("soft_bounced", None),
    "hard_bounce": ("bounced", "failed"),
    "bounce": ("bounced", "failed"),
    "open": ("opened", None),
    "click": ("clicked", None),
    "spam": ("complained", None),
    "unsub": ("unsubscribed", None),
    "reject": ("rejected", "failed"),
}


def signature(key: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """The X-Mandrill-Signature of a form post to ``url`` with ``params``."""
    data = url + "".join(k + v for k, v in sorted(params, key=lambda kv: kv[0]))
    digest = hmac.new(key.encode(), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(key: str, url: str, params: Sequence[tuple[str, str]], header: str | None) -> bool:
    """Constant-time check of the signature header; a missing header never verifies."""
    if not header:
        return False
    expected = signature(key, url, params)
    return hmac.compare_digest(expected.encode(), header.strip().encode("utf-8", "replace"))


@dataclass(frozen=True)
class MandrillEvent:
    """One event of a batch, read defensively."""

    event: str
    message_id: str
    email: str
    at: datetime
    url: str | None = None
    reason: str | None = None
    campaign_id: str | None = None
    workspace_id: str | None = None
    bounce_status: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dedupe_key(self) -> str:
        """Same event replayed, same key: a canonical hash of the whole event."""
        canonical = json.dumps(self.raw, sort_keys=True, separators=(",", ":"), default=str)
        return "mandrill:" + hashlib.sha256(canonical.encode()).hexdigest()


class BadEvent(ValueError):
    """An event that cannot be read; the message names what is wrong."""


def _text(value: Any, limit: int = 1000) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text[:limit] if text else None


def _time(value: Any, fallback: datetime) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 2**33:
        return datetime.fromtimestamp(float(value), UTC)
    return fallback


def read_event(item: Any, now: datetime) -> MandrillEvent:
    """Read one element of ``mandrill_events``; BadEvent when it is not an event we know."""
    if not isinstance(item, dict):
        raise BadEvent("each event must be an object")
    event = item.get("event")
    if event not in EVENT_MAP:
        raise BadEvent(f"unknown event type {event!r}")
    found = item.get("msg")
    msg: dict[str, Any] = found if isinstance(found, dict) else {}
    message_id = _text(msg.get("_id"), 200) or _text(item.get("_id"), 200)
    email = _text(msg.get("email"), 320)
    if not message_id:
        raise BadEvent("event has no _id")
    if not email or "@" not in email:
        raise BadEvent("event has no msg.email")
    meta = msg.get("metadata")
    metadata: dict[str, Any] = meta if isinstance(meta, dict) else {}
    rejection = msg.get("reject")
    reason = (
        _text(msg.get("bounce_description"))
        or _text(msg.get("diag"))
        or _text(rejection.get("reason") if isinstance(rejection, dict) else None)
        or _text(item.get("reason"))
    )
    url = _text(item.get("url"), 4096)
    return MandrillEvent(
        event=str(event),
        message_id=message_id,
        email=email.lower(),
        at=_time(item.get("ts", msg.get("ts")), now),
        url=url,
        reason=reason,
        campaign_id=_text(metadata.get("campaign_id"), 200),
        workspace_id=_text(metadata.get("workspace_id"), 200),
        bounce_status=_text(msg.get("bounce_status") or msg.get("smtp_status"), 20),
        raw=item,
    )
