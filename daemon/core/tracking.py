"""Tracking links and signed tokens: pixel and click URLs, unsubscribe tokens, policy.

Pure: the secret and the URLs are passed in. Every signature is an HMAC-SHA256
over length-prefixed parts, so no choice of ``mid``, ``rid`` or ``url`` can be
shifted from one part into another; verification compares in constant time
and never raises, whatever the input.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

PIXEL_PATH = "/webhook/pixel"
CLICK_PATH = "/webhook/click"
UNSUBSCRIBE_PATH = "/webhook/unsubscribe"

# A 1x1 transparent GIF89a: 43 bytes.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}\Z")
MAX_URL = 4096


def _mac(secret: bytes, purpose: str, parts: Sequence[str]) -> bytes:
    data = b"".join(
        len(b := p.encode("utf-8", "surrogatepass")).to_bytes(4, "big") + b
        for p in (purpose, *parts)
    )
    return hmac.new(secret, data, hashlib.sha256).digest()


def sign(secret: bytes, purpose: str, *parts: str) -> str:
    """A URL-safe signature (22 characters, 128 bits) of ``parts`` for ``purpose``."""
    return base64.urlsafe_b64encode(_mac(secret, purpose, parts)[:16]).decode().rstrip("=")


def verify(secret: bytes, signature: str | None, purpose: str, *parts: str) -> bool:
    """True when ``signature`` is :func:`sign` of the same parts; never raises."""
    if not signature or len(signature) > 64:
        return False
    try:
        expected = sign(secret, purpose, *parts)
    except (UnicodeError, ValueError):
        return False
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


def valid_id(value: str | None) -> bool:
    """A message id or recipient id as the tracking URLs carry them."""
    return bool(value) and _ID.match(value or "") is not None


def is_web_url(url: str | None) -> bool:
    """An absolute http(s) URL with a host: the only kind a click may redirect to."""
    if not url or len(url) > MAX_URL or any(ord(c) < 33 or ord(c) == 127 for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def pixel_url(base_url: str, mid: str, rid: str) -> str:
    return f"{base_url.rstrip('/')}{PIXEL_PATH}?{urlencode({'mid': mid, 'rid': rid})}"


def click_url(base_url: str, secret: bytes, mid: str, rid: str, url: str) -> str:
    query = urlencode(
        {"mid": mid, "rid": rid, "url": url, "sig": sign(secret, "click", mid, rid, url)}
    )
    return f"{base_url.rstrip('/')}{CLICK_PATH}?{query}"


def verify_click(secret: bytes, mid: str, rid: str, url: str, sig: str | None) -> bool:
    return verify(secret, sig, "click", mid, rid, url)


def unsubscribe_token(secret: bytes, mid: str, rid: str) -> str:
    """``<mid>.<rid>.<sig>``: names the message and recipient, and proves we made it."""
    return f"{mid}.{rid}.{sign(secret, 'unsubscribe', mid, rid)}"


def read_unsubscribe_token(secret: bytes, token: str | None) -> tuple[str, str] | None:
    """The (mid, rid) a token names when its signature verifies, else None."""
    if not token or len(token) > 300:
        return None
    mid, sep, rest = token.partition(".")
    rid, sep2, sig = rest.rpartition(".")
    if not (sep and sep2 and valid_id(mid) and valid_id(rid)):
        return None
    return (mid, rid) if verify(secret, sig, "unsubscribe", mid, rid) else None


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{UNSUBSCRIBE_PATH}?{urlencode({'token': token})}"


@dataclass(frozen=True)
class TrackingPlan:
    """What the rewrite does to one message."""

    opens: bool = False
    clicks: bool = False
    list_unsubscribe: bool = False

    @property
    def rewrites(self) -> bool:
        return self.opens or self.clicks or self.list_unsubscribe


def plan_for(
    *,
    enabled: bool,
    open_tracking: bool,
    click_tracking: bool,
    list_unsubscribe: bool,
    overrides: Sequence[str],
    workspace_id: str,
    is_campaign: bool,
) -> TrackingPlan:
    """Apply ``[tracking]`` and the workspace's override to one message."""
    if not enabled:
        return TrackingPlan()
    opens, clicks = open_tracking, click_tracking
    for item in overrides:
        workspace, _, mode = item.partition("=")
        if workspace.strip() != workspace_id:
            continue
        mode = mode.strip()
        if mode == "off":
            return TrackingPlan()
        opens = mode in ("opens", "all")
        clicks = mode in ("clicks", "all")
    return TrackingPlan(opens, clicks, list_unsubscribe and is_campaign)
