"""What tenancy decisions are made of: key identities, workspace settings, outcomes (pure)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.core import plans

KEY_PREFIX = "sk_live_"


def hash_key(key: str) -> str:
    """The SHA-256 a key is stored and looked up by."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class KeyIdentity:
    """What a valid API key stands for."""

    key_id: str
    workspace_id: str
    user_id: str | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class WorkspaceInfo:
    """A workspace's plan and quota settings."""

    id: str
    plan: str
    custom_limits: dict[str, Any] | None
    daily_quota: int | None
    user_daily_quota: int | None
    exists: bool = True


@dataclass(frozen=True)
class RateDecision:
    """The outcome of counting a request: headers to send, and the window it overran."""

    headers: dict[str, str]
    exceeded: plans.WindowUse | None = None


@dataclass(frozen=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` and the response its first use gets."""

    workspace_id: str
    key: str
    request_hash: str
    response: dict[str, Any]
    status_code: int


class IdempotentReplay(Exception):
    """The ``Idempotency-Key`` was used before: ``earlier`` is the stored first response."""

    def __init__(self, earlier: Any) -> None:
        super().__init__("idempotency key used before")
        self.earlier = earlier


class QuotaExceeded(Exception):
    """A daily sending quota is used up."""

    def __init__(self, scope: str, limit: int, used: int, reset_at: datetime) -> None:
        super().__init__(f"daily {scope} quota of {limit} messages exceeded")
        self.scope = scope
        self.limit = limit
        self.used = used
        self.reset_at = reset_at
