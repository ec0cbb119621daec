"""``GET /api/admin/config`` and ``PUT /api/admin/config`` (reference 4.2).

GET answers the live configuration in the reference's shape (every section,
secrets masked) and, beside ``data``, ``sources``: where each key's value came
from (default, file, env, flag or runtime). PUT takes a partial update, validates
it exactly as the file is validated, stores it as the runtime layer (it survives
a restart), applies what can change live and says whether a restart is needed
for the rest; ``null`` drops a runtime override.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.api.auth import Principal, requires_admin, service_of
from daemon.api.errors import ApiError
from daemon.api.fields import check_text, parse_json, read_body
from daemon.api.responses import by_method
from daemon.config import ConfigError, as_dict, describe_settings
from daemon.core.redact import mask_url_password
from daemon.overrides import (
    LIVE_TLS_KEYS,
    apply_runtime,
    changed,
    check_update,
    merge,
    needs_restart,
    settled,
)
from daemon.store.admin import RUNTIME_CONFIG_KEY, put_setting
from daemon.tls import ensure_certificate

log = logging.getLogger("relayd.api")
MAX_BODY = 64 * 1024


def _mask_url_password(value: Any) -> Any:
    """A URL's password masked (``postgresql+psycopg://user:********@host/db``, also a
    ``?password=`` in its query): a credential, though it sits in a key such as
    ``database.url`` that is not a secret's."""
    return mask_url_password(value) if isinstance(value, str) else value


def _masked(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {key: _masked(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_masked(value) for value in tree]
    return _mask_url_password(tree)


def require_admin(principal: Principal) -> None:
    """Admin routes take the admin token only (workspace keys get 403)."""
    if not principal.is_admin:
        raise ApiError("INSUFFICIENT_PERMISSIONS", "this endpoint needs the admin token")


def require_relay_wide(principal: Principal, what: str) -> None:
    """Relay-wide settings cannot be changed from a call scoped to one workspace."""
    require_admin(principal)
    if principal.workspace_id is not None:
        raise ApiError(
            "INSUFFICIENT_PERMISSIONS",
            f"{what} is relay-wide: call it without X-Workspace-ID",
            {"workspace_id": principal.workspace_id},
        )


async def json_body(request: Request) -> Any:
    """The request's JSON document (bounded, no NUL or lone surrogates)."""
    body = await read_body(request, MAX_BODY)
    document = parse_json(body) if body.strip() else {}
    check_text(document)
    return document


@requires_admin
async def get_config(request: Request, principal: Principal) -> Response:
    """GET /api/admin/config: the live configuration, secrets masked, and key sources."""
    require_admin(principal)
    config = service_of(request).config
    keys = set(describe_settings()) | set(settled(config))
    sources = {key: config.source(key) for key in sorted(keys)}
    data = _masked(as_dict(config))
    return JSONResponse({"success": True, "data": data, "sources": sources})


@requires_admin
async def put_config(request: Request, principal: Principal) -> Response:
    """PUT /api/admin/config: validate, persist, apply live; ``restart_required`` if not all."""
    require_relay_wide(principal, "the configuration")
    service = service_of(request)
    document = await json_body(request)
    base = service.base_config
    try:
        pairs = check_update(base, document)
        runtime = merge(service.runtime_layer, pairs)
        candidate = apply_runtime(base, runtime)
    except ConfigError as exc:
        raise ApiError("INVALID_REQUEST", str(exc), {"field": exc.key}) from None
    old = service.config
    keys = changed(old, candidate)
    restart = needs_restart(keys, old)
    tls = service.reload_tls if LIVE_TLS_KEYS.intersection(keys) else None
    if tls is not None:
        # Served at once, as SIGHUP would: checked first (a pair that does not load, or
        # an encrypted key, is a 400 naming the key), so nothing is stored in vain.
        restart = [key for key in restart if key not in LIVE_TLS_KEYS]
        try:
            await asyncio.to_thread(ensure_certificate, candidate)
        except ConfigError as exc:
            raise ApiError("INVALID_REQUEST", str(exc), {"field": exc.key}) from None
    now = service.clock()
    await service.committer.run(lambda c: put_setting(c, RUNTIME_CONFIG_KEY, runtime, now))
    service.runtime_layer = runtime
    service.reconfigure(candidate)
    served = tls(candidate) if tls is not None else None
    if candidate.log_level != old.log_level:
        logging.getLogger().setLevel(candidate.log_level.upper())
    if service.maintenance.enabled is False:
        service.wake.set()  # a shorter interval or a larger batch applies at once
    log.info(
        "configuration changed through the API: %s%s%s",
        ", ".join(keys) or "nothing",
        f" (restart needed for {', '.join(restart)})" if restart else "",
        served or "",
    )
    body = {
        "success": True,
        "message": "Configuration updated successfully",
        "restart_required": bool(restart),
        "data": {"changed": keys, "restart_required_for": restart},
    }
    return JSONResponse(body)


def routes() -> list[Route]:
    """The configuration routes, relative to /api."""
    return [
        Route("/admin/config", by_method(GET=get_config, PUT=put_config), methods=["GET", "PUT"]),
    ]
