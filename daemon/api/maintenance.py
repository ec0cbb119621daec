"""Maintenance operations of reference 4.3: maintenance mode and database cleanup.

Maintenance mode (``POST``/``GET /api/admin/maintenance/mode``): while on, SMTP
answers ``MAIL FROM`` with ``421 4.3.2 <message>`` and closes the session (EHLO
and NOOP still work, so monitoring sees a live server), the sending API answers
503 ``MAINTENANCE_MODE`` with ``Retry-After``, reads keep working, and delivery
pauses only when ``pause_delivery`` is true. The state is stored, so it survives
a restart.

Cleanup (``POST /api/admin/maintenance/cleanup``) deletes finished messages whose
last activity is older than ``older_than_days``: sent and delivered ones with
``include_sent``; failed, auth_error and cancelled ones with ``include_failed``.
Pending mail is never touched. It works in batches through the group committer,
then gives the space back (SQLite ``incremental_vacuum``, PostgreSQL ``VACUUM``).
``space_freed_mb`` is the stored size of the deleted rows (content and columns).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.admin_config import json_body, require_admin, require_relay_wide
from daemon.api.auth import Principal, requires_admin, service_of
from daemon.api.errors import ApiError, iso_utc
from daemon.api.fields import invalid, missing, reject_unknown_fields, string_field
from daemon.api.responses import by_method, ok
from daemon.core.maintenance import MaintenanceState
from daemon.service import RelayService
from daemon.store import admin

log = logging.getLogger("relayd.api")
MB = 1024 * 1024
SENT_STATUSES = ("sent", "delivered")
FAILED_STATUSES = ("failed", "auth_error", "cancelled")


def _bool(body: dict[str, Any], key: str, default: bool | None = None) -> bool:
    value = body.get(key, default)
    if value is None:
        raise missing(key)
    if not isinstance(value, bool):
        raise invalid(key, f"{key} must be true or false")
    return value


def _known(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError("INVALID_REQUEST", "the body must be a JSON object")
    reject_unknown_fields(body, allowed)
    return body


def mode_view(state: MaintenanceState) -> dict[str, Any]:
    """The reference's answer, plus the message and the delivery flag."""
    return {
        "maintenance_mode": state.enabled,
        "started_at": iso_utc(state.started_at) if state.enabled else None,
        "expected_end": iso_utc(state.expected_end) if state.enabled else None,
        "message": state.message if state.enabled else None,
        "pause_delivery": state.delivery_paused,
    }


@requires_admin
async def get_mode(request: Request, principal: Principal) -> Response:
    """GET /api/admin/maintenance/mode: whether maintenance mode is on."""
    require_admin(principal)
    return ok(mode_view(service_of(request).maintenance))


@requires_admin
async def set_mode(request: Request, principal: Principal) -> Response:
    """POST /api/admin/maintenance/mode: turn maintenance mode on or off."""
    require_relay_wide(principal, "maintenance mode")
    service = service_of(request)
    body = _known(
        await json_body(request),
        {"enabled", "message", "expected_duration_minutes", "pause_delivery"},
    )
    enabled = _bool(body, "enabled")
    message = string_field(body, "message", max_length=200)
    minutes = body.get("expected_duration_minutes")
    if minutes is not None and (
        isinstance(minutes, bool)
        or not isinstance(minutes, int | float)
        or not math.isfinite(minutes)
        or not 0 <= minutes <= 60 * 24 * 365
    ):
        raise invalid(
            "expected_duration_minutes", "expected_duration_minutes must be 0 to 525600 minutes"
        )
    pause = _bool(body, "pause_delivery", False)
    now = service.clock()
    if enabled:
        state = MaintenanceState.turned_on(now, message, minutes, pause)
    else:
        state = service.maintenance.turned_off()
    stored = state.to_json()
    await service.committer.run(lambda c: admin.put_setting(c, admin.MAINTENANCE_KEY, stored, now))
    service.maintenance = state
    if not state.delivery_paused:
        service.wake.set()  # paused workers resume at once
    log.warning(
        "maintenance mode %s%s",
        "on" if enabled else "off",
        f" (delivery paused): {state.message}" if state.delivery_paused else "",
    )
    return ok(mode_view(state))


