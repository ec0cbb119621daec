"""Who is calling: the admin token today, workspace API keys once they exist.

Credentials come as ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``.
``X-Workspace-ID`` scopes an admin call to one workspace; without it the admin
sees every workspace and creates in ``default``.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from daemon.api.errors import ApiError
from daemon.service import RelayService

DEFAULT_WORKSPACE = "default"
WORKSPACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="relayd"'}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``workspace_id`` None: not restricted to one workspace."""

    is_admin: bool
    workspace_id: str | None = None

    @property
    def acting_workspace(self) -> str:
        """The workspace new resources are created in when the request names none."""
        return self.workspace_id or DEFAULT_WORKSPACE

    def workspace_for(self, requested: str | None) -> str:
        """The workspace a create acts in; naming another than the scoped one is refused."""
        if requested is None:
            return self.acting_workspace
        self.check_workspace(requested)
        return requested

    def check_workspace(self, workspace_id: str) -> None:
        """Refuse access to a workspace outside this principal's scope."""
        if self.workspace_id is not None and workspace_id != self.workspace_id:
            raise ApiError(
                "WORKSPACE_ACCESS_DENIED",
                f"this call is scoped to workspace {self.workspace_id!r}",
                {"workspace_id": workspace_id},
            )


def presented_token(request: Request) -> str | None:
    """The credential the request carries, from Authorization: Bearer or X-API-Key."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                "INVALID_TOKEN", "Authorization must be 'Bearer <token>'", headers=_CHALLENGE
            )
        return token.strip()
    api_key = request.headers.get("x-api-key")
    if api_key is not None:
        return api_key.strip()
    return None


def _workspace_header(request: Request) -> str | None:
    value = request.headers.get("x-workspace-id")
    if value is None:
        return None
    value = value.strip()
    if not WORKSPACE_ID.match(value):
        raise ApiError(
            "INVALID_REQUEST",
            "X-Workspace-ID must be 1-200 letters, digits, '.', '_', ':' or '-'",
            {"header": "X-Workspace-ID"},
        )
    return value


async def authenticate(request: Request, service: RelayService) -> Principal:
    """Resolve the caller, or raise 401 AUTH_REQUIRED / INVALID_TOKEN."""
    token = presented_token(request)
    if not token:
        raise ApiError(
            "AUTH_REQUIRED",
            "Send the admin token as 'Authorization: Bearer <token>' or 'X-API-Key'",
            headers=_CHALLENGE,
        )
    if hmac.compare_digest(token.encode("utf-8"), service.admin_token.encode("utf-8")):
        return Principal(is_admin=True, workspace_id=_workspace_header(request))
    raise ApiError("INVALID_TOKEN", headers=_CHALLENGE)


Handler = Callable[[Request, Principal], Awaitable[Response]]


def service_of(request: Request) -> RelayService:
    """The RelayService the app was built around."""
    service: RelayService = request.app.state.service
    return service


def requires_auth(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Turn ``handler(request, principal)`` into an endpoint that authenticates first."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        principal = await authenticate(request, service_of(request))
        request.state.principal = principal
        return await handler(request, principal)

    return endpoint
