"""Who is calling: the admin token, a workspace API key, or a signed JWT.

Credentials come as ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``:

- the admin token (constant-time compare): every workspace; ``X-Workspace-ID``
  (or a ``workspace_id`` in the query or body) picks the one a call acts in,
  without it the admin sees every workspace and creates in ``default``; the
  header and a ``workspace_id`` naming different workspaces is 400
  ``INVALID_REQUEST``;
- an API key ``sk_live_...`` or a Maylng account key ``maylng_...`` (looked up
  by its SHA-256): that key's workspace (and user, for a per-user key) only;
  naming another workspace is 403 ``WORKSPACE_ACCESS_DENIED``;
- an HS256 JWT signed with ``[auth] jwt_secret``, claims ``workspace_id``,
  ``user_id``, ``role`` and ``exp`` (required): role ``admin`` is an admin
  credential, any other role a credential of ``workspace_id`` (which comes into
  being with the default plan on first use).

Missing credentials are 401 ``AUTH_REQUIRED``; wrong, revoked, expired or badly
signed ones 401 ``INVALID_TOKEN``, counted against the client address: past
``http.auth_lockout_failures`` of them within ``http.auth_lockout_window``, its
requests with credentials get 429 ``RATE_LIMIT_EXCEEDED`` unchecked until they age
out (daemon.api.auth_lockout). After authenticating, :func:`requires_auth` counts
the request against the workspace's rate limits (daemon.api.ratelimit).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from starlette.requests import Request
from starlette.responses import Response

from daemon.api.auth_lockout import HttpAuthLockout
from daemon.api.errors import ApiError
from daemon.api.middleware import header
from daemon.api.ratelimit import apply_rate_limits
from daemon.core.accounts import KEY_PREFIX as MAYLNG_KEY_PREFIX
from daemon.core.ids import WORKSPACE_ID, WORKSPACE_ID_RULE
from daemon.service import RelayService
from daemon.tenancy import KEY_PREFIX, KeyIdentity

DEFAULT_WORKSPACE = "default"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="relayd"'}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``workspace_id`` None: not restricted to one workspace."""

    is_admin: bool
    workspace_id: str | None = None
    user_id: str | None = None
    key: KeyIdentity | None = None
    via: str = "admin_token"

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
        """Refuse access to a workspace outside this principal's scope.

        A workspace credential naming another workspace is denied (403). The admin
        may act in any workspace: its X-Workspace-ID naming one and the request
        another is a contradiction in the request (400), not a missing right.
        """
        if self.workspace_id is None or workspace_id == self.workspace_id:
            return
        if self.is_admin:
            raise ApiError(
                "INVALID_REQUEST",
                f"X-Workspace-ID names workspace {self.workspace_id!r} but workspace_id names "
                f"{workspace_id!r}; name one workspace (or the same in both)",
                {
                    "field": "workspace_id",
                    "workspace_id": workspace_id,
                    "x_workspace_id": self.workspace_id,
                },
            )
        raise ApiError(
            "WORKSPACE_ACCESS_DENIED",
            f"this call is scoped to workspace {self.workspace_id!r}",
            {"workspace_id": workspace_id},
        )


def presented_token(request: Request) -> str | None:
    """The credential the request carries, from Authorization: Bearer or X-API-Key."""
    authorization = header(request, b"authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                "INVALID_TOKEN", "Authorization must be 'Bearer <token>'", headers=_CHALLENGE
            )
        return token.strip()
    api_key = header(request, b"x-api-key")
    if api_key is not None:
        return api_key.strip()
    return None


def _workspace_header(request: Request) -> str | None:
    value = header(request, b"x-workspace-id")
    if value is None:
        return None
    value = value.strip()
    if not WORKSPACE_ID.match(value):
        raise ApiError(
            "INVALID_REQUEST",
            f"X-Workspace-ID must be {WORKSPACE_ID_RULE}",
            {"header": "X-Workspace-ID"},
        )
    return value


def _jwt_secret(service: RelayService) -> str:
    auth = service.config.auth
    if auth.jwt_secret:
        return auth.jwt_secret
    if auth.jwt_secret_file:
        try:
            secret = Path(auth.jwt_secret_file).read_text().strip()
        except OSError:
            return ""
        # As [auth] jwt_secret: HS256 needs a key at least as long as its hash.
        return secret if len(secret.encode()) >= 32 else ""
    return ""


def _invalid(reason: str) -> ApiError:
    return ApiError("INVALID_TOKEN", f"Invalid or expired token: {reason}", headers=_CHALLENGE)


