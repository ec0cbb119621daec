"""One method per API call beyond messages: admin, recipients, stats, providers, keys.

Mixed into :class:`relayctl.client.Client`, which provides the transport. Every method
returns the API's ``data`` object (or the whole answer where the reference puts fields
beside it, as ``PUT /api/admin/config`` does) and raises a typed ``RelayError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from relayctl.errors import ConfigurationError

JSON = dict[str, Any]


def path_segment(value: str, what: str) -> str:
    """``value`` quoted as one URL path segment (empty: a usage error naming ``what``)."""
    if not value:
        raise ConfigurationError("INVALID_REQUEST", f"a {what} is required")
    # Quoted, so a value like "../admin" stays one path segment ("/" goes as %2F, which
    # relayd routes on as sent). A URL resolves a "." or ".." segment, so those go encoded.
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="@")


def _params(**values: Any) -> JSON:
    return {key: value for key, value in values.items() if value is not None and value != ""}


class Endpoints:
    """API methods shared by the CLI and library users."""

    workspace_id: str | None

    if TYPE_CHECKING:  # the transport, provided by Client

        def _request(
            self,
            method: str,
            path: str,
            *,
            json: JSON | None = None,
            params: JSON | None = None,
            also_ok: tuple[int, ...] = (),
        ) -> JSON: ...

        @staticmethod
        def _data(payload: JSON) -> JSON: ...

    def _get(self, path: str, **params: Any) -> JSON:
        return self._data(self._request("GET", path, params=_params(**params)))

    # -- configuration and maintenance (admin) ---------------------------------------------

    def get_config(self) -> JSON:
        """``GET /api/admin/config``: ``{"data": {...sections}, "sources": {key: origin}}``."""
        payload = self._request("GET", "/api/admin/config")
        return {"config": self._data(payload), "sources": payload.get("sources") or {}}

    def update_config(self, changes: Mapping[str, Any]) -> JSON:
        """``PUT /api/admin/config`` with a partial, nested update; ``None`` drops an override.

        Returns ``{"restart_required": bool, "changed": [...], "restart_required_for": [...]}``.
        """
        payload = self._request("PUT", "/api/admin/config", json=dict(changes))
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        return {
            "restart_required": bool(payload.get("restart_required")),
            "message": payload.get("message"),
            **(data or {}),
        }

    def maintenance_status(self) -> JSON:
        """``GET /api/admin/maintenance/mode``."""
        return self._get("/api/admin/maintenance/mode")

    def set_maintenance(
        self,
        enabled: bool,
        message: str | None = None,
        expected_duration_minutes: float | None = None,
        pause_delivery: bool = False,
    ) -> JSON:
        """``POST /api/admin/maintenance/mode``: turn maintenance mode on or off."""
        body: JSON = {"enabled": enabled, "pause_delivery": pause_delivery}
        if message:
            body["message"] = message
        if expected_duration_minutes is not None:
            body["expected_duration_minutes"] = expected_duration_minutes
        return self._data(self._request("POST", "/api/admin/maintenance/mode", json=body))

    def cleanup(
        self,
        older_than_days: int,
        include_sent: bool = True,
        include_failed: bool = True,
        dry_run: bool = False,
    ) -> JSON:
        """``POST /api/admin/maintenance/cleanup``: ``{"deleted": {...}, "space_freed_mb"}``."""
        body = {
            "older_than_days": older_than_days,
            "include_sent": include_sent,
            "include_failed": include_failed,
            "dry_run": dry_run,
        }
        return self._data(self._request("POST", "/api/admin/maintenance/cleanup", json=body))

    def bulk_retry(self, dry_run: bool = False, **filters: Any) -> JSON:
        """``POST /api/admin/queue/retry``; filters: status, workspace_id, campaign_id, sender,
        recipient_domain, older_than, newer_than, provider, error_contains."""
        body = {**_params(**filters), "dry_run": dry_run}
        return self._data(self._request("POST", "/api/admin/queue/retry", json=body))

    def bulk_cancel(self, dry_run: bool = False, **filters: Any) -> JSON:
        """``POST /api/admin/queue/cancel`` with the filters of :meth:`bulk_retry`."""
        body = {**_params(**filters), "dry_run": dry_run}
        return self._data(self._request("POST", "/api/admin/queue/cancel", json=body))

    # -- recipients and campaigns ------------------------------------------------------------

    def list_recipients(
        self,
        status: str | None = None,
        email: str | None = None,
        limit: int = 50,
        offset: int = 0,
        workspace_id: str | None = None,
    ) -> JSON:
        """``GET /api/recipients``: ``{"recipients": [...], "pagination": {...}}``."""
        return self._get(
            "/api/recipients",
            status=status,
            email=email,
            limit=limit,
            offset=offset,
            workspace_id=workspace_id,
        )

    def get_recipient(self, email: str, workspace_id: str | None = None) -> JSON:
        """``GET /api/recipients/{email}``."""
        path = "/api/recipients/" + path_segment(email, "recipient email")
        return self._get(path, workspace_id=workspace_id)

    def add_recipient(self, email: str, **fields: Any) -> JSON:
        """``POST /api/recipients``: first_name, last_name, opt_in, metadata, workspace_id..."""
        body = {"email": email, **_params(**fields)}
        return self._data(self._request("POST", "/api/recipients", json=body))

    def update_recipient(self, email: str, **fields: Any) -> JSON:
        """``PUT /api/recipients/{email}`` with the fields to change."""
        path = "/api/recipients/" + path_segment(email, "recipient email")
        return self._data(self._request("PUT", path, json=_params(**fields)))

    def delete_recipient(self, email: str, workspace_id: str | None = None) -> JSON:
        """``DELETE /api/recipients/{email}``."""
        path = "/api/recipients/" + path_segment(email, "recipient email")
        params = _params(workspace_id=workspace_id)
        payload = self._request("DELETE", path, params=params)
        return {key: value for key, value in payload.items() if key != "success"}

    def campaign_stats(self, campaign_id: str) -> JSON:
        """``GET /api/campaigns/{id}/stats``."""
        return self._get("/api/campaigns/" + path_segment(campaign_id, "campaign id") + "/stats")

    # -- monitoring ----------------------------------------------------------------------------

    def stats(self) -> JSON:
        """``GET /api/stats``: system, queue, processing, providers, rate_limits."""
        return self._get("/api/stats")

    def rate_limit(self, workspace_id: str | None = None) -> JSON:
        """``GET /api/rate-limit``: global, workspace and per-user quotas for today."""
        return self._get("/api/rate-limit", workspace_id=workspace_id)

    # -- providers -----------------------------------------------------------------------------

    def list_providers(self) -> JSON:
        """``GET /api/admin/providers``: ``{"providers": [...]}``."""
        return self._get("/api/admin/providers")

    def check_provider(self, provider_id: str) -> JSON:
        """``POST /api/admin/providers/{id}/health-check``: forces a health check."""
        path = "/api/admin/providers/" + path_segment(provider_id, "provider id") + "/health-check"
        return self._data(self._request("POST", path))

    def validate_gmail(
        self,
        service_account_json: str,
        test_email: str | None = None,
        workspace_id: str | None = None,
    ) -> JSON:
        """``POST /api/providers/gmail/validate``."""
        body = _params(
            service_account_json=service_account_json,
            test_email=test_email,
            workspace_id=workspace_id,
        )
        return self._data(self._request("POST", "/api/providers/gmail/validate", json=body))

    def validate_mailgun(self, api_key: str, domain: str, region: str = "US") -> JSON:
        """``POST /api/providers/mailgun/validate``."""
        body = {"api_key": api_key, "domain": domain, "region": region}
        return self._data(self._request("POST", "/api/providers/mailgun/validate", json=body))

    def mailgun_domains(self) -> JSON:
        """``GET /api/providers/mailgun/domains``: ``{"domains": [...]}``."""
        return self._get("/api/providers/mailgun/domains")

    # -- API keys ------------------------------------------------------------------------------

    def create_key(
        self, workspace_id: str, name: str | None = None, user_id: str | None = None
    ) -> JSON:
        """``POST /api/admin/keys``: the answer holds the key, shown this once."""
        body = _params(workspace_id=workspace_id, name=name, user_id=user_id)
        return self._data(self._request("POST", "/api/admin/keys", json=body))

    def list_keys(self, workspace_id: str | None = None, limit: int = 100, offset: int = 0) -> JSON:
        """``GET /api/admin/keys``: ``{"keys": [...], "pagination": {...}}`` (never the keys)."""
        return self._get("/api/admin/keys", workspace_id=workspace_id, limit=limit, offset=offset)

    def revoke_key(self, key_id: str) -> JSON:
        """``DELETE /api/admin/keys/{id}``."""
        payload = self._request("DELETE", "/api/admin/keys/" + path_segment(key_id, "key id"))
        return {key: value for key, value in payload.items() if key != "success"}

    # -- webhooks (signed event delivery) ------------------------------------------------------

    def list_webhooks(
        self, workspace_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> JSON:
        """``GET /api/webhooks``: ``{"webhooks": [...], "pagination": {...}}``."""
        return self._get("/api/webhooks", workspace_id=workspace_id, limit=limit, offset=offset)

    def create_webhook(
        self,
        url: str,
        event_types: list[str],
        description: str | None = None,
        workspace_id: str | None = None,
    ) -> JSON:
        """``POST /api/webhooks``: the answer holds the signing secret, shown this once."""
        body = _params(
            url=url, event_types=event_types, description=description, workspace_id=workspace_id
        )
        return self._data(self._request("POST", "/api/webhooks", json=body))

    def delete_webhook(self, webhook_id: str) -> JSON:
        """``DELETE /api/webhooks/{id}``."""
        payload = self._request("DELETE", "/api/webhooks/" + path_segment(webhook_id, "webhook id"))
        return {key: value for key, value in payload.items() if key != "success"}

    def test_webhook(self, webhook_id: str) -> JSON:
        """``POST /api/webhooks/{id}/test``: ``{"delivered", "status_code", "error"}``."""
        path = "/api/webhooks/" + path_segment(webhook_id, "webhook id") + "/test"
        return self._data(self._request("POST", path))

    def webhook_deliveries(
        self,
        status: str | None = None,
        webhook_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> JSON:
        """``GET /api/webhooks/deliveries``; ``status="dead"`` is the dead-letter list."""
        return self._get(
            "/api/webhooks/deliveries",
            status=status,
            webhook_id=webhook_id,
            limit=limit,
            offset=offset,
        )

    def replay_webhooks(
        self, delivery_id: str | None = None, webhook_id: str | None = None
    ) -> JSON:
        """Dead deliveries back to the queue: one delivery, or all of one endpoint."""
        if delivery_id:
            path = f"/api/webhooks/deliveries/{path_segment(delivery_id, 'delivery id')}/replay"
        else:
            path = f"/api/webhooks/{path_segment(webhook_id or '', 'webhook id')}/replay"
        return self._data(self._request("POST", path))
