"""What the Maylng routes share: ``{"error": ...}`` errors, the account caller, plan limits.

The Maylng routes (``/v1/accounts``, ``/v1/account``, ``/v1/email-addresses``,
``/v1/emails``) answer errors as ``{"error": "message"}`` with the reference's
status codes; :func:`daemon.api.errors.envelope` switches to that shape for
these paths, so Starlette's 404/405, body errors and 500s follow it too.

Every call is counted against the plan's "API Calls/Hour" (a usage counter
bumped with tenancy's atomic upsert); past it, 429 ``Rate limit exceeded``.
The admin token is exempt and only shows the account's window; with it, a
call names its account in ``X-Workspace-ID``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from daemon.api.auth import Principal, authenticate, service_of
from daemon.api.errors import ApiError, iso_utc
from daemon.api.fields import check_text, parse_json, read_body
from daemon.core import plans
from daemon.core.accounts import PlanLimits, Window, fixed_window, limits_for
from daemon.core.tenancy import WorkspaceInfo
from daemon.service import RelayService
from daemon.store import tenancy as tenancy_store
from daemon.store.tenancy import Bucket

MAX_BODY = 64 * 1024
RATE_LIMITED = "Rate limit exceeded"
TOUCH_EVERY = timedelta(minutes=1)


class MaylngError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def on_maylng_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MaylngError)
    return error_response(exc.status, exc.message, exc.headers)


def not_found(what: str) -> MaylngError:
    return MaylngError(404, f"{what} not found")


def bad_request(message: str) -> MaylngError:
    return MaylngError(400, message)


def iso(value: datetime | None) -> str | None:
    return iso_utc(value)


async def json_object(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON object body (empty body: ``{}``); unknown fields are named in a 400."""
    body = await read_body(request, MAX_BODY)
    document = parse_json(body) if body.strip() else {}
    if not isinstance(document, dict):
        raise bad_request("the request body must be a JSON object")
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise bad_request(f"unknown field(s): {', '.join(unknown)}")
    check_text(document)
    return document


@dataclass(frozen=True)
class Account:
    """The caller of a Maylng route: the account (workspace) it acts on and its plan."""

    workspace_id: str
    plan: str
    principal: Principal

    @property
    def limits(self) -> PlanLimits:
        return limits_for(self.plan)


async def resolve_principal(request: Request, service: RelayService) -> Principal:
    """The caller, with 401 ``Missing API key`` / ``Invalid API key`` in the Maylng words."""
    try:
        return await authenticate(request, service)
    except ApiError as exc:
        if exc.code == "AUTH_REQUIRED":
            raise MaylngError(401, "Missing API key", exc.headers) from None
        if exc.code == "INVALID_TOKEN":
            raise MaylngError(401, "Invalid API key", exc.headers) from None
        raise


def _api_bucket(workspace_id: str, limits: PlanLimits, window: Window) -> Bucket:
    return Bucket(
        f"maylng:api:{workspace_id}",
        window.start,
        window.end + timedelta(hours=1),
        limits.api_calls_per_hour,
    )


def rate_headers(workspace_id: str, uses: list[plans.WindowUse], now: datetime) -> dict[str, str]:
    """X-RateLimit-* for the most constraining of ``uses``."""
    return plans.rate_headers(plans.most_constraining(uses), workspace_id, now)


async def count_api_call(
    request: Request, service: RelayService, principal: Principal, workspace: WorkspaceInfo
) -> None:
    """Count the call in the plan's hourly window and keep the headers for the response."""
    now = service.clock()
    limits = limits_for(workspace.plan)
    window = fixed_window("hour", plans.HOUR, now)
    bucket = _api_bucket(workspace.id, limits, window)
    key = principal.key
    if principal.is_admin:
        (used,) = await service.reader.run(lambda c: tenancy_store.peek(c, [bucket]))
        allowed = True
    else:
        touch = key is not None and (
            key.last_used_at is None or now - key.last_used_at >= TOUCH_EVERY
        )

        def op(conn: Any) -> tenancy_store.Consumed:
            if touch and key is not None:
                tenancy_store.touch_key(conn, key.key_id, now)
            return tenancy_store.consume(conn, [bucket])

        result = await service.committer.run(op)
        if touch:
            service.tenancy.forget_keys()  # the cached last_used_at is stale now
        allowed = result.ok
        used = result.counts[0] if result.ok else limits.api_calls_per_hour
    use = plans.WindowUse("hour", plans.HOUR, limits.api_calls_per_hour, used, window.end)
    headers = rate_headers(workspace.id, [use], now)
    request.state.rate_headers = headers
    request.state.maylng_api_use = use
    if not allowed:
        retry_after = str(max(1, int(headers["X-RateLimit-Reset-After"])))
        raise MaylngError(429, RATE_LIMITED, {**headers, "Retry-After": retry_after})


async def resolve_account(request: Request) -> Account:
    """Authenticate a Maylng call and count it; 401 without a valid key, 404 for no account."""
    service = service_of(request)
    principal = await resolve_principal(request, service)
    request.state.principal = principal
    if principal.workspace_id is None:  # the admin token: never "default" by accident
        raise bad_request("with the admin token, name the account in the X-Workspace-ID header")
    workspace_id = principal.workspace_id
    named = request.query_params.get("workspace_id")
    if named is not None and named != workspace_id:  # as the relay routes refuse it
        raise MaylngError(403, f"this call is scoped to account {workspace_id}")
    workspace = await service.tenancy.workspace(workspace_id)
    if not workspace.exists:
        raise not_found("Account")
    await count_api_call(request, service, principal, workspace)
    return Account(workspace.id, workspace.plan, principal)


AccountHandler = Callable[[Request, Account], Awaitable[Response]]


def requires_account(handler: AccountHandler) -> Callable[[Request], Awaitable[Response]]:
    """Turn ``handler(request, account)`` into an endpoint that authenticates and counts."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        return await handler(request, await resolve_account(request))

    return endpoint
