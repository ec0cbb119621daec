"""The Maylng-compatible /v1 API: accounts, sender addresses and emails.

Mixed into :class:`relayctl.client.Client`, which provides the transport. These
routes answer bare JSON objects (no ``data`` envelope) and errors as
``{"error": "..."}``, which the client raises as typed ``RelayError``s.

With an account's own key (``maylng_...``) every call acts on that account;
with the admin token, ``account_id`` names the account (sent as
``X-Workspace-ID``; an account is a workspace).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from relayctl.errors import ConfigurationError

JSON = dict[str, Any]


def _id(value: str, what: str) -> str:
    if not value:
        raise ConfigurationError("INVALID_REQUEST", f"an {what} id is required")
    return quote(value, safe="")


def _scope(account_id: str | None) -> dict[str, str] | None:
    return {"X-Workspace-ID": account_id} if account_id else None


class MaylngEndpoints:
    """Calls of the Maylng dialect under ``/v1``."""

    if TYPE_CHECKING:  # the transport, provided by Client

        def _request(
            self,
            method: str,
            path: str,
            *,
            json: JSON | None = None,
            params: JSON | None = None,
            also_ok: tuple[int, ...] = (),
            headers: Mapping[str, str] | None = None,
        ) -> JSON: ...

    # -- accounts ---------------------------------------------------------------------------

    def create_account(self, plan: str = "free") -> JSON:
        """``POST /v1/accounts``: the account with its ``api_key`` (shown this once)."""
        return self._request("POST", "/v1/accounts", json={"plan": plan})

    def get_account(self, account_id: str | None = None) -> JSON:
        """``GET /v1/account``."""
        return self._request("GET", "/v1/account", headers=_scope(account_id))

    def update_account(self, plan: str, account_id: str | None = None) -> JSON:
        """``PATCH /v1/account``: change the plan (free, pro, enterprise)."""
        return self._request(
            "PATCH", "/v1/account", json={"plan": plan}, headers=_scope(account_id)
        )

    def delete_account(self, account_id: str | None = None) -> None:
        """``DELETE /v1/account``: its keys stop working and its pending mail is cancelled."""
        self._request("DELETE", "/v1/account", headers=_scope(account_id))

    def rotate_account_key(self, account_id: str | None = None) -> JSON:
        """``POST /v1/account/api-key``: ``{"api_key": ...}``; the old key stops working."""
        return self._request("POST", "/v1/account/api-key", headers=_scope(account_id))

    # -- sender addresses -------------------------------------------------------------------

    def create_address(
        self,
        type: str = "temporary",
        prefix: str | None = None,
        domain: str | None = None,
        expires_at: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        account_id: str | None = None,
    ) -> JSON:
        """``POST /v1/email-addresses``; the prefix is generated when None."""
        body: JSON = {"type": type}
        for key, value in (("prefix", prefix), ("domain", domain), ("expires_at", expires_at)):
            if value is not None:
                body[key] = value
        if metadata is not None:
            body["metadata"] = dict(metadata)
        return self._request("POST", "/v1/email-addresses", json=body, headers=_scope(account_id))

    def list_addresses(self, account_id: str | None = None) -> JSON:
        """``GET /v1/email-addresses``: ``{"email_addresses": [...]}``."""
        return self._request("GET", "/v1/email-addresses", headers=_scope(account_id))

    def get_address(self, address_id: str, account_id: str | None = None) -> JSON:
        path = "/v1/email-addresses/" + _id(address_id, "address")
        return self._request("GET", path, headers=_scope(account_id))

    def update_address(self, address_id: str, account_id: str | None = None, **fields: Any) -> JSON:
        """``PATCH /v1/email-addresses/{id}`` with status, expires_at or metadata."""
        path = "/v1/email-addresses/" + _id(address_id, "address")
        return self._request("PATCH", path, json=fields, headers=_scope(account_id))

    def delete_address(self, address_id: str, account_id: str | None = None) -> None:
        path = "/v1/email-addresses/" + _id(address_id, "address")
        self._request("DELETE", path, headers=_scope(account_id))

    # -- emails -----------------------------------------------------------------------------

    def send_email(
        self,
        from_email_id: str,
        to_recipients: Sequence[str],
        subject: str,
        html_content: str | None = None,
        text_content: str | None = None,
        account_id: str | None = None,
        **fields: Any,
    ) -> JSON:
        """``POST /v1/emails/send``; further fields (cc_recipients, scheduled_at...) as kwargs."""
        body: JSON = {
            "from_email_id": from_email_id,
            "to_recipients": list(to_recipients),
            "subject": subject,
            **fields,
        }
        if html_content is not None:
            body["html_content"] = html_content
        if text_content is not None:
            body["text_content"] = text_content
        return self._request("POST", "/v1/emails/send", json=body, headers=_scope(account_id))

    def list_emails(self, limit: int = 50, offset: int = 0, account_id: str | None = None) -> JSON:
        """``GET /v1/emails``: ``{"emails": [...], "pagination": {...}}``, newest first."""
        params: JSON = {"limit": limit, "offset": offset}
        return self._request("GET", "/v1/emails", params=params, headers=_scope(account_id))

    def get_email(self, email_id: str, account_id: str | None = None) -> JSON:
        path = "/v1/emails/" + _id(email_id, "email")
        return self._request("GET", path, headers=_scope(account_id))

    def email_status(self, email_id: str, account_id: str | None = None) -> JSON:
        path = "/v1/emails/" + _id(email_id, "email") + "/status"
        return self._request("GET", path, headers=_scope(account_id))
