"""Provider routes on a running relayd whose providers point at the loopback fakes:
GET /api/admin/providers, forced health checks, ALL_PROVIDERS_DOWN, section 5 validation."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from tests.api.conftest import assert_envelope, message
from tests.api.tenants import key_headers, make_key, make_workspace
from tests.providers.conftest import ServiceAccountKey, make_service_account
from tests.providers.fakes import Answer, GoogleFake, MailgunFake
from tests.providers.relay import api, google, mailgun, relay, service_account

__all__ = ["api", "google", "mailgun", "relay", "service_account"]  # fixtures

KEYS = {
    "id",
    "type",
    "workspace_id",
    "status",
    "enabled",
    "priority",
    "weight",
    "config",
    "metrics",
    "last_health_check",
}


async def wait_sent(api: httpx.AsyncClient, mid: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (await api.get(f"/api/messages/{mid}")).json()["data"]["status"] == "sent":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{mid} not sent")


async def test_list_shows_status_config_metrics_and_no_secrets(
    api: httpx.AsyncClient, mailgun: MailgunFake, service_account: ServiceAccountKey
) -> None:
    for _ in range(3):
        sent = await api.post("/api/messages", json=message())
        assert sent.status_code == 202 and "warnings" not in sent.json()
        await wait_sent(api, sent.json()["data"]["message_id"])
    assert (await api.post("/api/admin/providers/mg/health-check")).status_code == 200
    response = await api.get("/api/admin/providers")
    assert response.status_code == 200
    providers = {p["id"]: p for p in response.json()["data"]["providers"]}
    assert all(set(p) == KEYS for p in providers.values())
    mg, gm = providers["mg"], providers["gm"]
    assert mg["status"] == "healthy" and mg["enabled"] is True
    assert (mg["priority"], mg["weight"], mg["workspace_id"]) == (1, 70, None)
    assert mg["config"] == {"domain": "mg.example.com", "region": "US"}
    assert mg["metrics"]["total_sent"] == 3
    assert mg["metrics"]["success_rate"] == 1.0
    assert isinstance(mg["metrics"]["avg_latency_ms"], int)
    assert mg["last_health_check"].endswith("Z")
    assert gm["config"] == {"service_account": service_account.email, "project_id": "proj-1"}
    assert gm["enabled"] is False and gm["last_health_check"] is None
    assert gm["metrics"] == {"total_sent": 0, "success_rate": None, "avg_latency_ms": None}
    assert mailgun.api_key not in response.text
    assert "PRIVATE KEY" not in response.text


async def test_forced_check_shapes_and_errors(api: httpx.AsyncClient, google: GoogleFake) -> None:
    response = await api.post("/api/admin/providers/gm/health-check")
    assert response.status_code == 200
    data = response.json()["data"]
    assert set(data) == {"provider_id", "status", "latency_ms", "checked_at"}
    assert (data["provider_id"], data["status"]) == ("gm", "healthy")
    assert google.calls("/token")[0]["sub"] is None
    missing = await api.post("/api/admin/providers/nope/health-check")
    assert_envelope(missing, 404, "PROVIDER_NOT_FOUND")
    await make_workspace(api, "ws-1")
    key = (await make_key(api, "ws-1"))["key"]
    for method, path in (
        ("GET", "/api/admin/providers"),
        ("POST", "/api/admin/providers/mg/health-check"),
    ):
        refused = await api.request(method, path, headers=key_headers(key))
        assert_envelope(refused, 403, "INSUFFICIENT_PERMISSIONS")
    # A workspace key may validate credentials but not list the relay's Mailgun domains.
    domains = await api.get("/api/providers/mailgun/domains", headers=key_headers(key))
    assert_envelope(domains, 404, "PROVIDER_NOT_FOUND")


async def test_all_providers_down_then_back(api: httpx.AsyncClient, mailgun: MailgunFake) -> None:
    mailgun.default = Answer(503, body={"message": "Service Unavailable"})
    down = await api.post("/api/admin/providers/mg/health-check")
    error = assert_envelope(down, 503, "ALL_PROVIDERS_DOWN")
    assert error["details"]["status"] == "down"
    assert "503" in error["details"]["detail"]
    queued = await api.post("/api/messages", json=message())
    assert queued.status_code == 202
    assert queued.json()["warnings"] == ["ALL_PROVIDERS_DOWN"]
    stats = (await api.get("/api/stats")).json()["data"]["providers"]
    assert stats["mg"]["status"] == "down"
    listed = (await api.get("/api/admin/providers")).json()["data"]["providers"]
    assert {p["id"]: p["status"] for p in listed}["mg"] == "down"

    mailgun.default = Answer()
    back = await api.post("/api/admin/providers/mg/health-check")
    assert back.status_code == 200 and back.json()["data"]["status"] == "healthy"
    await wait_sent(api, queued.json()["data"]["message_id"])
    again = await api.post("/api/messages", json=message())
    assert "warnings" not in again.json()


async def test_gmail_validate_good_and_broken(
    api: httpx.AsyncClient, google: GoogleFake, service_account: ServiceAccountKey
) -> None:
    url = "/api/providers/gmail/validate"
    good = await api.post(
        url, json={"service_account_json": service_account.text, "test_email": "test@example.com"}
    )
    assert good.status_code == 200
    data = good.json()["data"]
    assert data["valid"] is True
    assert data["service_account"] == service_account.email
    assert data["scopes"] == ["https://www.googleapis.com/auth/gmail.send"]
    assert data["domain_wide_delegation"] is True
    assert [c["sub"] for c in google.calls("/token")] == [None, "test@example.com"]

    info = dict(service_account.info)
    broken = {
        "json": "{not json",
        "type": json.dumps({**info, "type": "authorized_user"}),
        "client_email": json.dumps({k: v for k, v in info.items() if k != "client_email"}),
        "private_key": json.dumps({**info, "private_key": "-----BEGIN PRIVATE KEY-----\nAAA"}),
        "token_exchange": make_service_account(service_account.email).text,
    }
    for check, document in broken.items():
        response = await api.post(url, json={"service_account_json": document})
        assert response.status_code == 200, response.text
        result = response.json()["data"]
        assert result["valid"] is False
        assert result["failed_check"] == check, result
        assert result["reason"]
        assert result["checks"][check] is False
        assert "PRIVATE KEY" not in response.text

    google.delegation = False
    no_dwd = await api.post(
        url, json={"service_account_json": service_account.text, "test_email": "test@example.com"}
    )
    result = no_dwd.json()["data"]
    assert (result["valid"], result["domain_wide_delegation"]) == (False, False)
    assert result["failed_check"] == "domain_wide_delegation"
    assert "unauthorized_client" in result["reason"]

    google.token_answers.append(Answer(503, body={"error": "backend"}))
    unreachable = await api.post(url, json={"service_account_json": service_account.text})
    assert_envelope(unreachable, 502, "PROVIDER_ERROR")
    assert_envelope(await api.post(url, json={}), 400, "MISSING_REQUIRED_FIELD")


async def test_mailgun_validate_and_domains(api: httpx.AsyncClient, mailgun: MailgunFake) -> None:
    url = "/api/providers/mailgun/validate"
    good = await api.post(url, json={"api_key": mailgun.api_key, "domain": "mg.example.com"})
    assert good.json()["data"] == {
        "valid": True,
        "domain_verified": True,
        "dns_records": {"mx": True, "txt": True, "cname": True},
        "sending_enabled": True,
    }
    bad_key = (await api.post(url, json={"api_key": "key-bad", "domain": "mg.example.com"})).json()
    assert bad_key["data"]["valid"] is False
    assert bad_key["data"]["failed_check"] == "api_key"
    unknown = (await api.post(url, json={"api_key": mailgun.api_key, "domain": "x.example"})).json()
    assert (unknown["data"]["valid"], unknown["data"]["failed_check"]) == (False, "domain")
    mailgun.domains["mg.example.com"] = "unverified"
    mailgun.dns_valid["CNAME"] = False
    partial = await api.post(url, json={"api_key": mailgun.api_key, "domain": "mg.example.com"})
    assert partial.json()["data"] == {
        "valid": True,
        "domain_verified": False,
        "dns_records": {"mx": True, "txt": True, "cname": False},
        "sending_enabled": False,
    }
    assert "fake-smtp-secret" not in partial.text
    bad_region = await api.post(url, json={"api_key": "k", "domain": "d.example", "region": "AP"})
    assert_envelope(bad_region, 400, "INVALID_REQUEST")
    mailgun.script(Answer(500))
    assert_envelope(
        await api.post(url, json={"api_key": mailgun.api_key, "domain": "mg.example.com"}),
        502,
        "PROVIDER_ERROR",
    )

    domains = await api.get("/api/providers/mailgun/domains")
    assert domains.status_code == 200
    (item,) = domains.json()["data"]["domains"]
    assert item == {
        "name": "mg.example.com",
        "state": "unverified",
        "type": "custom",
        "created_at": "2024-01-01T00:00:00Z",
        "smtp_login": "postmaster@mg.example.com",
        "is_disabled": False,
        "skip_verification": False,
    }
