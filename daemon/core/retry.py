"""Retry policy: classify replies, compute backoff, decide a message's next status.

Pure: time and randomness are passed in.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon.core.durations import MAX_SECONDS

SENT = "sent"
TEMPORARY = "temporary"
PERMANENT = "permanent"
AUTH_ERROR = "auth_error"
KINDS = (SENT, TEMPORARY, PERMANENT, AUTH_ERROR)

# Replies that mean "your credentials were refused" rather than "this message is bad".
AUTH_REPLY_CODES = frozenset({530, 534, 535})
AUTH_ENHANCED_CODES = frozenset({"5.7.8", "5.7.9", "5.7.14"})

# An optional basic code ("550 " or "550-") then the enhanced one ("5.1.1").
_ENHANCED = re.compile(r"^\s*(?:\d{3}[ -])?\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def enhanced_code(text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply, if any ("5.1.1")."""
    match = _ENHANCED.match(text)
    if match is None:
        return None
    return ".".join(match.groups())


def classify_smtp(code: int, text: str = "") -> str:
    """Classify an SMTP reply: sent, temporary, permanent or auth_error.

    Unknown or malformed codes count as temporary: retrying is the safe mistake.
    """
    enhanced = enhanced_code(text)
    if 200 <= code < 400:
        return SENT
    if 500 <= code < 600:
        if code in AUTH_REPLY_CODES or enhanced in AUTH_ENHANCED_CODES:
            return AUTH_ERROR
        return PERMANENT
    return TEMPORARY


def classify_http(status: int) -> str:
    """Classify a provider API's HTTP status."""
    if 200 <= status < 300:
        return SENT
    if status in (401, 403):
        return AUTH_ERROR
    if status in (408, 409, 425, 429) or status >= 500 or status < 200:
        return TEMPORARY
    if 400 <= status < 500:
        return PERMANENT
    return TEMPORARY


def classify_transport_error() -> str:
    """A timeout, refused connection or dropped connection: always worth another try."""
    return TEMPORARY


def effective_max_retries(message_max: int | None, config_max: int) -> int:
    """A message's own limit (X-Retry-Count) wins over ``queue.max_retries``."""
    return config_max if message_max is None else max(0, message_max)


def backoff(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before retry number ``retry`` (0-based): ``base * 2**retry`` capped, jittered.

    Equal jitter: the delay lies in [d/2, d], so retries spread out but never
    come back almost at once.
    """
    if base <= 0:
        return 0.0
    delay = _full_delay(retry, base, cap)
    return delay / 2 + rng.random() * delay / 2


def _longest(cap: float) -> float:
    """The cap in force: ``retry_max``, or with none (0) the longest duration the config
    takes, so that a late retry's time still fits in a datetime."""
    return min(cap, MAX_SECONDS) if cap > 0 else MAX_SECONDS


def _full_delay(retry: int, base: float, cap: float) -> float:
    """``base * 2**retry`` capped: the longest wait before retry number ``retry``."""
    return min(_longest(cap), base * float(1 << min(max(retry, 0), 62)))


def retries_end(
    next_attempt_at: datetime, retry_count: int, max_retries: int, base: float, cap: float
) -> datetime | None:
    """The latest time a message's last retry can come, its next one being due at
    ``next_attempt_at`` with ``retry_count`` retries used (that one included).

    Each later retry waits at most its whole backoff (jitter only shortens it).
    None when that time is past what a datetime can hold.
    """
    total = 0.0
    for retry in range(max(retry_count, 0), max_retries if base > 0 else 0):
        delay = _full_delay(retry, base, cap)
        if delay >= _longest(cap) or retry >= 62:
            total += delay * (max_retries - retry)  # at the cap, or the exponent's end
            break
        total += delay
    try:
        return next_attempt_at + timedelta(seconds=total)
    except OverflowError:
        return None


@dataclass(frozen=True)
class Decision:
    """The status a message moves to after one delivery round."""

    status: str  # sent | queued | failed | auth_error
    retry_count: int
    next_attempt_at: datetime | None = None


def decide(
    kind: str,
    retry_count: int,
    max_retries: int,
    now: datetime,
    base: float,
    cap: float,
    rng: random.Random,
) -> Decision:
    """Next status after a round whose combined result is ``kind``.

    ``retry_count`` is how many retries already happened; a temporary failure
    is retried while ``retry_count < max_retries``, so a message gets at most
    ``1 + max_retries`` attempts.
    """
    if kind == SENT:
        return Decision("sent", retry_count)
    if kind == PERMANENT:
        return Decision("failed", retry_count)
    if kind == AUTH_ERROR:
        return Decision("auth_error", retry_count)
    if kind != TEMPORARY:
        raise ValueError(f"unknown delivery result {kind!r}")
    if retry_count >= max_retries:
        return Decision("failed", retry_count)
    delay = backoff(retry_count, base, cap, rng)
    return Decision("queued", retry_count + 1, now + timedelta(seconds=delay))
