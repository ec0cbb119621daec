"""Credential checks behind ``/api/providers/...`` (reference section 5): nothing is sent.

Gmail: the service-account JSON is checked step by step (``json``, ``type``,
``client_email``, ``private_key``, ``token_exchange`` for the requested scopes
as the service account, then ``domain_wide_delegation`` by impersonating
``test_email``); the answer names the first check that failed. Mailgun: the key
and domain through ``GET /v3/domains/{domain}`` (state, DNS records, sending).

Refused credentials are an answer (``valid: false`` and a reason); a provider
that cannot answer (timeout, 5xx, 429) raises :class:`ProviderUnreachable`,
which the API turns into 502 ``PROVIDER_ERROR``.

:func:`check_credentials` is the offline part, for ``relayd check-config``, start-up
and SIGHUP: the credentials each provider type cannot work without are there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from daemon.config import Config, ConfigError, ProviderConfig
from daemon.core.retry import TEMPORARY
from daemon.providers.gmail import load_account
from daemon.providers.google_token import (
    ServiceAccount,
    ServiceAccountError,
    TokenError,
    exchange,
)
from daemon.providers.rest import (
    bounded_request,
    reply_text,
    required,
    secret,
    transport_reply,
)

GMAIL_CHECKS = (
    "json",
    "type",
    "client_email",
    "private_key",
    "token_exchange",
    "domain_wide_delegation",
)
TIMEOUT = 15.0


class ProviderUnreachable(Exception):
    """The provider did not give a usable answer (transport error, 5xx, 429)."""


def _smtp_login(pc: ProviderConfig) -> None:
    """An upstream login takes both halves: with one, relayd would send unauthenticated
    (and be refused as an open relay) or fail at the first AUTH."""
    username = str(pc.options.get("username") or "")
    password = secret(pc, "password")
    if username and not password:
        raise ConfigError(
            f"providers.{pc.id}.password",
            "an smtp provider with a username needs password or password_file",
        )
    if password and not username:
        raise ConfigError(
            f"providers.{pc.id}.username", "an smtp provider with a password needs a username"
        )


def check_credentials(config: Config) -> None:
    """Refuse, naming the key, a provider missing what its type cannot deliver without.

    Disabled providers are checked too: every provider is built at start-up, and
    ``enabled`` can be switched on while relayd runs (PUT /api/admin/config), with
    no file read that could catch it then.
    """
    for pc in config.providers.values():
        if pc.type == "mailgun":
            required(pc, "api_key")
            required(pc, "domain", has_file=False)
        elif pc.type == "sendgrid":
            required(pc, "api_key")
        elif pc.type == "gmail":
            load_account(pc)  # present, and a service-account key (the start-up check)
        elif pc.type == "smtp":
            _smtp_login(pc)


async def validate_gmail(
    client: httpx.AsyncClient,
    token_url: str,
    text: str,
    test_email: str | None,
    scopes: Sequence[str],
) -> dict[str, Any]:
    """The section 5.1 answer for one service-account key."""
    data: dict[str, Any] = {
        "valid": False,
        "service_account": None,
        "scopes": list(scopes),
        "domain_wide_delegation": None,
    }
    checks: dict[str, bool | None] = dict.fromkeys(GMAIL_CHECKS)

    def refused(check: str, reason: str) -> dict[str, Any]:
        for name in GMAIL_CHECKS:
            if name == check:
                checks[name] = False
                break
            checks[name] = True
        return {**data, "failed_check": check, "reason": reason, "checks": checks}

    try:
        account = ServiceAccount.parse(text)
    except ServiceAccountError as exc:
        return refused(exc.check, exc.reason)
    data["service_account"] = account.email
    now = int(time.time())
    try:
        await exchange(client, token_url, account.assertion(token_url, scopes, None, now))
    except TokenError as exc:
        if exc.kind == TEMPORARY:
            raise ProviderUnreachable(exc.reply) from None
        return refused("token_exchange", exc.reply)
    if test_email:
        try:
            await exchange(client, token_url, account.assertion(token_url, scopes, test_email, now))
        except TokenError as exc:
            if exc.kind == TEMPORARY:
                raise ProviderUnreachable(exc.reply) from None
            data["domain_wide_delegation"] = False
            reason = f"impersonating {test_email} was refused: {exc.reply}"
            return refused("domain_wide_delegation", reason)
        data["domain_wide_delegation"] = True
    for name in GMAIL_CHECKS:
        checks[name] = True
    if not test_email:
        checks["domain_wide_delegation"] = None
    return {**data, "valid": True, "checks": checks}


async def _mailgun_get(
    client: httpx.AsyncClient, url: str, api_key: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    try:
        response = await bounded_request(client, "GET", url, auth=("api", api_key), params=params)
    except httpx.HTTPError as exc:
        raise ProviderUnreachable(f"Mailgun: {transport_reply(exc)}") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise ProviderUnreachable(f"Mailgun: {reply_text(response)}")
    return response


def _records_valid(records: Any, record_type: str) -> bool:
    """Every record of the type Mailgun lists is verified (false when it lists none)."""
    matching = [
        r
        for r in (records if isinstance(records, list) else [])
        if isinstance(r, dict) and str(r.get("record_type", "")).upper() == record_type
    ]
    return bool(matching) and all(r.get("valid") == "valid" for r in matching)


async def validate_mailgun(
    client: httpx.AsyncClient, base_url: str, api_key: str, domain: str
) -> dict[str, Any]:
    """The section 5.2 answer: key, domain state, DNS records, sending."""
    data: dict[str, Any] = {
        "valid": False,
        "domain_verified": False,
        "dns_records": {"mx": False, "txt": False, "cname": False},
        "sending_enabled": False,
    }
    response = await _mailgun_get(client, f"{base_url}/v3/domains/{domain}", api_key)
    if response.status_code in (401, 403):
        return {**data, "failed_check": "api_key", "reason": "Mailgun refused the API key"}
    if response.status_code == 404:
        reason = f"domain {domain} is not on this Mailgun account"
        return {**data, "failed_check": "domain", "reason": reason}
    if response.status_code != 200:
        return {**data, "failed_check": "domain", "reason": f"Mailgun: {reply_text(response)}"}
    try:
        body = response.json()
        info = body["domain"]
    except (ValueError, KeyError, TypeError):
        raise ProviderUnreachable("Mailgun gave an unexpected answer") from None
    state = str(info.get("state", ""))
    return {
        "valid": True,
        "domain_verified": state == "active",
        "dns_records": {
            "mx": _records_valid(body.get("receiving_dns_records"), "MX"),
            "txt": _records_valid(body.get("sending_dns_records"), "TXT"),
            "cname": _records_valid(body.get("sending_dns_records"), "CNAME"),
        },
        "sending_enabled": state == "active" and not info.get("is_disabled", False),
    }


def _iso(value: Any) -> str | None:
    """Mailgun's RFC 2822 dates as ISO 8601 UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parsedate_to_datetime(value).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return value


async def mailgun_domains(
    client: httpx.AsyncClient, base_url: str, api_key: str
) -> list[dict[str, Any]] | None:
    """The account's domains (``GET /v3/domains``); None when the key is refused."""
    response = await _mailgun_get(client, f"{base_url}/v3/domains", api_key, {"limit": 1000})
    if response.status_code in (401, 403):
        return None
    if response.status_code != 200:
        raise ProviderUnreachable(f"Mailgun: {reply_text(response)}")
    try:
        items = response.json()["items"]
    except (ValueError, KeyError, TypeError):
        raise ProviderUnreachable("Mailgun gave an unexpected answer") from None
    return [
        {
            "name": item.get("name"),
            "state": item.get("state"),
            "type": item.get("type"),
            "created_at": _iso(item.get("created_at")),
            "smtp_login": item.get("smtp_login"),
            "is_disabled": bool(item.get("is_disabled", False)),
            "skip_verification": bool(item.get("skip_verification", False)),
        }
        for item in items
        if isinstance(item, dict)
    ]
