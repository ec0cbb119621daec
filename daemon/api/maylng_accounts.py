"""Maylng accounts: ``POST /v1/accounts``, ``GET/PATCH/DELETE /v1/account``, key rotation.

An account is a workspace with a plan; its key (``maylng_`` + 48 hex digits)
is an API key of that workspace, shown once and stored as its SHA-256, and it
works on ``/api`` too (under the relay's own limits there).

Account creation hands out a sending key, so it is open to anyone only with
``[accounts] open_signup = true``; otherwise only to callers on
``[accounts] trusted_networks`` (default loopback) or with the admin token.
Deleting an account cancels its queued and scheduled mail and removes its keys
and addresses at once (mail already handed to a worker still completes).
Rotating the key revokes the account's ``maylng_`` keys; other keys of the
workspace (``sk_live_`` keys issued through the admin API) stay.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.api.auth import presented_token, service_of
from daemon.api.maylng_common import (
    Account,
    MaylngError,
    bad_request,
    iso,
    json_object,
    not_found,
    requires_account,
    resolve_principal,
)
from daemon.api.responses import by_method
from daemon.core import plans
from daemon.core.accounts import ACCOUNT_PLANS, KEY_PREFIX, fixed_window, limits_for
from daemon.core.relay import is_trusted, parse_networks
from daemon.service import RelayService
from daemon.store import accounts as store
from daemon.store import tenancy as tenancy_store
from daemon.tenancy import hash_key

ACCOUNT_FIELDS = frozenset({"plan"})
PREFIX_LENGTH = len(KEY_PREFIX) + 8


def account_view(row: Any) -> dict[str, Any]:
    """An account as the reference shows it (never its key)."""
    limits = limits_for(row.plan)
    return {
        "id": row.id,
        "plan": row.plan,
        "email_limit_per_month": limits.emails_per_month,
        "email_address_limit": limits.email_addresses,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def new_key(service: RelayService, workspace_id: str) -> tuple[str, dict[str, Any]]:
    """A fresh account key and the api_keys row that stands for it."""
    key = KEY_PREFIX + secrets.token_hex(24)
    return key, {
        "id": "key_" + secrets.token_hex(8),
        "workspace_id": workspace_id,
        "user_id": None,
        "name": "maylng",
        "prefix": key[:PREFIX_LENGTH],
        "key_hash": hash_key(key),
        "created_at": service.clock(),
    }


def _plan(body: dict[str, Any], default: str | None) -> str | None:
    plan = body.get("plan")
    if plan is None:
        return default
    if plan not in ACCOUNT_PLANS:
        raise bad_request(f"plan must be one of {', '.join(ACCOUNT_PLANS)}")
    return str(plan)


async def _is_operator(request: Request, service: RelayService) -> bool:
    """The admin token, or a caller on one of ``accounts.trusted_networks``.

    Credentials, when sent, must be valid and may not name another workspace
    (401/403, as on every route); only the admin token widens what a caller may do.
    """
    if presented_token(request) is not None:
        principal = await resolve_principal(request, service)
        if principal.is_admin:
            return True
    host = request.client.host if request.client else ""
    # As /metrics and SMTP decide it: a dual-stack listener's ::ffff:127.0.0.1 is loopback.
    return is_trusted(host, parse_networks(service.config.accounts.trusted_networks))


def _check_self_service(service: RelayService, plan: str) -> None:
    """Plans outside ``accounts.self_service_plans`` are the operator's to hand out."""
    if plan not in service.config.accounts.self_service_plans:
        raise MaylngError(403, f"the {plan} plan is assigned by the operator (use the admin token)")