def _claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not WORKSPACE_ID.match(value):
        raise _invalid(f"claim {name} is not a valid id")
    return value


async def _from_jwt(request: Request, service: RelayService, token: str) -> Principal:
    secret = _jwt_secret(service)
    if not secret:
        raise _invalid("this relay accepts no JWTs")
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp"]}, leeway=5
        )
    except jwt.ExpiredSignatureError:
        raise _invalid("the token has expired") from None
    except jwt.PyJWTError:
        raise _invalid("the token's signature or claims are not valid") from None
    role = claims.get("role")
    user_id = _claim(claims, "user_id")
    if role == "admin":
        return Principal(is_admin=True, workspace_id=_workspace_header(request), via="jwt")
    workspace_id = _claim(claims, "workspace_id")
    if workspace_id is None:
        raise _invalid("the token names no workspace_id")
    _check_header(request, workspace_id)
    await service.tenancy.ensure_workspace(workspace_id)
    return Principal(False, workspace_id, user_id, None, "jwt")


def _check_header(request: Request, workspace_id: str) -> None:
    named = _workspace_header(request)
    if named is not None and named != workspace_id:
        raise ApiError(
            "WORKSPACE_ACCESS_DENIED",
            f"this credential belongs to workspace {workspace_id!r}",
            {"workspace_id": named},
        )


def _carries_credentials(request: Request) -> bool:
    """Whether :func:`presented_token` finds a credential (or a malformed Authorization)."""
    if header(request, b"authorization"):
        return True
    api_key = header(request, b"x-api-key")
    return bool(api_key and api_key.strip())


def auth_lockout_of(request: Request) -> HttpAuthLockout:
    """The failed-authentication counts of the app serving ``request``."""
    lockout: HttpAuthLockout = request.app.state.auth_lockout
    return lockout


async def authenticate(request: Request, service: RelayService) -> Principal:
    """Resolve the caller, or raise 401 AUTH_REQUIRED / INVALID_TOKEN.

    A client address with too many INVALID_TOKEN answers of late gets 429
    RATE_LIMIT_EXCEEDED for any credentials, unchecked (daemon.api.auth_lockout).
    """
    lockout = auth_lockout_of(request)
    if _carries_credentials(request):
        lockout.check(request, service)
    try:
        return await _identify(request, service)
    except ApiError as exc:
        if exc.code == "INVALID_TOKEN":
            lockout.failed(request, service)
        raise


async def _identify(request: Request, service: RelayService) -> Principal:
    token = presented_token(request)
    if not token:
        raise ApiError(
            "AUTH_REQUIRED",
            "Send a token as 'Authorization: Bearer <token>' or 'X-API-Key: <key>'",
            headers=_CHALLENGE,
        )
    encoded = token.encode("utf-8", "surrogateescape")
    if hmac.compare_digest(encoded, service.admin_token.encode("utf-8")):
        named = _workspace_header(request)
        return _ADMIN if named is None else Principal(is_admin=True, workspace_id=named)
    if token.startswith((KEY_PREFIX, MAYLNG_KEY_PREFIX)):
        key = await service.tenancy.identify_key(token)
        if key is None:
            raise _invalid("unknown or revoked API key")
        _check_header(request, key.workspace_id)
        return Principal(False, key.workspace_id, key.user_id, key, "api_key")
    if token.count(".") == 2:
        return await _from_jwt(request, service, token)
    raise _invalid("not a token this relay issued")


Handler = Callable[[Request, Principal], Awaitable[Response]]
_ADMIN = Principal(is_admin=True)  # the admin token without X-Workspace-ID (immutable)


def service_of(request: Request) -> RelayService:
    """The RelayService the app was built around."""
    service: RelayService = request.app.state.service
    return service


def requires_auth(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Turn ``handler(request, principal)`` into an endpoint that authenticates first."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        principal = await authenticate(request, service_of(request))
        request.scope.setdefault("state", {})["principal"] = principal  # request.state.principal
        await apply_rate_limits(request, principal)
        return await handler(request, principal)

    return endpoint


def requires_admin(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Like :func:`requires_auth`, for the admin API: other credentials get 403."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        principal = await authenticate(request, service_of(request))
        request.state.principal = principal
        if not principal.is_admin:
            raise ApiError("INSUFFICIENT_PERMISSIONS", "the admin API needs the admin token")
        await apply_rate_limits(request, principal)
        return await handler(request, principal)

    return endpoint
