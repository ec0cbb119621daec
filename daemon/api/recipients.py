"""The recipient endpoints of reference 2.4: list, show, add, update, remove.

A recipient is unique per (workspace, email); a second POST is 409
``RECIPIENT_EXISTS``, an unknown one 404 ``RECIPIENT_NOT_FOUND``. A status other
than ACTIVE suppresses mail to the address (daemon.core.suppression); setting
one records ``suppression_reason`` (given, or why it changed) and
``suppressed_at``. ``PUT`` merges ``metadata`` as a JSON merge patch (RFC 7396:
objects merge, null removes a key). The single-recipient routes act in the
caller's workspace, or the one ``workspace_id`` (query or body) names. The admin
naming none finds the address in whichever workspace holds it, as the list
shows every workspace; an address in several is 400 ``INVALID_REQUEST`` naming
them, never a guess (a new recipient goes to ``default``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.auth import Principal, requires_auth, service_of
from daemon.api.errors import ApiError, iso_utc
from daemon.api.fields import invalid, mailbox, missing, parse_object, read_body, string_field
from daemon.api.pagination import Page
from daemon.api.responses import by_method, ok
from daemon.core.ids import WORKSPACE_ID, WORKSPACE_ID_RULE
from daemon.store import audience

_MAX_BODY = 256 * 1024
_NAME = 200
_POST_FIELDS = frozenset(
    {"email", "workspace_id", "user_id", "campaign_id", "first_name", "last_name", "opt_in"}
    | {"status", "metadata", "suppression_reason"}
)
_PUT_FIELDS = _POST_FIELDS - {"email", "opt_in"}
_MAX_METADATA = 65536


def email_address(value: str, field: str) -> str:
    """A bare address (no display name), lower-cased, or 400 INVALID_EMAIL_FORMAT."""
    box = mailbox(value, field)
    if box.display_name or "<" in value:
        raise ApiError(
            "INVALID_EMAIL_FORMAT",
            f"{field} must be a bare address such as user@example.com",
            {"field": field, "value": value[:320]},
        )
    return audience.normalize(box.address)


def workspace_param(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not WORKSPACE_ID.match(value):
        raise invalid(field, f"{field} must be {WORKSPACE_ID_RULE}")
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _metadata(body: dict[str, Any]) -> dict[str, Any] | None:
    value = body.get("metadata")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("metadata", "metadata must be an object")
    tags = value.get("tags")
    if tags is not None and (
        not isinstance(tags, list) or not all(isinstance(t, str) and len(t) <= 100 for t in tags)
    ):
        raise invalid("metadata.tags", "metadata.tags must be a list of strings")
    preferences = value.get("preferences")
    if preferences is not None and not isinstance(preferences, dict):
        raise invalid("metadata.preferences", "metadata.preferences must be an object")
    return value


def _status(body: dict[str, Any]) -> str | None:
    value = body.get("status")
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in audience.RECIPIENT_STATUSES:
        raise invalid("status", f"status must be one of {', '.join(audience.RECIPIENT_STATUSES)}")
    return value.upper()


def _status_changes(status: str, reason: str | None, now: datetime) -> dict[str, Any]:
    """The columns a status change sets: suppression reason and date, opt-out date."""
    if status == "ACTIVE":
        return {"status": status, "suppression_reason": None, "suppressed_at": None}
    changes: dict[str, Any] = {
        "status": status,
        "suppression_reason": reason or f"status set to {status} through the API",
        "suppressed_at": now,
    }
    if status == "UNSUBSCRIBED":
        changes["opt_out_date"] = now
    return changes


async def _body(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    raw = await read_body(request, _MAX_BODY)
    body = parse_object(raw, allowed)
    if body.get("metadata") is not None and len(raw) > _MAX_METADATA:
        raise invalid("metadata", f"metadata must serialise to at most {_MAX_METADATA} bytes")
    return body


def _common(body: dict[str, Any]) -> dict[str, Any]:
    """The plain fields both POST and PUT take, as columns."""
    values: dict[str, Any] = {}
    for key in ("user_id", "campaign_id", "first_name", "last_name"):
        if key in body:
            values[key] = string_field(body, key, _NAME)
    return values


def _with_defaults(metadata: dict[str, Any] | None) -> dict[str, Any]:
    shown = dict(metadata or {})
    shown.setdefault("tags", [])
    shown.setdefault("preferences", {})
    return shown


def recipient_summary(row: Any) -> dict[str, Any]:
    """One entry of GET /api/recipients."""
    return {
        "id": row.id,
        "email": row.email,
        "workspace_id": row.workspace_id,
        "first_name": row.first_name,
        "last_name": row.last_name,
        "status": row.status,
        "bounce_count": row.bounce_count,
        "created_at": iso_utc(row.created_at),
        "updated_at": iso_utc(row.updated_at),
        "metadata": _with_defaults(row.metadata),
    }


def recipient_detail(row: Any) -> dict[str, Any]:
    """GET /api/recipients/{email}: every field, engagement and suppression included."""
    return {
        "id": row.id,
        "email": row.email,
        "workspace_id": row.workspace_id,
        "user_id": row.user_id,
        "campaign_id": row.campaign_id,
        "first_name": row.first_name,
        "last_name": row.last_name,
        "status": row.status,
        "opt_in_date": iso_utc(row.opt_in_date),
        "opt_out_date": iso_utc(row.opt_out_date),
        "bounce_count": row.bounce_count,
        "last_bounce_date": iso_utc(row.last_bounce_date),
        "bounce_type": row.bounce_type,
        "engagement": {
            "total_received": row.total_received,
            "total_opened": row.total_opened,
            "total_clicked": row.total_clicked,
            "last_open_date": iso_utc(row.last_open_date),
            "last_click_date": iso_utc(row.last_click_date),
        },
        "metadata": _with_defaults(row.metadata),
        "suppression_reason": row.suppression_reason,
        "suppressed_at": iso_utc(row.suppressed_at),
        "created_at": iso_utc(row.created_at),
        "updated_at": iso_utc(row.updated_at),
    }


def _not_found(email: str, workspace_id: str | None) -> ApiError:
    if workspace_id is None:
        return ApiError(
            "RECIPIENT_NOT_FOUND", f"no recipient {email} in any workspace", {"email": email}
        )
    return ApiError(
        "RECIPIENT_NOT_FOUND",
        f"no recipient {email} in workspace {workspace_id}",
        {"email": email, "workspace_id": workspace_id},
    )


def _scope(
    request: Request, principal: Principal, body: dict[str, Any] | None = None
) -> str | None:
    """The workspace a call names (query or body) or the caller is scoped to; None: any."""
    requested = workspace_param(request.query_params.get("workspace_id"), "workspace_id")
    if body is not None and body.get("workspace_id") is not None:
        named = workspace_param(body["workspace_id"], "workspace_id")
        if requested is not None and named != requested:
            raise invalid("workspace_id", "workspace_id differs between query and body")
        requested = named
    if requested is not None:
        principal.check_workspace(requested)
        return requested
    return principal.workspace_id


def _target(request: Request, principal: Principal, body: dict[str, Any] | None = None) -> str:
    """The workspace a new recipient is added to (the admin naming none: ``default``)."""
    return _scope(request, principal, body) or principal.acting_workspace


def _locate(conn: Connection, workspace_id: str | None, email: str) -> tuple[Any, list[str]]:
    """(the recipient, []) when there is exactly one; else (None, the workspaces holding it).

    ``workspace_id`` None (the admin naming no workspace) looks in every workspace,
    as ``GET /api/recipients`` lists every one.
    """
    if workspace_id is not None:
        return audience.get_recipient(conn, workspace_id, email), []
    rows = audience.find_recipients(conn, email)
    if len(rows) == 1:
        return rows[0], []
    return None, [row.workspace_id for row in rows]


def _found(row: Any, holders: list[str], email: str, workspace_id: str | None) -> Any:
    """The recipient _locate found, or 404, or 400 when the address is in several workspaces.

    Several: acting on one of them would be a guess; the caller names the workspace.
    """
    if row is not None:
        return row
    if holders:
        raise ApiError(
            "INVALID_REQUEST",
            f"recipient {email} exists in several workspaces ({', '.join(holders)}); "
            "name one with X-Workspace-ID or workspace_id",
            {"parameter": "workspace_id", "email": email, "workspace_ids": holders},
        )
    raise _not_found(email, workspace_id)


def _path_email(request: Request) -> str:
    return email_address(str(request.path_params["email"]), "email")


@requires_auth
async def list_recipients(request: Request, principal: Principal) -> Response:
    """GET /api/recipients: filters workspace_id, status, email (substring); paginated."""
    query = request.query_params
    page = Page.from_query(query)
    workspace_id = workspace_param(query.get("workspace_id") or None, "workspace_id")
    if workspace_id is not None:
        principal.check_workspace(workspace_id)
    status = _status({"status": query.get("status") or None})
    search = query.get("email") or None
    if search is not None and (len(search) > 320 or any(ord(c) < 32 for c in search)):
        raise invalid("email", "email is not a valid filter")
    filters = audience.RecipientFilter(
        workspace_id=workspace_id or principal.workspace_id, status=status, email=search
    )
    rows, total = await service_of(request).reader.run(
        lambda c: audience.list_recipients(c, filters, page.limit, page.offset)
    )
    data = {"recipients": [recipient_summary(r) for r in rows], "pagination": page.body(total)}
    return ok(data, headers=page.headers(request, total))


@requires_auth
async def add_recipient(request: Request, principal: Principal) -> Response:
    """POST /api/recipients: 201 with id, email, status, created_at."""
    service = service_of(request)
    body = await _body(request, _POST_FIELDS)
    if body.get("email") is None:
        raise missing("email")
    if not isinstance(body["email"], str):
        raise invalid("email", "email must be a string")
    email = email_address(body["email"], "email")
    workspace_id = _target(request, principal, body)
    opt_in = body.get("opt_in", True)
    if not isinstance(opt_in, bool):
        raise invalid("opt_in", "opt_in must be true or false")
    now = service.clock()
    values: dict[str, Any] = {
        "workspace_id": workspace_id,
        "email": email,
        **_common(body),
        **_status_changes(
            _status(body) or "ACTIVE", string_field(body, "suppression_reason", 1000), now
        ),
        "opt_in_date": now if opt_in else None,
        "metadata": _metadata(body) or {},
        "created_at": now,
        "updated_at": now,
    }
    try:
        row = await service.committer.run(lambda c: audience.insert_recipient(c, values))
    except audience.RecipientExists:
        raise ApiError(
            "RECIPIENT_EXISTS",
            f"recipient {email} already exists in workspace {workspace_id}",
            {"email": email, "workspace_id": workspace_id},
        ) from None
    data = {
        "id": row.id,
        "email": row.email,
        "status": row.status,
        "created_at": iso_utc(row.created_at),
    }
    return ok(data, status_code=201)


@requires_auth
async def get_recipient(request: Request, principal: Principal) -> Response:
    """GET /api/recipients/{email}."""
    email = _path_email(request)
    workspace_id = _scope(request, principal)
    row, holders = await service_of(request).reader.run(lambda c: _locate(c, workspace_id, email))
    return ok(recipient_detail(_found(row, holders, email, workspace_id)))


def _update(
    conn: Connection, workspace_id: str | None, email: str, body: dict[str, Any], now: datetime
) -> tuple[Any, list[str]]:
    row, holders = _locate(conn, workspace_id, email)
    if row is None:
        return None, holders
    values = _common(body)
    status = _status(body)
    reason = string_field(body, "suppression_reason", 1000)
    if status is not None and (status != row.status or reason is not None):
        values.update(_status_changes(status, reason, now))
    elif reason is not None and row.status != "ACTIVE":
        values["suppression_reason"] = reason
    metadata = _metadata(body)
    if metadata is not None:
        values["metadata"] = merge_patch(row.metadata or {}, metadata)
    values["updated_at"] = now
    return audience.update_recipient(conn, row.workspace_id, email, values), []


@requires_auth
async def update_recipient(request: Request, principal: Principal) -> Response:
    """PUT /api/recipients/{email}: answers id, email, first_name, status, updated_at."""
    service = service_of(request)
    email = _path_email(request)
    body = await _body(request, _PUT_FIELDS)
    workspace_id = _scope(request, principal, body)
    _metadata(body)  # validate before touching the database
    _status(body)
    now = service.clock()
    found, holders = await service.committer.run(
        lambda c: _update(c, workspace_id, email, body, now)
    )
    row = _found(found, holders, email, workspace_id)
    data = {
        "id": row.id,
        "email": row.email,
        "first_name": row.first_name,
        "status": row.status,
        "updated_at": iso_utc(row.updated_at),
    }
    return ok(data)


@requires_auth
async def delete_recipient(request: Request, principal: Principal) -> Response:
    """DELETE /api/recipients/{email}."""
    email = _path_email(request)
    workspace_id = _scope(request, principal)

    def delete(conn: Connection) -> tuple[Any, list[str]]:
        row, holders = _locate(conn, workspace_id, email)
        if row is not None and not audience.delete_recipient(conn, row.workspace_id, email):
            row = None  # removed meanwhile
        return row, holders

    row, holders = await service_of(request).committer.run(delete)
    _found(row, holders, email, workspace_id)
    return ok(message="Recipient removed successfully")


def routes() -> list[Route]:
    """The recipient routes, relative to the mount point (/api or /v1)."""
    return [
        Route(
            "/recipients",
            by_method(GET=list_recipients, POST=add_recipient),
            methods=["GET", "POST"],
        ),
        Route(
            "/recipients/{email:id}",
            by_method(GET=get_recipient, PUT=update_recipient, DELETE=delete_recipient),
            methods=["GET", "PUT", "DELETE"],
        ),
    ]