async def _cleanup(
    service: RelayService, statuses: tuple[str, ...], cutoff: datetime, dry_run: bool
) -> dict[str, Any]:
    events = await service.reader.run(admin.event_tables)
    counts = {"messages": 0, **dict.fromkeys(admin.EVENT_TABLES, 0)}
    if dry_run:
        cond = admin.cleanup_conditions(statuses, cutoff)
        counts["messages"], size = await service.reader.run(
            lambda c: admin.bytes_of_messages(c, cond)
        )
        for name, table in events.items():
            n, b = await service.reader.run(
                functools.partial(admin.old_event_count, table=table, cutoff=cutoff)
            )
            counts[name] += n
            size += b
        return {"deleted": counts, "bytes": size}
    size = 0
    after = ""
    while statuses:
        batch = await service.committer.run(
            functools.partial(
                admin.delete_message_batch,
                statuses=statuses,
                cutoff=cutoff,
                after=after,
                events=events,
            )
        )
        if not batch.messages:
            break
        counts["messages"] += batch.messages
        size += batch.bytes
        for name, n in (batch.events or {}).items():
            counts[name] += n
        after = batch.last_id
        await asyncio.sleep(0)  # let SMTP and API requests in between batches
    for name, table in events.items():
        while True:
            n, b = await service.committer.run(
                functools.partial(admin.delete_event_batch, table=table, cutoff=cutoff)
            )
            if not n:
                break
            counts[name] += n
            size += b
            await asyncio.sleep(0)
    return {"deleted": counts, "bytes": size}


@requires_admin
async def cleanup(request: Request, principal: Principal) -> Response:
    """POST /api/admin/maintenance/cleanup: delete old finished mail in batches."""
    require_relay_wide(principal, "cleanup")
    service = service_of(request)
    body = _known(
        await json_body(request), {"older_than_days", "include_sent", "include_failed", "dry_run"}
    )
    days = body.get("older_than_days")
    if days is None:
        raise missing("older_than_days")
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 36500:
        raise invalid("older_than_days", "older_than_days must be a whole number of days, 0-36500")
    include_sent = _bool(body, "include_sent", True)
    include_failed = _bool(body, "include_failed", True)
    dry_run = _bool(body, "dry_run", False)
    statuses = (SENT_STATUSES if include_sent else ()) + (FAILED_STATUSES if include_failed else ())
    lock: asyncio.Lock | None = getattr(request.app.state, "cleanup_lock", None)
    if lock is None:
        lock = request.app.state.cleanup_lock = asyncio.Lock()
    if lock.locked():
        raise ApiError("INVALID_STATE", "a cleanup is already running; try again when it ends")
    async with lock:
        now = service.clock()
        cutoff = now - timedelta(days=days)
        engine = service.engine
        before = await asyncio.to_thread(admin.database_file_bytes, engine)
        result = await _cleanup(service, statuses, cutoff, dry_run)
        if not dry_run and sum(result["deleted"].values()):
            touched = ["messages", "message_content", "message_recipients", "delivery_attempts"]
            touched += [name for name, n in result["deleted"].items() if n and name != "messages"]
            await asyncio.to_thread(admin.reclaim_space, engine, touched)
        after = await asyncio.to_thread(admin.database_file_bytes, engine)
    log.info(
        "cleanup%s: %s older than %s, %.3f MB",
        " (dry run)" if dry_run else "",
        result["deleted"],
        iso_utc(cutoff),
        result["bytes"] / MB,
    )
    data: dict[str, Any] = {
        "deleted": result["deleted"],
        "space_freed_mb": round(result["bytes"] / MB, 3),
        "dry_run": dry_run,
        "older_than": iso_utc(cutoff),
    }
    if before is not None and after is not None:
        data["database_file_mb"] = {"before": round(before / MB, 3), "after": round(after / MB, 3)}
    return ok(data)


def routes() -> list[Route]:
    """The maintenance routes, relative to /api."""
    return [
        Route(
            "/admin/maintenance/mode",
            by_method(GET=get_mode, POST=set_mode),
            methods=["GET", "POST"],
        ),
        Route("/admin/maintenance/cleanup", cleanup, methods=["POST"]),
    ]