async def create_account(request: Request) -> Response:
    """POST /v1/accounts: a new workspace with ``plan`` and its key (shown this once)."""
    service = service_of(request)
    operator = await _is_operator(request, service)
    if not (operator or service.config.accounts.open_signup):
        raise MaylngError(
            403,
            "account creation is not open: call from a trusted network or with the admin token",
        )
    body = await json_object(request, ACCOUNT_FIELDS)
    plan = _plan(body, "free")
    assert plan is not None
    if not operator:
        _check_self_service(service, plan)
    now = service.clock()
    workspace_id = str(uuid.uuid4())
    key, key_row = new_key(service, workspace_id)
    values = {
        "id": workspace_id,
        "name": "",
        "plan": plan,
        "created_at": now,
        "updated_at": now,
    }

    def op(conn: Connection) -> Any:
        row = tenancy_store.create_workspace(conn, values)
        if row is not None:
            tenancy_store.insert_key(conn, key_row)
        return row

    row = await service.committer.run(op)
    if row is None:  # a uuid4 collision: astronomically unlikely, never silently shared
        raise MaylngError(500, "could not allocate an account id; try again")
    service.tenancy.forget_workspace(workspace_id)
    limit = limits_for(row.plan).api_calls_per_hour
    window = fixed_window("hour", plans.HOUR, now)
    use = plans.WindowUse("hour", plans.HOUR, limit, 0, window.end)
    request.state.rate_headers = plans.rate_headers(use, workspace_id, now)
    return JSONResponse({**account_view(row), "api_key": key}, status_code=201)


async def _account_row(service: RelayService, account: Account) -> Any:
    row = await service.reader.run(lambda c: tenancy_store.get_workspace(c, account.workspace_id))
    if row is None:
        raise not_found("Account")
    return row


@requires_account
async def get_account(request: Request, account: Account) -> Response:
    """GET /v1/account."""
    return JSONResponse(account_view(await _account_row(service_of(request), account)))


@requires_account
async def update_account(request: Request, account: Account) -> Response:
    """PATCH /v1/account: change the plan; the new limits apply to the next call."""
    service = service_of(request)
    body = await json_object(request, ACCOUNT_FIELDS)
    plan = _plan(body, None)
    if plan is None:
        return JSONResponse(account_view(await _account_row(service, account)))
    if not account.principal.is_admin:
        _check_self_service(service, plan)
    values = {"plan": plan, "updated_at": service.clock()}
    row = await service.committer.run(
        lambda c: tenancy_store.update_workspace(c, account.workspace_id, values)
    )
    service.tenancy.forget_workspace(account.workspace_id)
    if row is None:
        raise not_found("Account")
    return JSONResponse(account_view(row))


@requires_account
async def delete_account(request: Request, account: Account) -> Response:
    """DELETE /v1/account: 204; keys stop working and pending mail is cancelled at once."""
    service = service_of(request)
    now = service.clock()
    found = await service.committer.run(lambda c: store.close_account(c, account.workspace_id, now))
    service.tenancy.forget_keys()
    service.tenancy.forget_workspace(account.workspace_id)
    if not found:
        raise not_found("Account")
    return Response(status_code=204)


@requires_account
async def rotate_key(request: Request, account: Account) -> Response:
    """POST /v1/account/api-key: a new key; the account's earlier keys stop working."""
    service = service_of(request)
    await json_object(request, frozenset())
    key, key_row = new_key(service, account.workspace_id)
    now = service.clock()
    done = await service.committer.run(
        lambda c: store.replace_keys(c, account.workspace_id, KEY_PREFIX, key_row, now)
    )
    service.tenancy.forget_keys()
    if not done:
        raise not_found("Account")
    return JSONResponse({"api_key": key}, status_code=201)


def routes() -> list[Route]:
    """The account routes, relative to /v1."""
    return [
        Route("/accounts", create_account, methods=["POST"]),
        Route(
            "/account",
            by_method(GET=get_account, PATCH=update_account, DELETE=delete_account),
            methods=["GET", "PATCH", "DELETE"],
        ),
        Route("/account/api-key", rotate_key, methods=["POST"]),
    ]
