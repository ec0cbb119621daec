"""Provider routes: admin list and forced health check (reference 4.1), credential checks (5).

``GET /api/admin/providers`` lists every configured provider with its live
status (the circuit breaker), routing keys, non-secret identifiers, delivery
figures (total_sent, success_rate, avg_latency_ms: running counters kept with
the delivery attempts) and the last health check. ``POST .../health-check``
runs the check now; a failed check while no provider is up answers 503
``ALL_PROVIDERS_DOWN`` (with the check's figures in ``details``).

The section 5 routes take any token. They reach the provider's real API, or
the ``base_url``/``token_url`` of a configured provider of that type (the
workspace's own, else a global one), never a URL from the request. Listing
Mailgun domains uses a configured provider's key: a workspace key only its
workspace's own provider.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.admin_config import json_body
from daemon.api.auth import Principal, requires_admin, requires_auth, service_of
from daemon.api.errors import ApiError, iso_utc
from daemon.api.fields import invalid, missing, string_field
from daemon.api.responses import ok
from daemon.config import Config, ProviderConfig
from daemon.providers.base import Provider
from daemon.providers.gmail import GmailProvider
from daemon.providers.google_token import DEFAULT_TOKEN_URL, GMAIL_SEND
from daemon.providers.mailgun import REGIONS, MailgunProvider, mailgun_base_url
from daemon.providers.validation import (
    TIMEOUT,
    ProviderUnreachable,
    mailgun_domains,
    validate_gmail,
    validate_mailgun,
)
from daemon.store import providers as store

MAX_SCOPES = 20


def public_config(pc: ProviderConfig, provider: Provider | None) -> dict[str, Any]:
    """Identifiers an operator may see; never a key, password or service-account secret."""
    if isinstance(provider, GmailProvider):
        return {
            "service_account": provider.account.email,
            "project_id": provider.account.project_id,
        }
    if isinstance(provider, MailgunProvider):
        return {"domain": provider.domain, "region": str(pc.option("region", "US")).upper()}
    if pc.type == "smtp":
        return {
            "host": pc.options.get("host"),
            "port": pc.options.get("port"),
            "tls": pc.options.get("tls", "none"),
            "username": pc.options.get("username"),
        }
    if pc.type == "outbox":
        return {"path": pc.options.get("path") or None}
    return {}


@requires_admin
async def list_providers(request: Request, principal: Principal) -> Response:
    """GET /api/admin/providers."""
    service = service_of(request)
    state = service.providers_state
    config = service.config
    figures = await service.reader.run(lambda c: store.read_figures(c, list(config.providers)))
    listed = []
    for pid, pc in config.providers.items():
        f = figures.get(pid, store.Figures())
        check = state.last_check(pid)
        checked_at = check.at if check is not None else f.last_check_at
        listed.append(
            {
                "id": pid,
                "type": pc.type,
                "workspace_id": pc.workspace_id or None,
                "status": state.status(pid),
                "enabled": pc.enabled,
                "priority": pc.priority,
                "weight": pc.weight,
                "config": public_config(pc, state.providers.get(pid)),
                "metrics": {
                    "total_sent": f.sent,
                    "success_rate": f.success_rate,
                    "avg_latency_ms": f.avg_latency_ms,
                },
                "last_health_check": iso_utc(checked_at),
            }
        )
    return ok({"providers": listed})


@requires_admin
async def health_check(request: Request, principal: Principal) -> Response:
    """POST /api/admin/providers/{id}/health-check."""
    service = service_of(request)
    state = service.providers_state
    pid = request.path_params["provider_id"]
    if pid not in service.config.providers:
        raise ApiError("PROVIDER_NOT_FOUND", f"no provider {pid!r}", {"provider_id": pid})
    if pid not in state.providers:
        raise ApiError(
            "INVALID_STATE",
            f"provider {pid!r} was added after start-up; restart relayd to run it",
            {"provider_id": pid},
        )
    was_down = state.down()
    record = await state.check(pid)
    if was_down - state.down():
        service.wake.set()  # messages waiting for a provider can go now
    status = "healthy" if record.healthy else state.status(pid)
    if status == "healthy" and not record.healthy:
        status = "degraded"  # failed now, though not yet enough times in a row to trip
    data: dict[str, Any] = {
        "provider_id": pid,
        "status": status,
        "latency_ms": record.latency_ms,
        "checked_at": iso_utc(record.at),
    }
    if not record.healthy:
        data["detail"] = record.detail
        if not state.any_up():
            raise ApiError("ALL_PROVIDERS_DOWN", f"{pid} failed its check: {record.detail}", data)
    return ok(data)


def _configured(config: Config, ptype: str, workspace_id: str | None) -> ProviderConfig | None:
    """The workspace's own provider of a type, else a global one (enabled, best priority)."""
    pool = sorted(
        (p for p in config.providers.values() if p.type == ptype),
        key=lambda p: (not p.enabled, p.priority, p.id),
    )
    own = [p for p in pool if workspace_id and p.workspace_id == workspace_id]
    found = own or [p for p in pool if not p.workspace_id]
    return found[0] if found else None


