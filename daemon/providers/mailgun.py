"""The mailgun provider: ``POST /v3/{domain}/messages.mime`` with the accepted bytes unchanged.

Mailgun's sending API takes the MIME message as the ``message`` file of a
multipart form and the envelope recipients as repeated ``to`` fields, with HTTP
basic auth ``api:<key>``. Mailgun reads each ``to`` value as an RFC 5322 address
list ("Bob <bob@host.com>", commas between recipients), so an address with a
quoted local part (``"john doe"@example.com``) goes in angle brackets, the one
unambiguous form of a bare address in such a list.

Answers: 200 ``{"id": "<...>", "message": "Queued..."}`` (the id, without angle
brackets, becomes ``provider_message_id``); 400 the message or a recipient is
refused (permanent); 401/403 the key is refused (auth_error); 404 the domain is
not on the account (auth_error too: it is our configuration, not the message,
and the next provider can still take it); 429 and 5xx are temporary, like
timeouts.
"""

from __future__ import annotations

import secrets

import httpx

from daemon.config import Config, ConfigError, ProviderConfig
from daemon.core.message import Recipient
from daemon.core.retry import AUTH_ERROR, PERMANENT, SENT
from daemon.providers.base import (
    DeliveryResult,
    Envelope,
    HealthResult,
    RecipientResult,
    batches,
)
from daemon.providers.rest import RestProvider, client_settings, make_client, required

REGIONS = {"US": "https://api.mailgun.net", "EU": "https://api.eu.mailgun.net"}
# Mailgun's own SDKs cap a message at 1,000 recipients (mailgun-ruby: MAX_RECIPIENTS);
# more go out as several sends of the same MIME.
MAX_RECIPIENTS = 1000
_LINE_BREAK = "the address has a line break and cannot be sent as a form field"


def mailgun_base_url(region: str, base_url: str = "") -> str:
    """The API root: an explicit ``base_url`` wins over the region's."""
    return (base_url or REGIONS[region.upper()]).rstrip("/")


def to_field(address: str) -> str:
    """An envelope address as a ``to`` value: a quoted local part in angle brackets."""
    return f"<{address}>" if address.startswith('"') else address


def form_data(recipients: list[str], raw: bytes) -> tuple[str, bytes]:
    """The multipart/form-data body (RFC 7578) in one piece: ``to`` fields, ``message`` file.

    Built whole rather than streamed part by part, so the request leaves in one write.
    """
    boundary = secrets.token_hex(16)
    while boundary.encode() in raw:  # practically never; the boundary must not occur inside
        boundary = secrets.token_hex(16)
    chunks = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="to"\r\n\r\n'
        f"{to_field(address)}\r\n".encode()
        for address in recipients
    ]
    chunks.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="message"; '
        f'filename="message.mime"\r\nContent-Type: message/rfc822\r\n\r\n'.encode()
    )
    chunks += [raw, f"\r\n--{boundary}--\r\n".encode()]
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


def strip_brackets(message_id: str) -> str:
    return message_id.strip().removeprefix("<").removesuffix(">")


class MailgunProvider(RestProvider):
    """Delivers through Mailgun's MIME sending endpoint."""

    type = "mailgun"

    def __init__(
        self,
        provider_id: str,
        api_key: str,
        domain: str,
        client: httpx.AsyncClient,
        max_connections: int = 16,
    ) -> None:
        super().__init__(provider_id, client, max_connections)
        self._auth = httpx.BasicAuth("api", api_key)
        self.domain = domain

    @classmethod
    def from_config(cls, pc: ProviderConfig, config: Config) -> MailgunProvider:
        region = str(pc.option("region", "US")).upper()
        if region not in REGIONS:
            raise ConfigError(f"providers.{pc.id}.region", "must be 'US' or 'EU'")
        timeout, connections = client_settings(pc)
        base = mailgun_base_url(region, pc.option("base_url", ""))
        return cls(
            pc.id,
            api_key=required(pc, "api_key"),
            domain=required(pc, "domain", has_file=False),
            client=make_client(base, timeout, connections),
            max_connections=connections,
        )

    async def send(self, envelope: Envelope) -> DeliveryResult:
        if not envelope.recipients:
            raise ValueError("an envelope needs at least one recipient")
        # A line break cannot be in a form field value (nor in an address we accepted).
        sendable: list[Recipient] = []
        refused: list[RecipientResult] = []
        for r in envelope.recipients:
            if "\r" in r.address or "\n" in r.address:
                refused.append(RecipientResult(r.address, PERMANENT, None, _LINE_BREAK))
            else:
                sendable.append(r)
        results = [
            await self._send_one(list(batch), envelope.raw)
            for batch in (batches(sendable, MAX_RECIPIENTS) if sendable else [])
        ]
        if refused:
            results.append(DeliveryResult(PERMANENT, tuple(refused), reply=_LINE_BREAK))
        return DeliveryResult.merge(results)

    async def _send_one(self, recipients: list[Recipient], raw: bytes) -> DeliveryResult:
        content_type, body = form_data([r.address for r in recipients], raw)
        async with self._slots:
            try:
                response = await self.request(
                    "POST",
                    f"/v3/{self.domain}/messages.mime",
                    content=body,
                    headers={"Content-Type": content_type},
                    auth=self._auth,
                )
            except httpx.HTTPError as exc:
                return self.failure(exc, recipients)
        if response.status_code == 200:
            try:
                message_id = strip_brackets(str(response.json()["id"]))
            except (ValueError, KeyError, TypeError):
                message_id = None
            return DeliveryResult.uniform(
                SENT,
                recipients,
                200,
                f"200 {_message(response)}",
                provider_message_id=message_id,
                remote=self.remote,
            )
        if response.status_code == 404:
            return self.refused(response, recipients, AUTH_ERROR)
        return self.refused(response, recipients)

    async def check(self) -> HealthResult:
        """``GET /v3/domains/{domain}``: the key works and the domain is active."""
        result, response = await self.probe("GET", f"/v3/domains/{self.domain}", self._auth)
        if not result.healthy or response is None:
            return result
        try:
            state = str(response.json()["domain"]["state"])
        except (ValueError, KeyError, TypeError):
            return HealthResult(False, result.latency_ms, "unexpected answer from Mailgun")
        if state != "active":
            return HealthResult(False, result.latency_ms, f"domain {self.domain} is {state}")
        return HealthResult(True, result.latency_ms, f"domain {self.domain} is active")


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", "Queued"))
    except ValueError:
        return "Queued"
