"""Maylng sender addresses: ``/v1/email-addresses`` and ``/v1/email-addresses/{id}``.

An address is ``prefix@domain``: the prefix is generated when omitted or null,
the domain is ``[accounts] default_domain`` when omitted and must be it or one of
``[accounts] sending_domains``. A temporary address expires at ``expires_at``
(default: now + ``[accounts] temporary_lifetime``); a persistent one never does.
An email address is unique across accounts (409 when taken). The plan's address
limit counts every address the account holds, whatever its status: at the
limit, creating another is 403 (a downgrade keeps the addresses already made).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.api.auth import service_of
from daemon.api.fields import object_field
from daemon.api.maylng_common import (
    Account,
    MaylngError,
    bad_request,
    iso,
    json_object,
    not_found,
    requires_account,
)
from daemon.api.responses import by_method
from daemon.core.accounts import (
    ADDRESS_STATUSES,
    ADDRESS_TYPES,
    PREFIX_PATTERN,
    effective_status,
    generate_prefix,
    limits_for,
)
from daemon.service import RelayService
from daemon.store import accounts as store

CREATE_FIELDS = frozenset({"type", "prefix", "domain", "expires_at", "metadata"})
UPDATE_FIELDS = frozenset({"status", "expires_at", "metadata"})
GENERATE_ATTEMPTS = 5
_rng = random.SystemRandom()


def address_view(row: Any, now: datetime) -> dict[str, Any]:
    """An address as the reference shows it; an active one past its time shows expired."""
    return {
        "id": row.id,
        "email": row.email,
        "type": row.type,
        "prefix": row.prefix,
        "domain": row.domain,
        "status": effective_status(row.status, row.expires_at, now),
        "expires_at": iso(row.expires_at),
        "metadata": row.metadata or {},
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def parse_time(value: Any, name: str) -> datetime:
    """An ISO 8601 date-time (``Z`` or an offset; none means UTC), in UTC."""
    if not isinstance(value, str):
        raise bad_request(f"{name} must be an ISO 8601 date-time string")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"{name} must be an ISO 8601 date-time, got {value[:64]!r}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _future(value: Any, now: datetime) -> datetime:
    when = parse_time(value, "expires_at")
    if when <= now:
        raise bad_request("expires_at must be in the future")
    return when


def _metadata(body: dict[str, Any]) -> dict[str, Any]:
    return object_field(body, "metadata", None)  # its ApiError answers {"error": ...} here


def _domain(service: RelayService, value: Any) -> str:
    settings = service.config.accounts
    allowed = [settings.default_domain.lower(), *(d.lower() for d in settings.sending_domains)]
    if value is None:
        return allowed[0]
    if not isinstance(value, str) or value.lower() not in allowed:
        raise bad_request(
            f"domain must be one of this relay's sending domains: {', '.join(allowed)}"
        )
    return value.lower()


def _prefix(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not PREFIX_PATTERN.match(value.lower()):
        raise bad_request(
            "prefix must be 1-64 letters, digits, '.', '_', '+' or '-', "
            "starting and ending with a letter or digit"
        )
    return value.lower()


def address_id(request: Request) -> str:
    value: str = request.path_params["address_id"]
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise not_found("Email address") from None


def _address_limit(plan: str) -> int:
    return limits_for(plan).email_addresses


async def _insert(service: RelayService, values: dict[str, Any]) -> tuple[str, Any]:
    return await service.committer.run(lambda c: store.insert_address(c, values, _address_limit))


@requires_account
async def create_address(request: Request, account: Account) -> Response:
    """POST /v1/email-addresses: 201 with the address."""
    service = service_of(request)
    body = await json_object(request, CREATE_FIELDS)
    kind = body.get("type")
    if kind is None:
        raise bad_request("type is required")
    if kind not in ADDRESS_TYPES:
        raise bad_request('type must be "temporary" or "persistent"')
    now = service.clock()
    prefix = _prefix(body.get("prefix"))
    domain = _domain(service, body.get("domain"))
    expires_at = None
    if kind == "temporary":
        if body.get("expires_at") is not None:
            expires_at = _future(body["expires_at"], now)
        else:
            expires_at = now + timedelta(seconds=service.config.accounts.temporary_lifetime.seconds)
    elif body.get("expires_at") is not None:
        raise bad_request("expires_at applies to temporary addresses only")
    metadata = _metadata(body)
    for _ in range(GENERATE_ATTEMPTS if prefix is None else 1):
        local = prefix or generate_prefix(_rng)
        values = {
            "id": str(uuid.uuid4()),
            "workspace_id": account.workspace_id,
            "email": f"{local}@{domain}",
            "prefix": local,
            "domain": domain,
            "type": kind,
            "status": "active",
            "expires_at": expires_at,
            "metadata": metadata,
            "created_at": now,
            "updated_at": now,
        }
        outcome, found = await _insert(service, values)
        if outcome == "created":
            return JSONResponse(address_view(found, now), status_code=201)
        if outcome == "limit":
            raise MaylngError(
                403,
                f"email address limit reached: your plan allows {found} email addresses; "
                "delete one or upgrade the plan",
            )
        if outcome == "gone":
            raise not_found("Account")
    raise MaylngError(409, f"email address {values['email']} is already taken")


@requires_account
async def list_addresses(request: Request, account: Account) -> Response:
    """GET /v1/email-addresses: every address of the account, oldest first."""
    service = service_of(request)
    rows = await service.reader.run(lambda c: store.list_addresses(c, account.workspace_id))
    now = service.clock()
    return JSONResponse({"email_addresses": [address_view(r, now) for r in rows]})


@requires_account
async def get_address(request: Request, account: Account) -> Response:
    """GET /v1/email-addresses/{id}."""
    service = service_of(request)
    wanted = address_id(request)
    row = await service.reader.run(lambda c: store.get_address(c, account.workspace_id, wanted))
    if row is None:
        raise not_found("Email address")
    return JSONResponse(address_view(row, service.clock()))


def _changes(body: dict[str, Any], row: Any, now: datetime) -> dict[str, Any]:
    """The columns a PATCH changes, checked against the address as it is."""
    values: dict[str, Any] = {}
    if body.get("expires_at") is not None:
        if row.type != "temporary":
            raise bad_request("expires_at applies to temporary addresses only")
        values["expires_at"] = _future(body["expires_at"], now)
        # Moving an expired address's time forward brings it back, unless a status is given.
        if effective_status(row.status, row.expires_at, now) == "expired":
            values["status"] = "active"
    status = body.get("status")
    if status is not None:
        if status not in ADDRESS_STATUSES:
            raise bad_request(f"status must be one of {', '.join(ADDRESS_STATUSES)}")
        expires = values.get("expires_at", row.expires_at)
        if status == "active" and expires is not None and expires <= now:
            raise bad_request("the address has expired: give a future expires_at to reactivate it")
        values["status"] = status
    if "metadata" in body:
        values["metadata"] = _metadata(body)
    return values


@requires_account
async def update_address(request: Request, account: Account) -> Response:
    """PATCH /v1/email-addresses/{id}: status, expires_at (temporary only), metadata."""
    service = service_of(request)
    wanted = address_id(request)
    body = await json_object(request, UPDATE_FIELDS)
    row = await service.reader.run(lambda c: store.get_address(c, account.workspace_id, wanted))
    if row is None:
        raise not_found("Email address")
    now = service.clock()
    values = _changes(body, row, now)
    if values:
        values["updated_at"] = now
        row = await service.committer.run(
            lambda c: store.update_address(c, account.workspace_id, wanted, values)
        )
        if row is None:
            raise not_found("Email address")
    return JSONResponse(address_view(row, now))


@requires_account
async def delete_address(request: Request, account: Account) -> Response:
    """DELETE /v1/email-addresses/{id}: 204; emails sent from it keep its id."""
    service = service_of(request)
    wanted = address_id(request)
    done = await service.committer.run(
        lambda c: store.delete_address(c, account.workspace_id, wanted)
    )
    if not done:
        raise not_found("Email address")
    return Response(status_code=204)


def routes() -> list[Route]:
    """The address routes, relative to /v1."""
    return [
        Route(
            "/email-addresses",
            by_method(GET=list_addresses, POST=create_address),
            methods=["GET", "POST"],
        ),
        Route(
            "/email-addresses/{address_id:id}",
            by_method(GET=get_address, PATCH=update_address, DELETE=delete_address),
            methods=["GET", "PATCH", "DELETE"],
        ),
    ]