def _workspace(principal: Principal, body: dict[str, Any]) -> str | None:
    named = string_field(body, "workspace_id", 200)
    if named is not None:
        principal.check_workspace(named)
        return named
    return principal.workspace_id


def _unreachable(exc: ProviderUnreachable) -> ApiError:
    return ApiError("PROVIDER_ERROR", str(exc))


@requires_auth
async def gmail_validate(request: Request, principal: Principal) -> Response:
    """POST /api/providers/gmail/validate."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError("INVALID_REQUEST", "the body must be a JSON object")
    workspace_id = _workspace(principal, body)
    document = body.get("service_account_json")
    if document is None or document == "":
        raise missing("service_account_json")
    if isinstance(document, dict):
        document = json.dumps(document)
    if not isinstance(document, str):
        raise invalid("service_account_json", "service_account_json must be a JSON string")
    test_email = string_field(body, "test_email", 320) or None
    scopes = body.get("scopes", [GMAIL_SEND])
    if (
        not isinstance(scopes, list)
        or not scopes
        or len(scopes) > MAX_SCOPES
        or not all(isinstance(s, str) and s.startswith("https://") for s in scopes)
    ):
        raise invalid("scopes", "scopes must be a list of OAuth scope URLs")
    pc = _configured(service_of(request).config, "gmail", workspace_id)
    token_url = str(pc.option("token_url") or DEFAULT_TOKEN_URL) if pc else DEFAULT_TOKEN_URL
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        try:
            data = await validate_gmail(client, token_url, document, test_email, scopes)
        except ProviderUnreachable as exc:
            raise _unreachable(exc) from None
    return ok(data)


@requires_auth
async def mailgun_validate(request: Request, principal: Principal) -> Response:
    """POST /api/providers/mailgun/validate."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError("INVALID_REQUEST", "the body must be a JSON object")
    workspace_id = _workspace(principal, body)
    api_key = string_field(body, "api_key", 500)
    domain = string_field(body, "domain", 253)
    if not api_key:
        raise missing("api_key")
    if not domain:
        raise missing("domain")
    if "/" in domain or not domain.strip() or domain != domain.strip():
        raise invalid("domain", "domain must be a domain name")
    region = (string_field(body, "region", 2) or "US").upper()
    if region not in REGIONS:
        raise invalid("region", "region must be US or EU")
    pc = _configured(service_of(request).config, "mailgun", workspace_id)
    base = mailgun_base_url(region, str(pc.option("base_url") or "") if pc else "")
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        try:
            data = await validate_mailgun(client, base, api_key, domain)
        except ProviderUnreachable as exc:
            raise _unreachable(exc) from None
    return ok(data)


@requires_auth
async def mailgun_domain_list(request: Request, principal: Principal) -> Response:
    """GET /api/providers/mailgun/domains: the domains of the configured Mailgun account."""
    config = service_of(request).config
    pc = _configured(config, "mailgun", principal.workspace_id)
    if pc is not None and principal.workspace_id and not principal.is_admin:
        pc = pc if pc.workspace_id == principal.workspace_id else None
    where = f"workspace {principal.workspace_id}" if principal.workspace_id else "the relay"
    if pc is None:
        raise ApiError("PROVIDER_NOT_FOUND", f"no mailgun provider is configured for {where}")
    try:
        api_key = str(pc.option("api_key") or "")
    except OSError:
        api_key = ""
    if not api_key:
        raise ApiError("PROVIDER_ERROR", f"mailgun provider {pc.id!r} has no readable api_key")
    base = mailgun_base_url(str(pc.option("region", "US")), str(pc.option("base_url") or ""))
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        try:
            domains = await mailgun_domains(client, base, api_key)
        except ProviderUnreachable as exc:
            raise _unreachable(exc) from None
    if domains is None:
        raise ApiError("PROVIDER_ERROR", f"Mailgun refused the API key of provider {pc.id!r}")
    return ok({"domains": domains})


def routes() -> list[Route]:
    """The provider routes, relative to /api (and /v1)."""
    return [
        Route("/admin/providers", list_providers, methods=["GET"]),
        Route("/admin/providers/{provider_id:id}/health-check", health_check, methods=["POST"]),
        Route("/providers/gmail/validate", gmail_validate, methods=["POST"]),
        Route("/providers/mailgun/validate", mailgun_validate, methods=["POST"]),
        Route("/providers/mailgun/domains", mailgun_domain_list, methods=["GET"]),
    ]
