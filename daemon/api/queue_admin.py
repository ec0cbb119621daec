"""Bulk queue repair: ``POST /api/admin/queue/retry`` and ``POST /api/admin/queue/cancel``.

The body is a filter, every given condition must hold::

    {"status": "failed" | ["failed", "auth_error"], "workspace_id": "ws-1",
     "campaign_id": "c-1", "sender": "a@example.com", "recipient_domain": "example.org",
     "older_than": "2h" | "2026-01-01T00:00:00Z", "newer_than": "...",
     "provider": "smarthost", "error_contains": "quota", "dry_run": false}

Retry acts on failed and auth_error messages (queued again, as a single retry) and,
when ``status`` names them, on queued ones waiting for a later attempt (made due now)
and on sent (or delivered) ones that some recipients did not get (queued again for
those recipients only, as a single retry); cancel acts on queued and scheduled ones.
At least one condition is required, so an empty body never touches the whole queue. The answer::

    {"action": "retry", "dry_run": false, "matched": 3, "count": 3,
     "ids": ["msg-...", ...], "skipped": []}

``skipped`` lists matches whose state changed before they could be acted on.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.admin_config import json_body, require_admin
from daemon.api.auth import Principal, requires_admin, service_of
from daemon.api.errors import ApiError
from daemon.api.fields import invalid, reject_unknown_fields
from daemon.api.responses import ok
from daemon.core.durations import Duration
from daemon.core.ids import WORKSPACE_ID
from daemon.core.message import CANCELLABLE_STATUSES, RETRYABLE_STATUSES
from daemon.store import admin
from daemon.store.queue import HANDED_OVER

FILTER_FIELDS = (
    "status",
    "workspace_id",
    "campaign_id",
    "sender",
    "recipient_domain",
    "older_than",
    "newer_than",
    "provider",
    "error_contains",
)
ALLOWED = {
    "retry": (*RETRYABLE_STATUSES, "queued", *HANDED_OVER),
    "cancel": CANCELLABLE_STATUSES,
}
DEFAULT = {"retry": RETRYABLE_STATUSES, "cancel": CANCELLABLE_STATUSES}
_DOMAIN = re.compile(r"^@?[A-Za-z0-9.-]{1,253}\Z")

BatchOp = Callable[[Connection, Sequence[str], datetime], list[str]]
OPS: dict[str, BatchOp] = {"retry": admin.retry_batch, "cancel": admin.cancel_batch}


def _text(body: dict[str, Any], key: str, limit: int = 512) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise invalid(key, f"{key} must be a string of at most {limit} characters")
    return value


def parse_moment(value: str, key: str, now: datetime) -> datetime:
    """A duration back from ``now`` ("2h", "90d") or an ISO 8601 time (UTC if naive)."""
    try:
        return now - timedelta(seconds=Duration.parse(value).seconds)
    except (ValueError, OverflowError):
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(key, f'{key} must be a duration such as "2h" or an ISO 8601 time') from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_filter(
    body: dict[str, Any], action: str, principal: Principal, now: datetime
) -> admin.QueueFilter:
    """The filter of a bulk request, confined to the caller's workspace."""
    reject_unknown_fields(body, {*FILTER_FIELDS, "dry_run"})
    if not any(body.get(key) not in (None, "", []) for key in FILTER_FIELDS):
        raise ApiError(
            "INVALID_REQUEST",
            f"give at least one filter ({', '.join(FILTER_FIELDS)}); "
            f'e.g. {{"status": "{DEFAULT[action][0]}"}} for every such message',
        )
    status = body.get("status")
    statuses: tuple[str, ...]
    if status is None or status == "" or status == []:
        statuses = DEFAULT[action]
    else:
        listed = [status] if isinstance(status, str) else status
        if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
            raise invalid("status", "status must be a status or a list of statuses")
        wrong = [s for s in listed if s not in ALLOWED[action]]
        if wrong:
            raise invalid(
                "status",
                f"{action} acts on {', '.join(ALLOWED[action])} messages, not {', '.join(wrong)}",
            )
        statuses = tuple(dict.fromkeys(listed))
    workspace_id = _text(body, "workspace_id", 200)
    if workspace_id is not None:
        if not WORKSPACE_ID.match(workspace_id):
            raise invalid("workspace_id", "workspace_id is not valid")
        principal.check_workspace(workspace_id)
    domain = _text(body, "recipient_domain", 254)
    if domain is not None and not _DOMAIN.match(domain):
        raise invalid("recipient_domain", "recipient_domain must be a domain such as example.org")
    older = _text(body, "older_than", 64)
    newer = _text(body, "newer_than", 64)
    return admin.QueueFilter(
        statuses=statuses,
        workspace_id=workspace_id or principal.workspace_id,
        campaign_id=_text(body, "campaign_id", 200),
        sender=_text(body, "sender", 512),
        recipient_domain=domain,
        queued_before=parse_moment(older, "older_than", now) if older else None,
        queued_after=parse_moment(newer, "newer_than", now) if newer else None,
        provider=_text(body, "provider", 100),
        error_contains=_text(body, "error_contains", 512),
    )


def _apply(op: BatchOp, ids: list[str], now: datetime, conn: Connection) -> list[str]:
    return op(conn, ids, now)


def bulk(action: str) -> Any:
    """The endpoint of one bulk action."""
    op = OPS[action]

    @requires_admin
    async def endpoint(request: Request, principal: Principal) -> Response:
        require_admin(principal)
        service = service_of(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise ApiError("INVALID_REQUEST", "the body must be a JSON object")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise invalid("dry_run", "dry_run must be true or false")
        now = service.clock()
        flt = parse_filter(body, action, principal, now)
        matched: list[str] = []
        done: list[str] = []
        after = ""
        while True:
            ids = await service.reader.run(
                functools.partial(admin.matching_ids, f=flt, after=after)
            )
            if not ids:
                break
            matched.extend(ids)
            after = ids[-1]
            if not dry_run:
                at = service.clock()
                done.extend(await service.committer.run(functools.partial(_apply, op, ids, at)))
                await asyncio.sleep(0)  # ingest gets the writer between batches
        if done and action == "retry":
            service.wake.set()
        acted = matched if dry_run else done
        acted_set = set(acted)
        data = {
            "action": action,
            "dry_run": dry_run,
            "matched": len(matched),
            "count": len(acted),
            "ids": acted,
            "skipped": [i for i in matched if i not in acted_set],
        }
        return ok(data)

    endpoint.__name__ = f"bulk_{action}"
    return endpoint


def routes() -> list[Route]:
    """The bulk queue routes, relative to /api."""
    return [
        Route("/admin/queue/retry", bulk("retry"), methods=["POST"]),
        Route("/admin/queue/cancel", bulk("cancel"), methods=["POST"]),
    ]
